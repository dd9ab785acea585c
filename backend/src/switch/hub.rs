//! [`Switch`] itself: every VM's port, the CID map, the VM-to-VM connection table and the
//! poll threads that own the VMs; building it from the configuration, looking VMs up, and
//! reading their gauges. What the threads call on it is in `drive.rs`, a packet's way in
//! `packet_path.rs`.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use crate::config::DaemonConfig;
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

/// All VMs of the daemon and the routing between them.
#[derive(Debug)]
pub struct Switch {
    vms: Vec<Arc<VmPort>>,
    /// Fixed at start from the configuration (so guests cannot fill it); looked up per packet,
    /// hence the fast hasher.
    by_cid: HashMap<u64, usize, foldhash::fast::RandomState>,
    peers: Mutex<PeerTable>,
    pub(super) poll_owners: OnceLock<Vec<Arc<dyn PollOwner>>>,
    failure: Arc<Failure>,
    pub(super) rx_stall_timeout: Duration,
}

impl Switch {
    /// One port per configured VM; binds every `uds` listener into `poller`. The VMs with
    /// `fastpath=on` hand their fast-path control connections to `control` (SPEC.md §13.7).
    pub fn new(
        config: &DaemonConfig,
        poller: &HostPoller,
        control: Option<Arc<dyn ControlSink>>,
    ) -> Result<Self, SwitchError> {
        let mut vms = Vec::with_capacity(config.vms.len());
        let mut by_cid = HashMap::default();
        for (index, vm) in config.vms.iter().enumerate() {
            let host = HostEndpoint::new(
                index,
                vm.cid,
                vm.uds.clone(),
                control.clone().filter(|_| vm.fastpath_size.is_some()),
                vm.max_conns as usize,
                vm.host_buffer_bytes,
                poller.clone(),
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
            by_cid.insert(vm.cid, index);
            let port =
                VmPort::new(index, vm.clone(), host).map_err(|source| SwitchError::Eventfd {
                    vm: vm.name.clone(),
                    source,
                })?;
            vms.push(Arc::new(port));
        }
        let peers = PeerTable::new(
            config.vms.iter().map(|vm| {
                let limits = ConnLimits {
                    max_conns: vm.max_conns as usize,
                    per_peer: vm.peer_conn_limit() as usize,
                };
                (VmPolicy::new(vm), limits)
            }),
            Duration::from_millis(config.half_open_timeout_ms),
        );
        Ok(Switch {
            vms,
            by_cid,
            peers: Mutex::new(peers),
            poll_owners: OnceLock::new(),
            failure: Failure::new(),
            rx_stall_timeout: Duration::from_millis(config.rx_stall_timeout_ms),
        })
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
        self.by_cid.get(&cid).copied()
    }

    /// The VMs, in configuration order.
    pub fn vms(&self) -> &[Arc<VmPort>] {
        &self.vms
    }

    /// The VM at `index`.
    pub fn vm(&self, index: usize) -> Option<&Arc<VmPort>> {
        self.vms.get(index)
    }

    /// The VM named `name`.
    pub fn vm_by_name(&self, name: &str) -> Option<&Arc<VmPort>> {
        self.vms.iter().find(|v| v.config.name == name)
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
