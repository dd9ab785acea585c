//! One VM's live queues: the three vrings and the guest memory of the current frontend
//! connection.
//!
//! An [`Attachment`] exists from the moment the frontend's rings are known until the frontend
//! disconnects, stops the rings or resets the device. All raw queue access goes through here, and
//! every vring lock taken here is held only for one queue operation, so vring locks are always
//! the innermost locks (see `switch/mod.rs` for the lock order).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use vhost_user_backend::{VringState, VringT};
use virtio_queue::{DescriptorChain, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddressSpace};

use sockbypass_wire::consts::{EVENT_QUEUE, MAX_QUEUE_SIZE, NUM_QUEUES, RX_QUEUE, TX_QUEUE};

use crate::memory::{AtomicMem, GuestMem, MemGuard, Vring};
use crate::metrics::VmCounters;

/// A descriptor chain popped from one of the VM's queues.
pub type Chain = DescriptorChain<MemGuard>;

/// Errors from queue operations. They mean the frontend broke the ring or went away; the caller
/// logs them and treats the queue as stopped.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// Adding to the used ring failed.
    #[error("cannot add descriptor {head} to the used ring of queue {queue}")]
    AddUsed {
        /// Queue index.
        queue: usize,
        /// Head index.
        head: u16,
        /// Cause.
        #[source]
        source: virtio_queue::Error,
    },
    /// Reading or writing notification state failed.
    #[error("cannot update notification state of queue {queue}")]
    Notification {
        /// Queue index.
        queue: usize,
        /// Cause.
        #[source]
        source: virtio_queue::Error,
    },
    /// The guest returned (or published) a head index its queue cannot hold.
    #[error("head {head} is outside queue {queue} of size {size}")]
    HeadOutOfRange {
        /// Queue index.
        queue: usize,
        /// Head index.
        head: u16,
        /// Queue size.
        size: u16,
    },
    /// Writing the call eventfd failed.
    #[error("cannot signal queue {queue} to the guest")]
    Signal {
        /// Queue index.
        queue: usize,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// Source of [`Attachment::generation`] numbers.
static NEXT_GENERATION: AtomicU64 = AtomicU64::new(1);

/// Why a queue of an attachment was declared broken (SPEC.md §9.1). Once broken, the attachment
/// takes nothing more from any of its queues, and the switch detaches the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broken {
    /// The available index is more than the queue size ahead of the device's next index.
    AvailIndexJump,
    /// A ring (available or used) could not be read or written in guest memory.
    RingOutsideMemory,
}

/// TX heads taken from the ring and not yet returned: a head published again while in flight
/// is refused, so each of a VM's packets is held at most once and held packets per sender are
/// bounded by its TX queue size (SPEC.md §5.3).
struct InFlight {
    words: [AtomicU64; MAX_QUEUE_SIZE / 64],
}

impl InFlight {
    fn new() -> Self {
        InFlight {
            words: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// Marks `head` in flight; `false` if it already was. A head past every queue names no
    /// chain (its parse fails and it is never held), so it is not tracked.
    fn claim(&self, head: u16) -> bool {
        let (word, bit) = (usize::from(head) / 64, 1u64 << (head % 64));
        self.words
            .get(word)
            .map_or(true, |w| w.fetch_or(bit, Ordering::Relaxed) & bit == 0)
    }

    /// Marks `head` returned.
    fn release(&self, head: u16) {
        let (word, bit) = (usize::from(head) / 64, 1u64 << (head % 64));
        if let Some(w) = self.words.get(word) {
            w.fetch_and(!bit, Ordering::Relaxed);
        }
    }
}

struct Inner {
    mem: AtomicMem,
    vrings: [Vring; NUM_QUEUES],
    generation: u64,
    counters: Arc<VmCounters>,
    /// Set once, when any queue turns out broken; never cleared (a new attachment starts clean).
    broken: AtomicBool,
    /// Raised with `broken`, for the switch to notice without looking at the attachment; shared
    /// with the VM (see [`super::VmPort::needs_reset`]).
    needs_reset: Arc<AtomicBool>,
    tx_in_flight: InFlight,
}

/// The rings and memory of one attached frontend. Cloning it is one reference count.
#[derive(Clone)]
pub struct Attachment {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Attachment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attachment")
            .field("generation", &self.inner.generation)
            .field("broken", &self.is_broken())
            .finish_non_exhaustive()
    }
}

impl Attachment {
    /// Binds the vrings the vhost-user layer handed over. `None` unless there are exactly three.
    /// `needs_reset` is raised when a queue breaks.
    pub fn new(
        mem: AtomicMem,
        vrings: &[Vring],
        counters: Arc<VmCounters>,
        needs_reset: Arc<AtomicBool>,
    ) -> Option<Self> {
        let [rx, tx, evt] = vrings else {
            return None;
        };
        Some(Attachment {
            inner: Arc::new(Inner {
                mem,
                vrings: [rx.clone(), tx.clone(), evt.clone()],
                generation: NEXT_GENERATION.fetch_add(1, Ordering::Relaxed),
                counters,
                broken: AtomicBool::new(false),
                needs_reset,
                tx_in_flight: InFlight::new(),
            }),
        })
    }

    /// A number no other attachment of the daemon has: packets held for other VMs carry it, so
    /// a chain is only ever returned to the rings it came from.
    pub fn generation(&self) -> u64 {
        self.inner.generation
    }

    /// Whether a queue of this attachment broke: nothing more is taken from it.
    pub fn is_broken(&self) -> bool {
        self.inner.broken.load(Ordering::Acquire)
    }

    /// Declares the attachment broken because of `queue` (counted and logged once).
    fn break_on(&self, queue: usize, why: Broken, detail: &dyn std::fmt::Display) {
        if self.inner.broken.swap(true, Ordering::AcqRel) {
            return;
        }
        self.inner
            .counters
            .queue_broken
            .fetch_add(1, Ordering::Relaxed);
        self.inner.needs_reset.store(true, Ordering::Release);
        tracing::warn!(queue, reason = ?why, %detail, "guest broke a virtqueue: the VM is detached until its driver resets the device or the frontend reconnects");
    }

    /// Whether the frontend handed over rings the driver had already used (a non-zero base on
    /// the RX or TX queue): the guest driver kept running across a reconnect, and its old
    /// connections are gone (SPEC.md §8.4).
    pub fn rings_resumed(&self) -> bool {
        [RX_QUEUE, TX_QUEUE].iter().any(|&q| {
            let state: std::sync::RwLockReadGuard<'_, VringState<AtomicMem>> =
                self.vring(q).get_ref();
            state.get_queue().next_avail() != 0
        })
    }

    /// The current guest memory.
    pub fn memory(&self) -> MemGuard {
        self.inner.mem.memory()
    }

    fn vring(&self, queue: usize) -> &Vring {
        &self.inner.vrings[queue]
    }

    /// The size the frontend set for `queue`.
    pub fn queue_size(&self, queue: usize) -> u16 {
        self.vring(queue).get_ref().get_queue().size()
    }

    /// Whether the queue is started and enabled, so the device may use it.
    pub fn is_live(&self, queue: usize) -> bool {
        live(&self.vring(queue).get_ref())
    }

    /// Whether `queue` is live and holds chains not taken yet: one read lock and one load from
    /// guest memory, so that a poll thread's look at an idle VM stays cheap. An unreadable ring
    /// counts as "yes", so that the full walk meets (and reports) the problem; a broken
    /// attachment has nothing to take.
    pub fn has_avail(&self, queue: usize) -> bool {
        if self.is_broken() {
            return false;
        }
        let state: std::sync::RwLockReadGuard<'_, VringState<AtomicMem>> =
            self.vring(queue).get_ref();
        if !live(&state) {
            return false;
        }
        let q = state.get_queue();
        let mem = self.inner.mem.memory();
        q.avail_idx(&*mem, Ordering::Acquire)
            .map_or(true, |idx| idx.0 != q.next_avail())
    }

    /// Takes the next available chain of `queue`, if the queue is live and has one. `mem` is
    /// the caller's guard on guest memory (one per walk, rather than one load per chain).
    ///
    /// A ring the guest broke (an available index more than the queue size ahead, or a ring
    /// outside guest memory) breaks the attachment: this and every later call return `None`,
    /// and [`Attachment::enable_kicks`] reports no more work, so no caller's loop spins on it.
    pub fn pop(&self, queue: usize, mem: &MemGuard) -> Option<Chain> {
        if self.is_broken() {
            return None;
        }
        let mut state = self.vring(queue).get_mut();
        if !live(&state) {
            return None;
        }
        let q = state.get_queue_mut();
        // `iter` reads the available index and refuses one more than the queue size ahead of
        // the device.
        let chain = match q.iter(mem.clone()) {
            Ok(mut it) => it.next(),
            Err(e) => {
                drop(state);
                let why = match e {
                    virtio_queue::Error::InvalidAvailRingIndex => Broken::AvailIndexJump,
                    _ => Broken::RingOutsideMemory,
                };
                self.break_on(queue, why, &e);
                return None;
            }
        };
        if chain.is_none() && slot_unreadable(q, mem) {
            // Chains were pending, but their ring slot is outside guest memory.
            drop(state);
            self.break_on(
                queue,
                Broken::RingOutsideMemory,
                &"available ring slot unreadable",
            );
        }
        chain
    }

    /// Gives back the chain popped last from `queue`, untouched, so it is popped again later.
    pub fn unpop(&self, queue: usize) {
        let mut state = self.vring(queue).get_mut();
        state.get_queue_mut().go_to_previous_position();
    }

    /// Marks TX chain `head` in flight from now until it is returned ([`Attachment::add_used`]).
    /// `false` when it already is: the guest published a head it had not got back, and the
    /// chain must be refused without a used entry (the first copy gets the one entry).
    pub fn claim_tx(&self, head: u16) -> bool {
        self.inner.tx_in_flight.claim(head)
    }

    /// Returns a chain to the guest with `len` bytes written. `mem` is the caller's guard on
    /// guest memory, as for [`Attachment::pop`]. A head the queue cannot hold (the guest
    /// published an index past its table) is refused here, without virtio-queue's log line.
    pub fn add_used(
        &self,
        queue: usize,
        mem: &GuestMem,
        head: u16,
        len: u32,
    ) -> Result<(), QueueError> {
        if queue == TX_QUEUE {
            self.inner.tx_in_flight.release(head);
        }
        let mut state = self.vring(queue).get_mut();
        let q = state.get_queue_mut();
        let size = q.size();
        if head >= size {
            return Err(QueueError::HeadOutOfRange { queue, head, size });
        }
        let result = q.add_used(mem, head, len);
        drop(state);
        result.map_err(|source| {
            let e = QueueError::AddUsed {
                queue,
                head,
                source,
            };
            self.break_on(queue, Broken::RingOutsideMemory, &e);
            e
        })
    }

    /// Interrupts the guest for `queue` if its notification settings (EVENT_IDX `used_event`,
    /// or the NO_INTERRUPT flag) ask for it. Returns whether it signalled.
    pub fn notify(&self, queue: usize) -> Result<bool, QueueError> {
        let vring = self.vring(queue);
        let needed = vring
            .needs_notification()
            .map_err(|source| self.notification_failed(queue, source))?;
        if needed {
            vring
                .signal_used_queue()
                .map_err(|source| QueueError::Signal { queue, source })?;
            self.inner
                .counters
                .interrupts_sent
                .fetch_add(1, Ordering::Relaxed);
        }
        Ok(needed)
    }

    /// Stops kicks for `queue` while the device is busy with it.
    pub fn disable_kicks(&self, queue: usize) -> Result<(), QueueError> {
        self.vring(queue)
            .disable_notification()
            .map_err(|source| self.notification_failed(queue, source))
    }

    /// Asks for kicks again; returns `true` when new chains arrived meanwhile, so the caller must
    /// look again (no wake-up is lost). A broken attachment has no new chains: `false`.
    pub fn enable_kicks(&self, queue: usize) -> Result<bool, QueueError> {
        if self.is_broken() {
            return Ok(false);
        }
        let more = self
            .vring(queue)
            .enable_notification()
            .map_err(|source| self.notification_failed(queue, source))?;
        // A jumped index also reads as "more": the next pop breaks the attachment, and the
        // call after that says no.
        Ok(more && !self.is_broken())
    }

    fn notification_failed(&self, queue: usize, source: virtio_queue::Error) -> QueueError {
        let e = QueueError::Notification { queue, source };
        self.break_on(queue, Broken::RingOutsideMemory, &e);
        e
    }
}

/// Whether the available-ring slot the device would read next lies outside guest memory (an
/// empty ring is never that: `iter` returned `None` because nothing was pending).
fn slot_unreadable(q: &virtio_queue::Queue, mem: &GuestMem) -> bool {
    let Some(slot) = q.next_avail().checked_rem(q.size()) else {
        return false;
    };
    let addr = q.avail_ring() + 4 + 2 * u64::from(slot);
    mem.load::<u16>(vm_memory::GuestAddress(addr), Ordering::Relaxed)
        .is_err()
}

/// Whether a queue is started and enabled, so the device may use it.
fn live(state: &VringState<AtomicMem>) -> bool {
    state.is_enabled() && state.get_queue().ready()
}

/// Queue index names, re-exported for the switch.
pub const RX: usize = RX_QUEUE;
/// See [`RX`].
pub const TX: usize = TX_QUEUE;
/// See [`RX`].
pub const EVT: usize = EVENT_QUEUE;
