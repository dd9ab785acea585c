//! [`Switch`] itself: every VM's port, the CID map, the VM-to-VM connection table and the
//! poll threads that own the VMs; building it from the configuration, looking VMs up, and
//! reading their gauges. What the threads call on it is in `drive.rs`, a packet's way in
//! `packet_path.rs`.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use crate::config::{DaemonConfig, VmConfig};
use crate::device::DetachReason;
use crate::failure::Failure;
use crate::host::{ControlSink, HostEndpoint, HostPoller};
use crate::metrics::VmCountersSnapshot;

use super::peer_table::{ConnLimits, PeerTable};
use super::policy::VmPolicy;
use super::vm_port::{self, VmPort};

/// A poll thread as the switch sees it: something to tell that a VM it owns was kicked.
/// The poll engine implements it (`poll::Waker`); the switch never looks further.
pub trait PollOwner: Send + Sync + Debug {
    /// Raises the VM's `kicked` flag and wakes the thread if it sleeps.
    fn kick(&self, kicked: &AtomicBool);
}

/// Errors building the switch.
#[derive(Debug, thiserror::Error)]
pub enum SwitchError {
    /// A VM's resume eventfd could not be created.
    #[error("VM `{vm}`: cannot create an eventfd")]
    Eventfd {
        /// VM name.
        vm: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The daemon serves [`MAX_VMS`] VMs already.
    #[error("VM `{vm}`: the daemon serves {MAX_VMS} VMs already")]
    Full {
        /// VM name.
        vm: String,
    },
    /// The `uds` listener of a VM could not be set up.
    #[error("VM `{vm}`: cannot listen on uds {path}")]
    HostListener {
        /// VM name.
        vm: String,
        /// The `uds` path.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// What a VM holds right now (not monotonic, unlike the counters). Tests read these to check
/// that state is freed and memory stays bounded.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct VmGauges {
    /// VM-to-VM connections the VM takes part in.
    pub peer_conns: usize,
    /// The VM's TX chains held for peers that have no RX buffer free.
    pub held_chains: usize,
    /// Replies (RSTs) waiting for the VM's RX buffers.
    pub queued_replies: usize,
    /// Packets from peers waiting for the VM's RX buffers.
    pub inbound_queued: usize,
    /// Connections with host programs.
    pub host_conns: usize,
    /// Buffer bytes granted to the host connections (at most `host_buffer_bytes`).
    pub host_buffer_granted: u64,
    /// Guest bytes the device holds for host programs that have not taken them yet (at most
    /// each connection's grant, so at most `host_buffer_granted`; SPEC.md §11).
    pub host_buffered_bytes: usize,
}

impl VmGauges {
    /// Every gauge as (name, value), in declaration order: what `sockbypass stats` and
    /// `/metrics` export.
    pub fn pairs(&self) -> Vec<(&'static str, u64)> {
        let n = |v: usize| v as u64;
        vec![
            ("peer_conns", n(self.peer_conns)),
            ("held_chains", n(self.held_chains)),
            ("queued_replies", n(self.queued_replies)),
            ("inbound_queued", n(self.inbound_queued)),
            ("host_conns", n(self.host_conns)),
            ("host_buffer_granted", self.host_buffer_granted),
            ("host_buffered_bytes", n(self.host_buffered_bytes)),
        ]
    }
}

/// The most VMs one daemon serves at once; also the number of switch indices (SPEC.md §14.3).
pub const MAX_VMS: usize = 4096;

/// Reads `lock`, going on past a thread that panicked holding it (the daemon stops on any
/// panic, [`crate::failure`]).
fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}

/// Writes `lock` (see [`read`]).
fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}

/// CID → switch index.
type CidMap = HashMap<u64, usize, foldhash::fast::RandomState>;

/// All VMs of the daemon and the routing between them.
///
/// VMs are added and removed at run time ([`Switch::add_vm`], [`Switch::remove_vm`]). Each VM
/// has a switch index for its life. The paths that move packets take only read locks on the VM
/// table (a slot, the CID map, the member list), each for one lookup and never while taking
/// another lock; adding and removing take the write locks for one store each, serialized by
/// [`Switch::membership`]. (`arc-swap` was tried for these and cost 6% more instructions per
/// packet: its thread-local debt list, four times a packet.)
#[derive(Debug)]
pub struct Switch {
    /// By switch index: the VM there, if any.
    slots: Box<[RwLock<Option<Arc<VmPort>>>]>,
    /// The occupied indices, in the order their VMs were added (what poll threads walk),
    /// replaced whole on each change.
    members: RwLock<Arc<Vec<usize>>>,
    /// Looked up per packet, hence the fast hasher. Only the configuration fills it, so guests
    /// cannot.
    by_cid: RwLock<CidMap>,
    /// Serializes adding and removing VMs, and chooses indices.
    membership: Mutex<Membership>,
    peers: Mutex<PeerTable>,
    pub(super) poll_owners: OnceLock<Vec<Arc<dyn PollOwner>>>,
    failure: Arc<Failure>,
    pub(super) rx_stall_timeout: Duration,
    /// Where new VMs' `uds` listeners are watched.
    poller: HostPoller,
    /// Where VMs with the fast path hand their control connections.
    control: Option<Arc<dyn ControlSink>>,
}

/// Which switch index the next VM gets.
#[derive(Debug)]
struct Membership {
    /// The index after the last one given out: indices are handed out round the table, so one
    /// freed by a removal is reused only after every other free one (a late event for the old
    /// VM's host sockets then finds no VM, or an unrelated one it cannot harm).
    next: usize,
    /// Indices never given out again while the daemon runs (a removed VM with the fast path:
    /// the fast-path thread knows VMs by index).
    retired: Vec<usize>,
}

impl Switch {
    /// One port per configured VM; binds every `uds` listener into `poller`. The VMs with
    /// `fastpath=on` hand their fast-path control connections to `control` (SPEC.md §13.7).
    pub fn new(
        config: &DaemonConfig,
        poller: &HostPoller,
        control: Option<Arc<dyn ControlSink>>,
    ) -> Result<Self, SwitchError> {
        let switch = Switch {
            slots: (0..MAX_VMS).map(|_| RwLock::new(None)).collect(),
            members: RwLock::new(Arc::new(Vec::new())),
            by_cid: RwLock::new(CidMap::default()),
            membership: Mutex::new(Membership {
                next: 0,
                retired: Vec::new(),
            }),
            peers: Mutex::new(PeerTable::new(
                [],
                Duration::from_millis(config.half_open_timeout_ms),
            )),
            poll_owners: OnceLock::new(),
            failure: Failure::new(),
            rx_stall_timeout: Duration::from_millis(config.rx_stall_timeout_ms),
            poller: poller.clone(),
            control,
        };
        for vm in &config.vms {
            switch.add_vm(vm)?;
        }
        Ok(switch)
    }

    /// Adds VM `vm` (already checked against the others: its name, CID and paths are its
    /// own) and returns its switch index. Its `uds` listener is bound now. The VM starts
    /// detached; no other VM notices.
    pub fn add_vm(&self, vm: &VmConfig) -> Result<usize, SwitchError> {
        let mut membership = vm_port::lock(&self.membership);
        let index = (0..MAX_VMS)
            .map(|i| (membership.next + i) % MAX_VMS)
            .find(|&i| self.vm(i).is_none() && !membership.retired.contains(&i))
            .ok_or_else(|| SwitchError::Full {
                vm: vm.name.clone(),
            })?;
        let host = HostEndpoint::new(
            index,
            vm.cid,
            vm.uds.clone(),
            self.control.clone().filter(|_| vm.fastpath_size.is_some()),
            vm.max_conns as usize,
            vm.host_buffer_bytes,
            self.poller.clone(),
        )
        .map_err(|source| SwitchError::HostListener {
            vm: vm.name.clone(),
            path: vm
                .uds
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            source,
        })?;
        let port = VmPort::new(index, vm.clone(), host).map_err(|source| SwitchError::Eventfd {
            vm: vm.name.clone(),
            source,
        })?;
        let limits = ConnLimits {
            max_conns: vm.max_conns as usize,
            per_peer: vm.peer_conn_limit() as usize,
        };
        self.peers().add_vm(index, VmPolicy::new(vm), limits);
        *write(&self.slots[index]) = Some(Arc::new(port));
        write(&self.by_cid).insert(vm.cid, index);
        {
            let mut members = write(&self.members);
            let mut list = Vec::clone(&members);
            list.push(index);
            *members = Arc::new(list);
        }
        membership.next = (index + 1) % MAX_VMS;
        Ok(index)
    }

    /// Removes the VM at `index`: packets to its CID are refused from now on, it is detached
    /// (every peer it had a connection with gets an RST, SPEC.md §8.3), and its port is
    /// dropped once the last thread working on it lets go. Call after its vhost-user server
    /// stopped, so no frontend can attach it again. With `retire`, its index is never given
    /// out again. Returns the port removed.
    pub fn remove_vm(&self, index: usize, retire: bool) -> Option<Arc<VmPort>> {
        let mut membership = vm_port::lock(&self.membership);
        let vm = self.vm(index)?;
        write(&self.by_cid).remove(&vm.cid());
        {
            let mut members = write(&self.members);
            let mut list = Vec::clone(&members);
            list.retain(|&i| i != index);
            *members = Arc::new(list);
        }
        self.detach(index, DetachReason::Removed);
        *write(&self.slots[index]) = None;
        let owed = self.peers().remove_vm(index);
        for peer in self.queue_owed_rsts(owed) {
            self.fill_rx_then_resume_tx(peer);
        }
        if retire {
            membership.retired.push(index);
        }
        Some(vm)
    }

    /// Where the daemon's threads record a panic ([`Failure::guard`]).
    pub fn failure(&self) -> &Arc<Failure> {
        &self.failure
    }

    /// The VM-to-VM connection table.
    pub(super) fn peers(&self) -> MutexGuard<'_, PeerTable> {
        vm_port::lock(&self.peers)
    }

    /// The index of the VM owning `cid`.
    pub fn index_of_cid(&self, cid: u64) -> Option<usize> {
        read(&self.by_cid).get(&cid).copied()
    }

    /// The switch indices of the VMs, in the order they were added.
    pub fn members(&self) -> Arc<Vec<usize>> {
        read(&self.members).clone()
    }

    /// The VMs, in the order they were added.
    pub fn vms(&self) -> Vec<Arc<VmPort>> {
        self.members().iter().filter_map(|&i| self.vm(i)).collect()
    }

    /// Calls `f` on every VM, in the order they were added, without allocating (the sweep and
    /// a detach run it on threads that must not allocate per packet).
    pub fn for_each_vm(&self, mut f: impl FnMut(&Arc<VmPort>)) {
        for &i in self.members().iter() {
            if let Some(vm) = self.vm(i) {
                f(&vm);
            }
        }
    }

    /// The VM at `index`.
    pub fn vm(&self, index: usize) -> Option<Arc<VmPort>> {
        read(self.slots.get(index)?).clone()
    }

    /// The VM named `name`.
    pub fn vm_by_name(&self, name: &str) -> Option<Arc<VmPort>> {
        self.vms().into_iter().find(|v| v.config.name == name)
    }

    /// Counters of the VM named `name`.
    pub fn counters(&self, name: &str) -> Option<VmCountersSnapshot> {
        self.vm_by_name(name).map(|v| v.counters.snapshot())
    }

    /// What VM `name` holds right now.
    pub fn gauges(&self, name: &str) -> Option<VmGauges> {
        let vm = self.vm_by_name(name)?;
        let peer_conns = self.peers().count(vm.index);
        let rx = vm.rx();
        Some(VmGauges {
            peer_conns,
            held_chains: vm.held.load(Ordering::Relaxed),
            queued_replies: rx.replies.len(),
            inbound_queued: rx.inbound.len(),
            host_conns: rx.host.connection_count(),
            host_buffer_granted: rx.host.granted_bytes(),
            host_buffered_bytes: rx.host.buffered_to_host(),
        })
    }
}
