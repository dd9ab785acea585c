//! Everything the switch keeps about one VM: its configuration, counters, the current
//! attachment (rings and memory), and the locked state of its TX and RX sides.

use std::sync::{Mutex, MutexGuard, RwLock};

use crate::config::VmConfig;
use crate::host::HostEndpoint;
use crate::logging::RateLimiter;
use crate::metrics::VmCounters;

use super::attachment::{AtomicMem, Attachment, Vring};
use super::replies::ReplyQueue;

/// State serialised by the TX lock: only one thread walks a VM's TX queue at a time.
#[derive(Debug, Default)]
pub struct TxSide {
    /// The last walk stopped because the reply queue was full.
    pub stalled_on_replies: bool,
}

/// State serialised by the RX lock: everything that produces packets for this VM's RX queue.
#[derive(Debug)]
pub struct RxSide {
    /// Refusals and RSTs owed to the guest.
    pub replies: ReplyQueue,
    /// Connections with host programs.
    pub host: HostEndpoint,
}

/// One VM as the switch sees it.
#[derive(Debug)]
pub struct VmPort {
    /// Position in the switch's table (also the epoll token prefix).
    pub index: usize,
    /// The VM's configuration.
    pub config: VmConfig,
    /// Counters, readable at any time.
    pub counters: VmCounters,
    /// Limits per-packet warnings about this VM's guest.
    pub warn: RateLimiter,
    memory: Mutex<Option<AtomicMem>>,
    attachment: RwLock<Option<Attachment>>,
    tx: Mutex<TxSide>,
    rx: Mutex<RxSide>,
}

/// Locks a mutex, recovering the data if a panicking thread poisoned it: the state is still
/// consistent at every await point of this crate, and one VM's panic must not stop the others.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl VmPort {
    /// A detached VM.
    pub fn new(index: usize, config: VmConfig, host: HostEndpoint) -> Self {
        VmPort {
            index,
            config,
            counters: VmCounters::default(),
            warn: RateLimiter::per_packet(),
            memory: Mutex::new(None),
            attachment: RwLock::new(None),
            tx: Mutex::new(TxSide::default()),
            rx: Mutex::new(RxSide {
                replies: ReplyQueue::default(),
                host,
            }),
        }
    }

    /// The guest's CID.
    pub fn cid(&self) -> u64 {
        self.config.cid
    }

    /// The current attachment, if the guest's rings are bound.
    pub fn attachment(&self) -> Option<Attachment> {
        self.attachment
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether the guest's rings are bound.
    pub fn is_attached(&self) -> bool {
        self.attachment
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// Records the memory of a new frontend connection (or forgets it with `None`).
    pub fn set_memory(&self, mem: Option<AtomicMem>) {
        *lock(&self.memory) = mem;
    }

    /// Binds the vrings of the current connection if none are bound. Returns `true` when this
    /// call attached the VM.
    pub fn bind(&self, vrings: &[Vring]) -> bool {
        if self.is_attached() {
            return false;
        }
        let Some(mem) = lock(&self.memory).clone() else {
            return false;
        };
        let Some(att) = Attachment::new(mem, vrings) else {
            return false;
        };
        let _tx = lock(&self.tx);
        let mut rx = lock(&self.rx);
        let mut slot = self.attachment.write().unwrap_or_else(|p| p.into_inner());
        if slot.is_some() {
            return false;
        }
        *slot = Some(att);
        rx.host.guest_attached();
        true
    }

    /// Drops the attachment and every connection of this VM.
    pub fn unbind(&self) -> bool {
        let mut tx = lock(&self.tx);
        let mut rx = lock(&self.rx);
        let was = self
            .attachment
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .is_some();
        rx.host.guest_detached();
        rx.replies.clear();
        tx.stalled_on_replies = false;
        was
    }

    /// Locks the TX side.
    pub fn tx(&self) -> MutexGuard<'_, TxSide> {
        lock(&self.tx)
    }

    /// Locks the RX side.
    pub fn rx(&self) -> MutexGuard<'_, RxSide> {
        lock(&self.rx)
    }
}
