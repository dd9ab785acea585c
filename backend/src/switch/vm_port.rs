//! Everything the switch keeps about one VM: its configuration, counters, the current
//! attachment (rings and memory), and the locked state of its TX and RX sides.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Instant;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use sockbypass_wire::PacketHeader;

use crate::config::VmConfig;
use crate::host::HostEndpoint;
use crate::logging::RateLimiter;
use crate::metrics::VmCounters;

use super::attachment::{Attachment, RX, TX};
use super::inbound::{Held, InboundQueue};
use super::replies::{Cause, HostReplies, ReplyQueue};
use crate::memory::{AtomicMem, GuestMem, Vring};

/// State serialised by the TX lock: only one thread walks a VM's TX queue at a time.
#[derive(Debug, Default)]
pub struct TxSide {
    /// VMs whose RX queues this walk wrote into (their interrupts are sent once, at the end).
    /// Kept between walks so that its allocation is reused.
    pub touched: Vec<usize>,
}

/// State serialised by the RX lock: everything that produces packets for this VM's RX queue.
#[derive(Debug)]
pub struct RxSide {
    /// Refusals and RSTs owed to the guest.
    pub replies: ReplyQueue,
    /// Connections with host programs.
    pub host: HostEndpoint,
    /// Packets from other VMs waiting for RX buffers.
    pub inbound: InboundQueue,
    /// Since when peer data has been waiting with no RX buffer free.
    pub starved_since: Option<Instant>,
    /// A `TRANSPORT_RESET` event is owed to the guest.
    pub reset_event_owed: bool,
    /// Senders whose TX chains a fill returned (their interrupts are sent once, at the end).
    /// Kept between fills so that its allocation is reused.
    pub senders_done: Vec<usize>,
    /// Alternates RX buffers between host connections and peer VMs when both have data.
    pub host_turn: bool,
}

impl RxSide {
    /// Queues `rst` for this VM and counts it (in `drop_reply_overflow` when a peer-caused RST
    /// finds the peer-reply queue full). Packets of the same connection still held here move
    /// to `dropped`, for the caller to return once the lock is released: the RST must not
    /// overtake them (SPEC.md §10).
    pub fn owe_rst(
        &mut self,
        rst: PacketHeader,
        cause: Cause,
        counters: &VmCounters,
        dropped: &mut Vec<Held>,
    ) {
        self.inbound.take_connection(&rst, dropped);
        let queued = match cause {
            Cause::Own => {
                self.replies.push(rst);
                true
            }
            Cause::Peer => self.replies.push_from_peer(rst),
        };
        let counter = if queued {
            &counters.rst_sent
        } else {
            &counters.drop_reply_overflow
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The host endpoint, with the guest's reply queue as the endpoint may use it.
    pub fn host_with_replies<'a>(
        &'a mut self,
        counters: &'a VmCounters,
    ) -> (&'a mut HostEndpoint, HostReplies<'a>) {
        let replies = HostReplies {
            queue: &mut self.replies,
            counters,
        };
        (&mut self.host, replies)
    }

    /// Marks the start of a wait for RX buffers (if not already waiting).
    pub fn start_starving(&mut self) {
        if self.starved_since.is_none() {
            self.starved_since = Some(Instant::now());
        }
    }
}

/// What a detach took from a VM, for the switch to clean up elsewhere.
#[derive(Debug)]
pub struct Detached {
    /// The generation of the attachment that ended.
    pub generation: u64,
    /// Packets other VMs had waiting for this VM; their chains go back to the senders.
    pub inbound: Vec<Held>,
}

/// One VM as the switch sees it.
#[derive(Debug)]
pub struct VmPort {
    /// Position in the switch's table (also the epoll token prefix).
    pub index: usize,
    /// The VM's configuration.
    pub config: VmConfig,
    /// Counters, readable at any time.
    pub counters: Arc<VmCounters>,
    /// A kick arrived that the poll thread owning this VM has not looked at yet.
    pub kicked: AtomicBool,
    /// Limits per-packet warnings about this VM's guest.
    pub warn: RateLimiter,
    /// This VM's TX chains held by other VMs' inbound queues.
    pub held: AtomicUsize,
    /// The last RX fill ran out of buffers with packets still waiting for this VM: a poll
    /// thread looks at its RX ring each loop (without waiting for a kick) until a fill empties
    /// what waits.
    pub rx_starved: AtomicBool,
    /// The last TX walk stopped because the VM's reply queue was full; a fill that sends
    /// replies resumes it. An atomic, so that RX paths never take the TX lock to read it.
    pub tx_stalled_on_replies: AtomicBool,
    /// Raised when a queue of the current attachment breaks; the switch then detaches the VM
    /// ([`super::Switch::reset_if_broken`]).
    needs_reset: Arc<AtomicBool>,
    /// The VM broke a queue and was detached: its rings are not bound again until the
    /// frontend resets the device, stops a ring or reconnects.
    quarantined: AtomicBool,
    /// Written to hand the VM's remaining work back to whoever serves it (its vhost-user
    /// worker, which forwards to the owning poll thread): a walk that spent its budget, or a
    /// fill that freed room for a stalled TX walk, ends here instead of looping.
    resume: EventFd,
    lifecycle: Mutex<()>,
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
    pub fn new(index: usize, config: VmConfig, host: HostEndpoint) -> std::io::Result<Self> {
        Ok(VmPort {
            index,
            config,
            counters: Arc::new(VmCounters::default()),
            kicked: AtomicBool::new(false),
            warn: RateLimiter::per_packet(),
            held: AtomicUsize::new(0),
            rx_starved: AtomicBool::new(false),
            tx_stalled_on_replies: AtomicBool::new(false),
            needs_reset: Arc::new(AtomicBool::new(false)),
            quarantined: AtomicBool::new(false),
            resume: EventFd::new(EFD_NONBLOCK)?,
            lifecycle: Mutex::new(()),
            memory: Mutex::new(None),
            attachment: RwLock::new(None),
            tx: Mutex::new(TxSide::default()),
            rx: Mutex::new(RxSide {
                replies: ReplyQueue::default(),
                host,
                inbound: InboundQueue::default(),
                starved_since: None,
                reset_event_owed: false,
                senders_done: Vec::new(),
                host_turn: false,
            }),
        })
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

    /// Puts chain `head` of this VM's `queue` (in `att`, the rings it came from) in the used
    /// ring with `len` bytes written. A failure (the frontend broke the ring or went away) is
    /// logged, rate-limited, and reported as `false`.
    pub fn return_chain(
        &self,
        att: &Attachment,
        mem: &GuestMem,
        queue: usize,
        head: u16,
        len: u32,
    ) -> bool {
        match att.add_used(queue, mem, head, len) {
            Ok(()) => true,
            Err(e) => {
                crate::warn_limited!(self.warn, vm = %self.config.name, error = %e, "cannot return a chain to the guest");
                false
            }
        }
    }

    /// Takes the RX lock and says whether anything waits for this VM's RX buffers: replies,
    /// packets from peers, or data from host connections.
    pub fn lock_rx_has_work(&self) -> bool {
        let rx = self.rx();
        !rx.replies.is_empty() || !rx.inbound.is_empty() || rx.host.has_work_for_guest()
    }

    /// Runs `f` on the bound rings without cloning them (no reference counts touched); `None`
    /// when detached.
    pub fn with_attachment<R>(&self, f: impl FnOnce(&Attachment) -> R) -> Option<R> {
        self.attachment
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(f)
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

    /// Serialises attach and detach of this VM (taken before every other lock of the VM).
    pub fn lifecycle(&self) -> MutexGuard<'_, ()> {
        lock(&self.lifecycle)
    }

    /// Binds the vrings of the current connection if none are bound. Returns `true` when this
    /// call attached the VM. The caller holds [`VmPort::lifecycle`].
    pub fn bind(&self, vrings: &[Vring]) -> bool {
        if self.is_attached() {
            return false;
        }
        let Some(mem) = lock(&self.memory).clone() else {
            tracing::debug!(vm = %self.config.name, "not binding: no memory");
            return false;
        };
        if self.quarantined.load(Ordering::Acquire) {
            tracing::debug!(vm = %self.config.name, "not binding: quarantined");
            return false;
        }
        let Some(att) =
            Attachment::new(mem, vrings, self.counters.clone(), self.needs_reset.clone())
        else {
            return false;
        };
        if !(att.is_live(RX) && att.is_live(TX)) {
            // Stopped or not yet enabled rings: a late kick after a detach must not re-attach.
            tracing::debug!(vm = %self.config.name, rx = att.is_live(RX), tx = att.is_live(TX), "not binding: rings not live");
            return false;
        }
        let _tx = lock(&self.tx);
        let mut rx = lock(&self.rx);
        let mut slot = self.attachment.write().unwrap_or_else(|p| p.into_inner());
        if slot.is_some() {
            return false;
        }
        rx.reset_event_owed = att.rings_resumed();
        *slot = Some(att);
        rx.host.guest_attached();
        true
    }

    /// Drops the attachment, every host connection and everything owed to this VM. Returns
    /// what other VMs must clean up, or `None` if the VM was not attached. The caller holds
    /// [`VmPort::lifecycle`].
    pub fn unbind(&self) -> Option<Detached> {
        let _tx = lock(&self.tx);
        let mut rx = lock(&self.rx);
        let att = self
            .attachment
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        rx.host.guest_detached();
        rx.replies.clear();
        rx.reset_event_owed = false;
        rx.starved_since = None;
        self.tx_stalled_on_replies.store(false, Ordering::Relaxed);
        let inbound = rx.inbound.drain_all();
        att.map(|a| Detached {
            generation: a.generation(),
            inbound,
        })
    }

    /// Takes the hint that a queue broke (see [`Attachment::is_broken`] for the truth).
    pub fn take_needs_reset(&self) -> bool {
        self.needs_reset.load(Ordering::Relaxed) && self.needs_reset.swap(false, Ordering::AcqRel)
    }

    /// Keeps the VM detached until [`VmPort::lift_quarantine`].
    pub fn quarantine(&self) {
        self.quarantined.store(true, Ordering::Release);
    }

    /// The frontend reset the device, stopped a ring or reconnected: the VM may attach again.
    pub fn lift_quarantine(&self) {
        self.quarantined.store(false, Ordering::Release);
    }

    /// Whether the VM is kept detached after breaking a queue.
    pub fn is_quarantined(&self) -> bool {
        self.quarantined.load(Ordering::Acquire)
    }

    /// Asks whoever serves this VM to come back to it (see the `resume` field).
    pub fn request_resume(&self) {
        // A full eventfd counter (2^64 - 2 writes unread) still means "come back": ignore it.
        let _ = self.resume.write(1);
    }

    /// The eventfd behind [`VmPort::request_resume`], for the VM's vhost-user worker to watch.
    pub fn resume_fd(&self) -> &EventFd {
        &self.resume
    }

    /// Counts `n` more of this VM's chains held by other VMs.
    pub fn held_add(&self, n: usize) {
        self.held.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts `n` fewer of this VM's chains held by other VMs.
    pub fn held_sub(&self, n: usize) {
        // Never below zero, even if a detach and a delivery race on the count.
        let _ = self
            .held
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(n))
            });
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
