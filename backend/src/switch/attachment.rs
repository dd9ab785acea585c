//! One VM's live queues: the three vrings and the guest memory of the current frontend
//! connection.
//!
//! An [`Attachment`] exists from the moment the frontend's rings are known until the frontend
//! disconnects, stops the rings or resets the device. All raw queue access goes through here, and
//! every vring lock taken here is held only for one queue operation, so vring locks are always
//! the innermost locks (see `switch/mod.rs` for the lock order).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use vhost_user_backend::{VringRwLock, VringState, VringT};
use virtio_queue::{DescriptorChain, QueueOwnedT, QueueT};
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryLoadGuard, GuestMemoryMmap};

use sockbypass_wire::consts::{EVENT_QUEUE, NUM_QUEUES, RX_QUEUE, TX_QUEUE};

use crate::metrics::VmCounters;

/// Guest memory as the vhost-user layer maps it.
pub type GuestMem = GuestMemoryMmap<()>;
/// The atomic handle the vhost-user layer updates on SET_MEM_TABLE.
pub type AtomicMem = GuestMemoryAtomic<GuestMem>;
/// A loaded snapshot of guest memory.
pub type MemGuard = GuestMemoryLoadGuard<GuestMem>;
/// A descriptor chain popped from one of the VM's queues.
pub type Chain = DescriptorChain<MemGuard>;
/// The vring type of the device.
pub type Vring = VringRwLock<AtomicMem>;

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

/// The rings and memory of one attached frontend.
#[derive(Clone)]
pub struct Attachment {
    mem: AtomicMem,
    vrings: [Vring; NUM_QUEUES],
    generation: u64,
    counters: Arc<VmCounters>,
}

impl std::fmt::Debug for Attachment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attachment").finish_non_exhaustive()
    }
}

impl Attachment {
    /// Binds the vrings the vhost-user layer handed over. `None` unless there are exactly three.
    pub fn new(mem: AtomicMem, vrings: &[Vring], counters: Arc<VmCounters>) -> Option<Self> {
        let [rx, tx, evt] = vrings else {
            return None;
        };
        Some(Attachment {
            mem,
            vrings: [rx.clone(), tx.clone(), evt.clone()],
            generation: NEXT_GENERATION.fetch_add(1, Ordering::Relaxed),
            counters,
        })
    }

    /// A number no other attachment of the daemon has: packets held for other VMs carry it, so
    /// a chain is only ever returned to the rings it came from.
    pub fn generation(&self) -> u64 {
        self.generation
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
        self.mem.memory()
    }

    fn vring(&self, queue: usize) -> &Vring {
        &self.vrings[queue]
    }

    /// Whether the queue is started and enabled, so the device may use it.
    pub fn is_live(&self, queue: usize) -> bool {
        live(&self.vring(queue).get_ref())
    }

    /// Whether `queue` is live and holds chains not taken yet: one read lock and one load from
    /// guest memory, so that a poll thread's look at an idle VM stays cheap. An unreadable ring
    /// counts as "yes", so that the full walk meets (and reports) the problem.
    pub fn has_avail(&self, queue: usize) -> bool {
        let state: std::sync::RwLockReadGuard<'_, VringState<AtomicMem>> =
            self.vring(queue).get_ref();
        if !live(&state) {
            return false;
        }
        let q = state.get_queue();
        let mem = self.mem.memory();
        q.avail_idx(&*mem, std::sync::atomic::Ordering::Acquire)
            .map_or(true, |idx| idx.0 != q.next_avail())
    }

    /// Takes the next available chain of `queue`, if the queue is live and has one. `mem` is
    /// the caller's guard on guest memory (one per walk, rather than one load per chain).
    pub fn pop(&self, queue: usize, mem: &MemGuard) -> Option<Chain> {
        if !self.is_live(queue) {
            return None;
        }
        let mut state = self.vring(queue).get_mut();
        state.get_queue_mut().pop_descriptor_chain(mem.clone())
    }

    /// Gives back the chain popped last from `queue`, untouched, so it is popped again later.
    pub fn unpop(&self, queue: usize) {
        let mut state = self.vring(queue).get_mut();
        state.get_queue_mut().go_to_previous_position();
    }

    /// Returns a chain to the guest with `len` bytes written. `mem` is the caller's guard on
    /// guest memory, as for [`Attachment::pop`].
    pub fn add_used(
        &self,
        queue: usize,
        mem: &GuestMem,
        head: u16,
        len: u32,
    ) -> Result<(), QueueError> {
        let mut state = self.vring(queue).get_mut();
        state
            .get_queue_mut()
            .add_used(mem, head, len)
            .map_err(|source| QueueError::AddUsed {
                queue,
                head,
                source,
            })
    }

    /// Interrupts the guest for `queue` if its notification settings (EVENT_IDX `used_event`,
    /// or the NO_INTERRUPT flag) ask for it. Returns whether it signalled.
    pub fn notify(&self, queue: usize) -> Result<bool, QueueError> {
        let vring = self.vring(queue);
        let needed = vring
            .needs_notification()
            .map_err(|source| QueueError::Notification { queue, source })?;
        if needed {
            vring
                .signal_used_queue()
                .map_err(|source| QueueError::Signal { queue, source })?;
            self.counters
                .interrupts_sent
                .fetch_add(1, Ordering::Relaxed);
        }
        Ok(needed)
    }

    /// Stops kicks for `queue` while the device is busy with it.
    pub fn disable_kicks(&self, queue: usize) -> Result<(), QueueError> {
        self.vring(queue)
            .disable_notification()
            .map_err(|source| QueueError::Notification { queue, source })
    }

    /// Asks for kicks again; returns `true` when new chains arrived meanwhile, so the caller must
    /// look again (no wake-up is lost).
    pub fn enable_kicks(&self, queue: usize) -> Result<bool, QueueError> {
        self.vring(queue)
            .enable_notification()
            .map_err(|source| QueueError::Notification { queue, source })
    }
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
