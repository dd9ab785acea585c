//! The switch: takes packets from each VM's TX queue, routes them, and fills RX queues.
//!
//! | file | job |
//! |---|---|
//! | `attachment.rs` | a VM's live vrings and memory; every raw queue operation |
//! | `vm_port.rs` | per-VM state: config, counters, TX and RX sides |
//! | `replies.rs` | bounded queue of refusals/RSTs owed to a guest |
//! | `tx_path.rs` | [`Switch::process_tx`]: move the available work of one VM's TX queue |
//! | `rx_path.rs` | [`Switch::fill_rx`]: deliver what is owed to one VM into its RX queue |
//! | `policy.rs` | groups and port lists: who may connect to whom |
//! | `peer_table.rs` | VM-to-VM connections: state, credit, limits, verdicts |
//! | `peer_path.rs` | VM-to-VM delivery: one copy, splitting, holding for RX buffers |
//! | `inbound.rs` | packets from peers held for a VM's RX buffers |
//! | `events.rs` | the event queue (`TRANSPORT_RESET`) |
//! | `lifecycle.rs` | attach and detach, and the clean-up a detach owes the other VMs |
//! | `rx_stall.rs` | resetting the connections of a VM that posts no RX buffer while packets wait |
//!
//! ## Threads and locks
//! Any thread may drive any VM: the vhost-user worker of the VM (on kicks), the host I/O thread
//! (on socket events), and the poll threads. Locks are taken in this order:
//!
//! 0. a VM's lifecycle lock (attach, detach, and detaching a VM whose queue broke; one VM's at
//!    a time),
//! 1. a VM's TX lock (one walker of its TX queue at a time; never two TX locks at once),
//! 2. a VM's RX lock (replies, inbound packets, host connections; one filler at a time; never
//!    two RX locks at once, but a walker of X's TX queue may take Y's RX lock to deliver),
//! 3. the peer table, a VM's attachment lock (`RwLock`), and vring locks, each held only for
//!    one call and never while taking another lock.
//!
//! Nothing here blocks on I/O: host sockets are non-blocking, and a full RX queue or a full
//! reply queue stops the work until a kick or an event resumes it. A packet for a peer with no
//! RX buffer is held, so one stalled receiver never stops its sender's other traffic. Every
//! walk and fill has a budget (SPEC.md §9.2); what is left is handed back through the VM's
//! resume eventfd ([`VmPort::request_resume`]), so no guest keeps a thread.

pub mod attachment;
pub mod events;
pub mod inbound;
pub mod lifecycle;
pub mod peer_path;
pub mod peer_table;
pub mod policy;
pub mod replies;
pub mod rx_path;
pub mod rx_stall;
pub mod tx_path;
pub mod vm_port;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::EventSet;

use crate::config::DaemonConfig;
use crate::failure::Failure;
use crate::host::{HostEndpoint, HostPoller};
pub use crate::memory::{AtomicMem, Vring};
use crate::metrics::VmCountersSnapshot;
use crate::poll::Waker;
pub use rx_path::RxReport;
pub use tx_path::TxReport;
pub use vm_port::VmPort;

use peer_table::{ConnLimits, PeerTable};
use policy::VmPolicy;

/// Why a VM lost its attachment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DetachReason {
    /// The frontend closed the vhost-user socket.
    Disconnected,
    /// The frontend stopped a ring (GET_VRING_BASE), as QEMU does when the guest resets the
    /// device or shuts down.
    RingStopped,
    /// The frontend sent RESET_DEVICE.
    DeviceReset,
    /// The guest broke a virtqueue (SPEC.md §9.1): the VM stays detached until the frontend
    /// resets the device, stops a ring or reconnects.
    QueueBroken,
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

/// All VMs of the daemon and the routing between them.
#[derive(Debug)]
pub struct Switch {
    vms: Vec<Arc<VmPort>>,
    /// Fixed at start from the configuration (so guests cannot fill it); looked up per packet,
    /// hence the fast hasher.
    by_cid: HashMap<u64, usize, foldhash::fast::RandomState>,
    peers: Mutex<PeerTable>,
    poll_owners: OnceLock<Vec<Arc<Waker>>>,
    failure: Arc<Failure>,
    rx_stall_timeout: Duration,
}

impl Switch {
    /// One port per configured VM; binds every `uds` listener into `poller`.
    pub fn new(config: &DaemonConfig, poller: &HostPoller) -> Result<Self, SwitchError> {
        let mut vms = Vec::with_capacity(config.vms.len());
        let mut by_cid = HashMap::default();
        for (index, vm) in config.vms.iter().enumerate() {
            let host = HostEndpoint::new(
                index,
                vm.cid,
                vm.uds.clone(),
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
    pub(crate) fn peers(&self) -> MutexGuard<'_, PeerTable> {
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

    /// Moves all work of VM `index` that is ready: its TX queue, then its RX queue, and the TX
    /// queue once more if a full reply queue had stalled it and the fill made room. Bounded:
    /// what is left after that (a spent budget) comes back through the VM's resume eventfd.
    pub fn service(&self, index: usize) {
        let tx = self.process_tx(index);
        let rx = self.fill_rx(index);
        if tx.stalled_on_replies && rx.replies_sent > 0 {
            self.process_tx(index);
            self.fill_rx(index);
        }
    }

    /// Handles readiness of a host socket of VM `index`.
    pub fn on_host_event(&self, index: usize, id: u64, events: EventSet) {
        let Some(vm) = self.vm(index) else {
            return;
        };
        {
            let mut rx = vm.rx();
            let (host, mut replies) = rx.host_with_replies(&vm.counters);
            host.on_host_event(id, events, &mut replies, &vm.counters);
        }
        self.service_rx(index);
    }

    /// Fills VM `index`'s RX queue. If the fill sent replies while the VM's TX walk was stalled
    /// on a full reply queue, the TX walk is handed back to whoever serves the VM (this path
    /// takes no TX lock).
    pub fn service_rx(&self, index: usize) -> RxReport {
        let rx = self.fill_rx(index);
        if rx.replies_sent > 0 {
            if let Some(vm) = self.vm(index) {
                if vm.tx_stalled_on_replies.load(Ordering::Acquire) {
                    vm.request_resume();
                }
            }
        }
        rx
    }

    /// Hands the VMs to poll threads: VM *i* to `wakers[i % wakers.len()]`. Called once, by the
    /// poll engine; until then (and in event mode) kicks are served where they arrive.
    pub fn set_poll_owners(&self, wakers: Vec<Arc<Waker>>) {
        let _ = self.poll_owners.set(wakers);
    }

    /// A kick of VM `index` arrived (from its vhost-user worker). Counts it; when a poll thread
    /// owns the VM, flags the VM, wakes that thread if it sleeps, and returns `true`: the
    /// caller must not do the work itself.
    pub fn on_kick(&self, index: usize) -> bool {
        let Some(vm) = self.vm(index) else {
            return false;
        };
        vm.counters.kicks_received.fetch_add(1, Ordering::Relaxed);
        let Some(owners) = self.poll_owners.get().filter(|o| !o.is_empty()) else {
            return false;
        };
        owners[index % owners.len()].kick(&vm.kicked);
        true
    }

    /// Expires timed-out host handshakes and connections of every VM, and closed VM-to-VM
    /// connections whose final RST never came; detaches VMs whose queues broke; resets the
    /// connections of VMs that posted no RX buffer while packets waited too long.
    pub fn sweep(&self, now: Instant) {
        let expired = self.peers().sweep(now);
        for vm in expired.initiators.iter().filter_map(|&i| self.vm(i)) {
            vm.counters
                .expired_half_open
                .fetch_add(1, Ordering::Relaxed);
        }
        for peer in self.queue_owed_rsts(expired.rsts) {
            self.fill_rx(peer);
        }
        for vm in &self.vms {
            self.reset_if_broken(vm.index);
            self.reset_stalled_receiver(vm, now, self.rx_stall_timeout);
            {
                let mut rx = vm.rx();
                let (host, mut replies) = rx.host_with_replies(&vm.counters);
                host.sweep(now, &mut replies);
            }
            self.service_rx(vm.index);
        }
    }
}
