//! The daemon's view of one ring of a window (SPEC.md §13.2, §13.3): its control fields, read
//! and written with the orderings the ring protocol names, and its data area. Every offset comes
//! from the window's [`Geometry`](sockbypass_wire::fastpath::layout::Geometry); nothing read
//! from the window is used as an offset or a length.
//!
//! Access goes through `vm-memory`'s volatile slices: the guest writes the same memory at any
//! time, so every load is a fresh, atomic one and the data is copied with volatile accesses.

use std::sync::atomic::Ordering;

use sockbypass_wire::fastpath::layout::{ring_control, RING_SIZE};
use vm_memory::{Bytes, VolatileSlice};

/// One ring of one slot: its control (256 bytes) and its data area ([`RING_SIZE`] bytes).
#[derive(Debug, Clone, Copy)]
pub struct RingAccess<'a> {
    control: VolatileSlice<'a, ()>,
    data: VolatileSlice<'a, ()>,
}

fn offset(field: u64) -> usize {
    // The field offsets are constants below 256.
    usize::try_from(field).unwrap_or(usize::MAX)
}

impl<'a> RingAccess<'a> {
    /// A ring over `control` and `data`, as the window cut them.
    pub(super) fn new(control: VolatileSlice<'a, ()>, data: VolatileSlice<'a, ()>) -> Self {
        RingAccess { control, data }
    }

    fn load64(&self, field: u64, order: Ordering) -> u64 {
        // In bounds and aligned: the control is 256 bytes at a 256-aligned offset of a
        // page-aligned mapping; a failure would be a geometry bug, read as 0.
        self.control.load(offset(field), order).unwrap_or(0)
    }

    fn load32(&self, field: u64, order: Ordering) -> u32 {
        self.control.load(offset(field), order).unwrap_or(0)
    }

    fn store64(&self, field: u64, value: u64, order: Ordering) {
        let _ = self.control.store(value, offset(field), order);
    }

    fn store32(&self, field: u64, value: u32, order: Ordering) {
        let _ = self.control.store(value, offset(field), order);
    }

    /// The producer's `head` (acquire: the bytes before it are visible).
    pub fn head(&self) -> u64 {
        self.load64(ring_control::HEAD, Ordering::Acquire)
    }

    /// Publishes `head` (release: after the bytes).
    pub fn set_head(&self, head: u64) {
        self.store64(ring_control::HEAD, head, Ordering::Release);
    }

    /// The consumer's `tail` (acquire: the space before it may be reused).
    pub fn tail(&self) -> u64 {
        self.load64(ring_control::TAIL, Ordering::Acquire)
    }

    /// Publishes `tail` (release: after the bytes were read).
    pub fn set_tail(&self, tail: u64) {
        self.store64(ring_control::TAIL, tail, Ordering::Release);
    }

    /// Whether the producer set `closed` (any value but 0 counts, §13.9).
    pub fn closed(&self) -> bool {
        self.load32(ring_control::CLOSED, Ordering::Acquire) != 0
    }

    /// Sets `closed`, after the last `head` store.
    pub fn set_closed(&self) {
        self.store32(ring_control::CLOSED, 1, Ordering::Release);
    }

    /// Whether the consumer waits for data (SeqCst: paired with the fence of §13.3).
    pub fn consumer_sleeping(&self) -> bool {
        self.load32(ring_control::CONSUMER_SLEEPING, Ordering::SeqCst) != 0
    }

    /// Whether the producer waits for space.
    pub fn producer_sleeping(&self) -> bool {
        self.load32(ring_control::PRODUCER_SLEEPING, Ordering::SeqCst) != 0
    }

    /// Writes the connection id the slot now carries.
    pub fn set_generation(&self, generation: u32) {
        self.store32(ring_control::GENERATION, generation, Ordering::Release);
    }

    /// Zeroes the whole control (a slot handed out or returned).
    pub fn zero(&self) {
        self.control.write_slice(&[0u8; 256], 0).ok();
    }

    /// `len` bytes of the data area from `at` (an offset below [`RING_SIZE`] the caller computed
    /// from its own index).
    fn data_at(&self, at: u64, len: u64) -> Option<VolatileSlice<'a, ()>> {
        debug_assert!(at + len <= RING_SIZE);
        self.data
            .subslice(usize::try_from(at).ok()?, usize::try_from(len).ok()?)
            .ok()
    }

    /// Copies `len` bytes from this ring's data at `from` into `to`'s data at `at`; `None` if a
    /// range is outside a data area (the caller's arithmetic is wrong, never the guest's).
    pub fn copy_into(&self, from: u64, to: &RingAccess<'_>, at: u64, len: u64) -> Option<()> {
        let src = self.data_at(from, len)?;
        let dst = to.data_at(at, len)?;
        src.copy_to_volatile_slice(dst);
        Some(())
    }
}
