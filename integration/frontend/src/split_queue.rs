//! The driver side of a split virtqueue (virtio 1.2 §2.7) in guest memory.
//!
//! [`SplitQueue`] owns one allocation holding the descriptor table, the available ring (with
//! `used_event` after it) and the used ring (with `avail_event` after it), plus the two eventfds of
//! the queue: `kick` (driver → device) and `call` (device → driver).
//!
//! Normal use: [`SplitQueue::add_chain`] publishes a chain, [`SplitQueue::kick`] notifies the
//! device unless it asked not to be (`avail_event` with EVENT_IDX, `VRING_USED_F_NO_NOTIFY`
//! without), [`SplitQueue::pop_used`] returns completed chains and frees their descriptors,
//! [`SplitQueue::enable_interrupts`] re-arms `used_event`, and [`SplitQueue::wait_call`] /
//! [`wait_for_calls`] block on the call eventfd(s) with a timeout.
//!
//! Hostile use: [`SplitQueue::write_descriptor`] writes any descriptor at any table index,
//! [`SplitQueue::publish_head`] puts any head in the available ring, and
//! [`SplitQueue::set_avail_idx`] moves the available index anywhere. Descriptors used that way
//! should first be taken out of the free list with [`SplitQueue::reserve_descriptors`] so normal
//! chains do not reuse them.

use std::num::Wrapping;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{fence, Ordering};
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::error::{MemoryError, QueueError};
use crate::guest_memory::{GuestRam, GuestRange};

/// Descriptor flag: the chain continues at `next`.
pub const DESC_F_NEXT: u16 = 1;
/// Descriptor flag: the device writes this buffer.
pub const DESC_F_WRITE: u16 = 2;
/// Descriptor flag: the buffer is an indirect descriptor table.
pub const DESC_F_INDIRECT: u16 = 4;
/// Available-ring flag: the driver does not want interrupts (without EVENT_IDX).
pub const AVAIL_F_NO_INTERRUPT: u16 = 1;
/// Used-ring flag: the device does not want kicks (without EVENT_IDX).
pub const USED_F_NO_NOTIFY: u16 = 1;
/// Largest split queue size.
pub const MAX_QUEUE_SIZE: u16 = 32768;

const DESC_SIZE: u64 = 16;

/// One buffer of a chain, as the driver describes it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Buffer {
    /// Guest-physical address.
    pub addr: GuestAddress,
    /// Length in bytes.
    pub len: u32,
    /// Whether the device writes it (`VRING_DESC_F_WRITE`).
    pub write_only: bool,
}

impl Buffer {
    /// A buffer the device reads.
    pub fn readable(addr: GuestAddress, len: u32) -> Self {
        Buffer {
            addr,
            len,
            write_only: false,
        }
    }

    /// A buffer the device writes.
    pub fn writable(addr: GuestAddress, len: u32) -> Self {
        Buffer {
            addr,
            len,
            write_only: true,
        }
    }
}

/// A descriptor exactly as it sits in the table.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct RawDescriptor {
    /// Buffer address.
    pub addr: u64,
    /// Buffer length.
    pub len: u32,
    /// `DESC_F_*` flags, or anything else.
    pub flags: u16,
    /// Next descriptor index when `DESC_F_NEXT` is set.
    pub next: u16,
}

impl RawDescriptor {
    fn to_bytes(self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&self.addr.to_le_bytes());
        b[8..12].copy_from_slice(&self.len.to_le_bytes());
        b[12..14].copy_from_slice(&self.flags.to_le_bytes());
        b[14..16].copy_from_slice(&self.next.to_le_bytes());
        b
    }

    fn from_bytes(b: [u8; 16]) -> Self {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[0..8]);
        RawDescriptor {
            addr: u64::from_le_bytes(a),
            len: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
            flags: u16::from_le_bytes([b[12], b[13]]),
            next: u16::from_le_bytes([b[14], b[15]]),
        }
    }
}

/// Where the three parts of the queue live, as SET_VRING_NUM / SET_VRING_ADDR need them.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct QueueLayout {
    /// Number of descriptors.
    pub size: u16,
    /// Descriptor table (16-byte aligned).
    pub desc_table: GuestAddress,
    /// Available ring (2-byte aligned).
    pub avail_ring: GuestAddress,
    /// Used ring (4-byte aligned).
    pub used_ring: GuestAddress,
}

impl QueueLayout {
    fn new(base: u64, size: u16) -> Self {
        let n = u64::from(size);
        let avail = base + DESC_SIZE * n;
        let used = (avail + 6 + 2 * n + 3) & !3;
        QueueLayout {
            size,
            desc_table: GuestAddress(base),
            avail_ring: GuestAddress(avail),
            used_ring: GuestAddress(used),
        }
    }

    /// Bytes from the descriptor table to the end of the used ring.
    fn total_len(&self) -> u64 {
        self.used_ring.0 + 6 + 8 * u64::from(self.size) - self.desc_table.0
    }

    fn avail_idx_addr(&self) -> GuestAddress {
        GuestAddress(self.avail_ring.0 + 2)
    }

    fn avail_slot_addr(&self, slot: u16) -> GuestAddress {
        GuestAddress(self.avail_ring.0 + 4 + 2 * u64::from(slot))
    }

    fn used_event_addr(&self) -> GuestAddress {
        GuestAddress(self.avail_ring.0 + 4 + 2 * u64::from(self.size))
    }

    fn used_idx_addr(&self) -> GuestAddress {
        GuestAddress(self.used_ring.0 + 2)
    }

    fn used_elem_addr(&self, slot: u16) -> GuestAddress {
        GuestAddress(self.used_ring.0 + 4 + 8 * u64::from(slot))
    }

    fn avail_event_addr(&self) -> GuestAddress {
        GuestAddress(self.used_ring.0 + 4 + 8 * u64::from(self.size))
    }

    fn desc_addr(&self, index: u16) -> GuestAddress {
        GuestAddress(self.desc_table.0 + DESC_SIZE * u64::from(index))
    }
}

/// One entry taken from the used ring.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsedElem {
    /// The id the device wrote (a head index, unless the device misbehaves).
    pub id: u32,
    /// The length the device wrote.
    pub len: u32,
    /// The buffers of the chain, when `id` names a chain added with [`SplitQueue::add_chain`] or
    /// [`SplitQueue::add_indirect_chain`]; `None` for raw heads and bogus ids.
    pub chain: Option<Vec<Buffer>>,
}

/// A chain that was still in flight when the queue was reset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DroppedChain {
    /// Its head index.
    pub head: u16,
    /// Its buffers.
    pub buffers: Vec<Buffer>,
}

/// Counters of one queue.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Chains added with `add_chain` / `add_indirect_chain`.
    pub chains_added: u64,
    /// Raw heads published with `publish_head`.
    pub raw_heads_published: u64,
    /// Used entries taken from the used ring.
    pub used: u64,
    /// Used entries whose id named no chain in flight.
    pub unknown_used: u64,
    /// Kicks written to the kick eventfd.
    pub kicks: u64,
    /// Kicks skipped because the device asked not to be notified.
    pub kicks_suppressed: u64,
    /// Call eventfd signals consumed.
    pub calls: u64,
}

#[derive(Debug)]
struct InFlight {
    descs: Vec<u16>,
    buffers: Vec<Buffer>,
    indirect: Option<GuestRange>,
}

/// The driver side of one split virtqueue.
#[derive(Debug)]
pub struct SplitQueue {
    ram: GuestRam,
    ring: GuestRange,
    layout: QueueLayout,
    event_idx: bool,
    free: Vec<u16>,
    reserved: Vec<bool>,
    in_flight: Vec<Option<InFlight>>,
    next_avail: Wrapping<u16>,
    last_kick_avail: Wrapping<u16>,
    last_used: Wrapping<u16>,
    kick: EventFd,
    call: EventFd,
    stats: QueueStats,
}

fn access(addr: GuestAddress, source: vm_memory::GuestMemoryError) -> QueueError {
    QueueError::Memory(MemoryError::Access {
        addr: addr.0,
        source,
    })
}

/// `vring_need_event`: whether moving an index from `old` to `new` crosses `event`.
pub fn vring_need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

impl SplitQueue {
    /// A queue of `size` descriptors (a power of two) in `ram`, zeroed, with fresh eventfds.
    /// `event_idx` says whether VIRTIO_RING_F_EVENT_IDX was negotiated.
    pub fn new(ram: &GuestRam, size: u16, event_idx: bool) -> Result<Self, QueueError> {
        if size == 0 || size > MAX_QUEUE_SIZE || !size.is_power_of_two() {
            return Err(QueueError::InvalidSize(size));
        }
        let probe = QueueLayout::new(0, size);
        let ring = ram.alloc_zeroed(probe.total_len(), 4096)?;
        let layout = QueueLayout::new(ring.addr.0, size);
        let kick = EventFd::new(EFD_NONBLOCK).map_err(QueueError::EventFd)?;
        let call = EventFd::new(EFD_NONBLOCK).map_err(QueueError::EventFd)?;
        let mut q = SplitQueue {
            ram: ram.clone(),
            ring,
            layout,
            event_idx,
            free: Vec::new(),
            reserved: vec![false; usize::from(size)],
            in_flight: Vec::new(),
            next_avail: Wrapping(0),
            last_kick_avail: Wrapping(0),
            last_used: Wrapping(0),
            kick,
            call,
            stats: QueueStats::default(),
        };
        q.reset_state();
        Ok(q)
    }

    fn reset_state(&mut self) {
        let size = self.layout.size;
        // Pop order: lowest index first.
        self.free = (0..size).rev().collect();
        self.reserved = vec![false; usize::from(size)];
        self.in_flight = (0..size).map(|_| None).collect();
        self.next_avail = Wrapping(0);
        self.last_kick_avail = Wrapping(0);
        self.last_used = Wrapping(0);
    }

    /// Puts the queue back in its initial state: ring memory zeroed, all descriptors free,
    /// indices 0, the call eventfd drained. Returns the chains that were in flight (their
    /// indirect tables are freed; their buffers are the caller's).
    pub fn reset(&mut self) -> Result<Vec<DroppedChain>, QueueError> {
        let mut dropped = Vec::new();
        for (head, slot) in self.in_flight.iter_mut().enumerate() {
            if let Some(f) = slot.take() {
                if let Some(table) = f.indirect {
                    self.ram.free(table)?;
                }
                dropped.push(DroppedChain {
                    // `head` < queue size <= 32768.
                    head: u16::try_from(head).unwrap_or(u16::MAX),
                    buffers: f.buffers,
                });
            }
        }
        self.ram.fill(self.ring, 0)?;
        self.reset_state();
        self.consume_call()?;
        Ok(dropped)
    }

    /// Where the rings are.
    pub fn layout(&self) -> QueueLayout {
        self.layout
    }

    /// Number of descriptors.
    pub fn size(&self) -> u16 {
        self.layout.size
    }

    /// Whether EVENT_IDX is in use.
    pub fn event_idx(&self) -> bool {
        self.event_idx
    }

    /// Switches EVENT_IDX handling (to match what was negotiated).
    pub fn set_event_idx(&mut self, on: bool) {
        self.event_idx = on;
    }

    /// The kick eventfd (the driver writes it; the backend gets it with SET_VRING_KICK).
    pub fn kick_fd(&self) -> &EventFd {
        &self.kick
    }

    /// The call eventfd (the backend writes it; it gets it with SET_VRING_CALL).
    pub fn call_fd(&self) -> &EventFd {
        &self.call
    }

    /// Counters.
    pub fn stats(&self) -> QueueStats {
        self.stats
    }

    /// Free descriptors.
    pub fn num_free(&self) -> usize {
        self.free.len()
    }

    /// Chains added and not yet returned through the used ring.
    pub fn num_in_flight(&self) -> usize {
        self.in_flight.iter().filter(|f| f.is_some()).count()
    }

    /// The driver's next available index (what the avail `idx` field holds).
    pub fn next_avail(&self) -> u16 {
        self.next_avail.0
    }

    /// The next used index the driver will read.
    pub fn last_used(&self) -> u16 {
        self.last_used.0
    }

    fn check_index(&self, index: u16) -> Result<(), QueueError> {
        if index >= self.layout.size {
            return Err(QueueError::BadIndex {
                index,
                size: self.layout.size,
            });
        }
        Ok(())
    }

    fn load_u16(&self, addr: GuestAddress, order: Ordering) -> Result<u16, QueueError> {
        self.ram
            .memory()
            .load::<u16>(addr, order)
            .map(u16::from_le)
            .map_err(|e| access(addr, e))
    }

    fn store_u16(&self, addr: GuestAddress, val: u16, order: Ordering) -> Result<(), QueueError> {
        self.ram
            .memory()
            .store(val.to_le(), addr, order)
            .map_err(|e| access(addr, e))
    }

    /// Writes `desc` at table index `index`, whatever it holds.
    pub fn write_descriptor(&mut self, index: u16, desc: RawDescriptor) -> Result<(), QueueError> {
        self.check_index(index)?;
        self.ram
            .write(self.layout.desc_addr(index), &desc.to_bytes())
            .map_err(QueueError::Memory)
    }

    /// Reads the descriptor at table index `index`.
    pub fn read_descriptor(&self, index: u16) -> Result<RawDescriptor, QueueError> {
        self.check_index(index)?;
        let mut b = [0u8; 16];
        self.ram.read(self.layout.desc_addr(index), &mut b)?;
        Ok(RawDescriptor::from_bytes(b))
    }

    /// Takes `n` free descriptors out of the free list for raw use; returns their indices.
    pub fn reserve_descriptors(&mut self, n: usize) -> Result<Vec<u16>, QueueError> {
        if n > self.free.len() {
            return Err(QueueError::Full {
                needed: n,
                free: self.free.len(),
            });
        }
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            if let Some(i) = self.free.pop() {
                self.reserved[usize::from(i)] = true;
                out.push(i);
            }
        }
        Ok(out)
    }

    /// Takes the free descriptor `index` out of the free list for raw use.
    pub fn reserve_descriptor(&mut self, index: u16) -> Result<(), QueueError> {
        self.check_index(index)?;
        let pos = self
            .free
            .iter()
            .position(|&i| i == index)
            .ok_or(QueueError::DescriptorBusy(index))?;
        self.free.remove(pos);
        self.reserved[usize::from(index)] = true;
        Ok(())
    }

    /// Gives reserved descriptors back to the free list.
    pub fn release_descriptors(&mut self, indices: &[u16]) -> Result<(), QueueError> {
        for &i in indices {
            self.check_index(i)?;
            if !self.reserved[usize::from(i)] {
                return Err(QueueError::DescriptorBusy(i));
            }
        }
        for &i in indices {
            self.reserved[usize::from(i)] = false;
            self.free.push(i);
        }
        Ok(())
    }

    fn take_descriptors(&mut self, n: usize) -> Result<Vec<u16>, QueueError> {
        if n == 0 {
            return Err(QueueError::EmptyChain);
        }
        if n > self.free.len() {
            return Err(QueueError::Full {
                needed: n,
                free: self.free.len(),
            });
        }
        let at = self.free.len() - n;
        let mut idx = self.free.split_off(at);
        idx.reverse();
        Ok(idx)
    }

    /// Writes `buffers` as a chain into the descriptor table, puts its head in the available ring
    /// and publishes the new available index. Does not kick: call [`SplitQueue::kick`].
    ///
    /// Buffers are written as given: any address, any length (zero too), write-only or not.
    pub fn add_chain(&mut self, buffers: &[Buffer]) -> Result<u16, QueueError> {
        let idx = self.take_descriptors(buffers.len())?;
        let written = self.write_chain(&idx, buffers);
        if let Err(e) = written {
            self.free.extend(idx.iter().rev());
            return Err(e);
        }
        let head = idx[0];
        self.in_flight[usize::from(head)] = Some(InFlight {
            descs: idx,
            buffers: buffers.to_vec(),
            indirect: None,
        });
        self.publish(head)?;
        self.stats.chains_added += 1;
        Ok(head)
    }

    fn write_chain(&mut self, idx: &[u16], buffers: &[Buffer]) -> Result<(), QueueError> {
        for (i, (b, &d)) in buffers.iter().zip(idx).enumerate() {
            let last = i + 1 == buffers.len();
            let mut flags = if b.write_only { DESC_F_WRITE } else { 0 };
            if !last {
                flags |= DESC_F_NEXT;
            }
            let next = if last { 0 } else { idx[i + 1] };
            self.write_descriptor(
                d,
                RawDescriptor {
                    addr: b.addr.0,
                    len: b.len,
                    flags,
                    next,
                },
            )?;
        }
        Ok(())
    }

    /// Adds `buffers` through an indirect descriptor table allocated in guest memory: one
    /// descriptor in the queue, flagged `DESC_F_INDIRECT`, points at the table. The table is freed
    /// when the chain comes back used. Only meaningful if VIRTIO_RING_F_INDIRECT_DESC was
    /// negotiated (a test may want it regardless).
    pub fn add_indirect_chain(&mut self, buffers: &[Buffer]) -> Result<u16, QueueError> {
        if buffers.is_empty() {
            return Err(QueueError::EmptyChain);
        }
        let n = buffers.len() as u64;
        let table = self.ram.alloc(DESC_SIZE * n, 16)?;
        let mut bytes = Vec::with_capacity(buffers.len() * 16);
        for (i, b) in buffers.iter().enumerate() {
            let last = i + 1 == buffers.len();
            let mut flags = if b.write_only { DESC_F_WRITE } else { 0 };
            if !last {
                flags |= DESC_F_NEXT;
            }
            let next = if last { 0 } else { (i + 1) as u16 };
            bytes.extend_from_slice(
                &RawDescriptor {
                    addr: b.addr.0,
                    len: b.len,
                    flags,
                    next,
                }
                .to_bytes(),
            );
        }
        let head = match self
            .ram
            .write(table.addr, &bytes)
            .map_err(QueueError::from)
            .and_then(|()| self.take_descriptors(1))
        {
            Ok(idx) => idx[0],
            Err(e) => {
                self.ram.free(table)?;
                return Err(e);
            }
        };
        let table_len = u32::try_from(table.len).unwrap_or(u32::MAX);
        self.write_descriptor(
            head,
            RawDescriptor {
                addr: table.addr.0,
                len: table_len,
                flags: DESC_F_INDIRECT,
                next: 0,
            },
        )?;
        self.in_flight[usize::from(head)] = Some(InFlight {
            descs: vec![head],
            buffers: buffers.to_vec(),
            indirect: Some(table),
        });
        self.publish(head)?;
        self.stats.chains_added += 1;
        Ok(head)
    }

    fn publish(&mut self, head: u16) -> Result<(), QueueError> {
        let slot = self.next_avail.0 % self.layout.size;
        self.store_u16(self.layout.avail_slot_addr(slot), head, Ordering::Relaxed)?;
        self.next_avail += Wrapping(1);
        // Release: the descriptors and the ring slot are visible before the new index.
        fence(Ordering::Release);
        self.store_u16(
            self.layout.avail_idx_addr(),
            self.next_avail.0,
            Ordering::Release,
        )
    }

    /// Puts `head` in the next available-ring slot and publishes it, whatever `head` is (an
    /// index past the table, a descriptor that is free or in flight...). The used entry for it, if
    /// any, comes back from [`SplitQueue::pop_used`] with `chain: None`.
    pub fn publish_head(&mut self, head: u16) -> Result<(), QueueError> {
        self.publish(head)?;
        self.stats.raw_heads_published += 1;
        Ok(())
    }

    /// Sets the available index to `idx` (e.g. far ahead of what was added).
    pub fn set_avail_idx(&mut self, idx: u16) -> Result<(), QueueError> {
        self.next_avail = Wrapping(idx);
        fence(Ordering::Release);
        self.store_u16(self.layout.avail_idx_addr(), idx, Ordering::Release)
    }

    /// Writes the available ring's `flags` field (e.g. [`AVAIL_F_NO_INTERRUPT`]).
    pub fn set_avail_flags(&mut self, flags: u16) -> Result<(), QueueError> {
        self.store_u16(self.layout.avail_ring, flags, Ordering::Release)
    }

    /// Writes `used_event` (EVENT_IDX: "interrupt me when the used index passes this").
    pub fn set_used_event(&mut self, idx: u16) -> Result<(), QueueError> {
        self.store_u16(self.layout.used_event_addr(), idx, Ordering::Release)
    }

    /// The device's `avail_event` field.
    pub fn avail_event(&self) -> Result<u16, QueueError> {
        self.load_u16(self.layout.avail_event_addr(), Ordering::Acquire)
    }

    /// The used ring's `flags` field.
    pub fn used_flags(&self) -> Result<u16, QueueError> {
        self.load_u16(self.layout.used_ring, Ordering::Acquire)
    }

    /// The used ring's `idx` field.
    pub fn used_idx(&self) -> Result<u16, QueueError> {
        self.load_u16(self.layout.used_idx_addr(), Ordering::Acquire)
    }

    /// Notifies the device if it wants to be notified about the chains published since the last
    /// kick: with EVENT_IDX when the available index crossed `avail_event`, otherwise unless the
    /// used ring has `VRING_USED_F_NO_NOTIFY`. Returns whether it kicked.
    pub fn kick(&mut self) -> Result<bool, QueueError> {
        let new = self.next_avail;
        let old = self.last_kick_avail;
        if new == old {
            return Ok(false);
        }
        // The new available index must be visible before the device's wishes are read.
        fence(Ordering::SeqCst);
        let needed = if self.event_idx {
            vring_need_event(self.avail_event()?, new.0, old.0)
        } else {
            self.used_flags()? & USED_F_NO_NOTIFY == 0
        };
        self.last_kick_avail = new;
        if needed {
            self.notify()?;
        } else {
            self.stats.kicks_suppressed += 1;
        }
        Ok(needed)
    }

    /// Writes the kick eventfd unconditionally.
    pub fn notify(&mut self) -> Result<(), QueueError> {
        self.kick.write(1).map_err(QueueError::EventFd)?;
        self.stats.kicks += 1;
        Ok(())
    }

    /// Whether the used ring holds entries the driver has not taken yet.
    pub fn has_used(&self) -> Result<bool, QueueError> {
        Ok(self.used_idx()? != self.last_used.0)
    }

    /// Takes the next used entry, freeing the descriptors of its chain.
    pub fn pop_used(&mut self) -> Result<Option<UsedElem>, QueueError> {
        let used_idx = self.used_idx()?;
        if used_idx == self.last_used.0 {
            return Ok(None);
        }
        // The acquire load of `idx` orders the reads of the entry after it.
        let slot = self.last_used.0 % self.layout.size;
        let mut b = [0u8; 8];
        self.ram.read(self.layout.used_elem_addr(slot), &mut b)?;
        let id = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let len = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        self.last_used += Wrapping(1);
        self.stats.used += 1;
        let flight = usize::try_from(id)
            .ok()
            .and_then(|i| self.in_flight.get_mut(i))
            .and_then(Option::take);
        let chain = match flight {
            Some(f) => {
                self.free.extend(f.descs.iter().rev());
                if let Some(table) = f.indirect {
                    self.ram.free(table)?;
                }
                Some(f.buffers)
            }
            None => {
                self.stats.unknown_used += 1;
                None
            }
        };
        Ok(Some(UsedElem { id, len, chain }))
    }

    /// Asks for an interrupt at the next used entry (EVENT_IDX: `used_event` = the next used
    /// index to read; otherwise clears `VRING_AVAIL_F_NO_INTERRUPT`), then returns whether used
    /// entries are already pending (so the caller must not sleep).
    pub fn enable_interrupts(&mut self) -> Result<bool, QueueError> {
        if self.event_idx {
            self.set_used_event(self.last_used.0)?;
        } else {
            self.set_avail_flags(0)?;
        }
        // The write above must be visible before the used index is read again.
        fence(Ordering::SeqCst);
        self.has_used()
    }

    /// Reads the call eventfd without blocking; returns whether it was signalled.
    pub fn consume_call(&mut self) -> Result<bool, QueueError> {
        match self.call.read() {
            Ok(_) => {
                self.stats.calls += 1;
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(QueueError::EventFd(e)),
        }
    }

    /// Waits up to `timeout` for the call eventfd; returns whether it was signalled (and
    /// consumes the signal).
    pub fn wait_call(&mut self, timeout: Duration) -> Result<bool, QueueError> {
        if !poll_readable(&[self.call.as_raw_fd()], timeout).map_err(QueueError::EventFd)? {
            return Ok(false);
        }
        self.consume_call()
    }
}

impl Drop for SplitQueue {
    fn drop(&mut self) {
        for f in self.in_flight.iter_mut().filter_map(Option::take) {
            if let Some(table) = f.indirect {
                let _ = self.ram.free(table);
            }
        }
        let _ = self.ram.free(self.ring);
    }
}

/// Waits until one of `fds` is readable or `timeout` passes; returns whether one is readable.
/// Interrupted waits are resumed with the time left.
pub fn poll_readable(fds: &[RawFd], timeout: Duration) -> std::io::Result<bool> {
    let deadline = Instant::now() + timeout;
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        // Round up so a sub-millisecond timeout still waits instead of spinning.
        let ms = left.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as i32;
        // SAFETY: `pfds` is a valid, initialised array of `pfds.len()` pollfd structs that lives
        // across the call; poll only writes their `revents` fields.
        let rc = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
        if rc > 0 {
            return Ok(true);
        }
        if rc == 0 {
            return Ok(false);
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Waits up to `timeout` until one of `queues` is signalled through its call eventfd, then
/// consumes every pending signal; returns whether any queue was signalled.
pub fn wait_for_calls(
    queues: &mut [&mut SplitQueue],
    timeout: Duration,
) -> Result<bool, QueueError> {
    let fds: Vec<RawFd> = queues.iter().map(|q| q.call.as_raw_fd()).collect();
    if !poll_readable(&fds, timeout).map_err(QueueError::EventFd)? {
        return Ok(false);
    }
    let mut any = false;
    for q in queues.iter_mut() {
        any |= q.consume_call()?;
    }
    Ok(any)
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::{Queue, QueueT};

    fn ram() -> GuestRam {
        GuestRam::new(1 << 20).expect("ram")
    }

    fn device(ram: &GuestRam, q: &SplitQueue) -> Queue {
        let l = q.layout();
        let mut d = Queue::new(l.size).expect("queue");
        d.set_size(l.size);
        d.try_set_desc_table_address(l.desc_table).expect("desc");
        d.try_set_avail_ring_address(l.avail_ring).expect("avail");
        d.try_set_used_ring_address(l.used_ring).expect("used");
        d.set_event_idx(q.event_idx());
        d.set_ready(true);
        assert!(d.is_valid(ram.memory()));
        d
    }

    /// Pops one chain on the device side: (head, [(addr, len, write_only)]).
    #[allow(clippy::type_complexity)]
    fn dev_pop(ram: &GuestRam, d: &mut Queue) -> Option<(u16, Vec<(u64, u32, bool)>)> {
        let chain = d.pop_descriptor_chain(ram.memory())?;
        let head = chain.head_index();
        let descs = chain
            .map(|desc| (desc.addr().0, desc.len(), desc.is_write_only()))
            .collect();
        Some((head, descs))
    }

    #[test]
    fn chain_round_trip_through_a_device_queue() {
        let ram = ram();
        let mut q = SplitQueue::new(&ram, 8, false).expect("queue");
        let mut d = device(&ram, &q);
        let bufs = [
            Buffer::readable(GuestAddress(0x8000), 44),
            Buffer::readable(GuestAddress(0x9000), 100),
            Buffer::writable(GuestAddress(0xa000), 0),
        ];
        let head = q.add_chain(&bufs).expect("add");
        assert_eq!(q.num_free(), 5);
        assert_eq!(q.next_avail(), 1);
        assert!(q.kick().expect("kick"));
        assert_eq!(q.kick_fd().read().expect("kicked"), 1);
        let (dhead, descs) = dev_pop(&ram, &mut d).expect("device sees the chain");
        assert_eq!(dhead, head);
        assert_eq!(
            descs,
            vec![(0x8000, 44, false), (0x9000, 100, false), (0xa000, 0, true)]
        );
        assert!(q.pop_used().expect("pop").is_none());
        d.add_used(ram.memory(), dhead, 7).expect("add_used");
        assert!(q.has_used().expect("has_used"));
        let used = q.pop_used().expect("pop").expect("one used");
        assert_eq!(used.id, u32::from(head));
        assert_eq!(used.len, 7);
        assert_eq!(used.chain.as_deref(), Some(&bufs[..]));
        assert_eq!(q.num_free(), 8);
        assert_eq!(q.num_in_flight(), 0);
    }

    #[test]
    fn full_queue_and_empty_chain_are_errors() {
        let ram = ram();
        let mut q = SplitQueue::new(&ram, 4, false).expect("queue");
        let b = Buffer::readable(GuestAddress(0x8000), 1);
        q.add_chain(&[b, b, b]).expect("3 of 4");
        assert!(matches!(
            q.add_chain(&[b, b]),
            Err(QueueError::Full { needed: 2, free: 1 })
        ));
        assert!(matches!(q.add_chain(&[]), Err(QueueError::EmptyChain)));
        q.add_chain(&[b]).expect("last one");
        assert!(matches!(
            SplitQueue::new(&ram, 6, false),
            Err(QueueError::InvalidSize(6))
        ));
        assert!(matches!(
            SplitQueue::new(&ram, 0, false),
            Err(QueueError::InvalidSize(0))
        ));
    }

    #[test]
    fn indices_wrap_around_u16() {
        let ram = ram();
        let mut q = SplitQueue::new(&ram, 4, true).expect("queue");
        let mut d = device(&ram, &q);
        for i in 0..70_000u32 {
            let len = i % 1000;
            let head = q
                .add_chain(&[Buffer::writable(GuestAddress(0x8000), len)])
                .expect("add");
            let (dh, _) = dev_pop(&ram, &mut d).expect("pop");
            assert_eq!(dh, head);
            d.add_used(ram.memory(), dh, len).expect("used");
            let u = q.pop_used().expect("pop used").expect("entry");
            assert_eq!((u.id, u.len), (u32::from(head), len));
        }
        assert_eq!(q.next_avail(), (70_000u32 % 65_536) as u16);
        assert_eq!(q.last_used(), q.next_avail());
        assert_eq!(q.num_free(), 4);
    }

    #[test]
    fn event_idx_kick_suppression_follows_avail_event() {
        let ram = ram();
        let mut q = SplitQueue::new(&ram, 8, true).expect("queue");
        let mut d = device(&ram, &q);
        let b = [Buffer::writable(GuestAddress(0x8000), 64)];
        // The device asks for a kick at avail index 0 -> the first chain kicks.
        assert!(!d.enable_notification(ram.memory()).expect("enable"));
        assert_eq!(q.avail_event().expect("avail_event"), 0);
        q.add_chain(&b).expect("add");
        assert!(q.kick().expect("kick"));
        // The device has not caught up: the second chain does not cross avail_event.
        q.add_chain(&b).expect("add");
        assert!(!q.kick().expect("kick"));
        assert_eq!(q.stats().kicks, 1);
        assert_eq!(q.stats().kicks_suppressed, 1);
        // The device drains and re-arms at 2: the third chain kicks again.
        assert!(dev_pop(&ram, &mut d).is_some());
        assert!(dev_pop(&ram, &mut d).is_some());
        assert!(!d.enable_notification(ram.memory()).expect("enable"));
        assert_eq!(q.avail_event().expect("avail_event"), 2);
        q.add_chain(&b).expect("add");
        assert!(q.kick().expect("kick"));
        // Nothing new: no kick at all.
        assert!(!q.kick().expect("kick"));
        assert_eq!(q.kick_fd().read().expect("kicks"), 2);
    }

    #[test]
    fn no_notify_flag_suppresses_kicks_without_event_idx() {
        let ram = ram();
        let mut q = SplitQueue::new(&ram, 8, false).expect("queue");
        let mut d = device(&ram, &q);
        let b = [Buffer::readable(GuestAddress(0x8000), 64)];
        d.disable_notification(ram.memory()).expect("disable");
        q.add_chain(&b).expect("add");
        assert!(!q.kick().expect("kick"));
        d.enable_notification(ram.memory()).expect("enable");
        q.add_chain(&b).expect("add");
        assert!(q.kick().expect("kick"));
        assert_eq!(q.stats().kicks, 1);
    }

    #[test]
    fn used_event_controls_device_interrupts() {
        let ram = ram();
        let mut q = SplitQueue::new(&ram, 8, true).expect("queue");
        let mut d = device(&ram, &q);
        let b = [Buffer::writable(GuestAddress(0x8000), 64)];
        for _ in 0..3 {
            q.add_chain(&b).expect("add");
        }
        assert!(!q.enable_interrupts().expect("arm"));
        for _ in 0..3 {
            let (h, _) = dev_pop(&ram, &mut d).expect("pop");
            d.add_used(ram.memory(), h, 1).expect("used");
        }
        // used_event = 0: the device interrupts once for the batch that crossed it...
        assert!(d.needs_notification(ram.memory()).expect("needs"));
        // ...and, with the driver not re-arming, not for the next one.
        q.add_chain(&b).expect("add");
        let (h, _) = dev_pop(&ram, &mut d).expect("pop");
        d.add_used(ram.memory(), h, 1).expect("used");
        assert!(!d.needs_notification(ram.memory()).expect("needs"));
        // Draining and re-arming reports nothing pending and asks for the next entry.
        while q.pop_used().expect("pop").is_some() {}
        assert!(!q.enable_interrupts().expect("arm"));
        q.add_chain(&b).expect("add");
        let (h, _) = dev_pop(&ram, &mut d).expect("pop");
        d.add_used(ram.memory(), h, 1).expect("used");
        assert!(d.needs_notification(ram.memory()).expect("needs"));
        // Re-arming with an entry pending says so (no lost wakeup).
        assert!(q.enable_interrupts().expect("arm"));
    }

    #[test]
    fn hostile_descriptor_loop_and_raw_heads() {
        let ram = ram();
        let mut q = SplitQueue::new(&ram, 8, false).expect("queue");
        let mut d = device(&ram, &q);
        let idx = q.reserve_descriptors(2).expect("reserve");
        let (a, b) = (idx[0], idx[1]);
        let da = RawDescriptor {
            addr: 0x8000,
            len: 10,
            flags: DESC_F_NEXT,
            next: b,
        };
        let db = RawDescriptor {
            addr: 0x9000,
            len: 10,
            flags: DESC_F_NEXT,
            next: a,
        };
        q.write_descriptor(a, da).expect("write a");
        q.write_descriptor(b, db).expect("write b");
        assert_eq!(q.read_descriptor(a).expect("read"), da);
        q.publish_head(a).expect("publish");
        assert_eq!(q.num_free(), 6);
        // A normal chain does not reuse the reserved descriptors.
        let h = q
            .add_chain(&[Buffer::readable(GuestAddress(0x1000), 1)])
            .expect("normal");
        assert!(h != a && h != b);
        // The device walks the loop and gives up after at most `size` descriptors.
        let (head, descs) = dev_pop(&ram, &mut d).expect("device pops the looped chain");
        assert_eq!(head, a);
        assert!(descs.len() <= 8);
        d.add_used(ram.memory(), head, 0).expect("used");
        let u = q.pop_used().expect("pop").expect("entry");
        assert_eq!(u.id, u32::from(a));
        assert_eq!(u.chain, None);
        assert_eq!(q.stats().unknown_used, 1);
        q.release_descriptors(&idx).expect("release");
        assert!(q.release_descriptors(&idx).is_err());
        assert!(q.write_descriptor(8, da).is_err());
        // Jumping the available index ahead is visible to the device.
        q.set_avail_idx(q.next_avail().wrapping_add(100))
            .expect("jump");
        assert_eq!(
            d.avail_idx(ram.memory(), Ordering::Acquire)
                .expect("avail")
                .0,
            q.next_avail()
        );
    }

    #[test]
    fn indirect_chain_is_followed_and_its_table_freed() {
        let ram = ram();
        let mut q = SplitQueue::new(&ram, 8, false).expect("queue");
        let mut d = device(&ram, &q);
        let before = ram.allocated_bytes();
        let bufs = [
            Buffer::readable(GuestAddress(0x8000), 44),
            Buffer::readable(GuestAddress(0x9000), 10),
            Buffer::readable(GuestAddress(0xa000), 20),
        ];
        let head = q.add_indirect_chain(&bufs).expect("indirect");
        assert_eq!(q.num_free(), 7);
        assert_eq!(ram.allocated_bytes(), before + 48);
        assert_eq!(
            q.read_descriptor(head).expect("desc").flags,
            DESC_F_INDIRECT
        );
        let (dh, descs) = dev_pop(&ram, &mut d).expect("pop");
        assert_eq!(dh, head);
        assert_eq!(
            descs,
            vec![
                (0x8000, 44, false),
                (0x9000, 10, false),
                (0xa000, 20, false)
            ]
        );
        d.add_used(ram.memory(), dh, 0).expect("used");
        let u = q.pop_used().expect("pop").expect("entry");
        assert_eq!(u.chain.as_deref(), Some(&bufs[..]));
        assert_eq!(ram.allocated_bytes(), before);
    }

    #[test]
    fn wait_call_times_out_and_wakes() {
        let ram = ram();
        let mut q = SplitQueue::new(&ram, 8, false).expect("queue");
        let t = Instant::now();
        assert!(!q.wait_call(Duration::from_millis(30)).expect("wait"));
        assert!(t.elapsed() >= Duration::from_millis(30));
        q.call_fd().write(1).expect("signal");
        assert!(q.wait_call(Duration::from_secs(5)).expect("wait"));
        assert_eq!(q.stats().calls, 1);
        // Consumed: the next wait times out again.
        assert!(!q.wait_call(Duration::from_millis(1)).expect("wait"));
        let mut q2 = SplitQueue::new(&ram, 8, false).expect("queue");
        q2.call_fd().write(1).expect("signal");
        assert!(wait_for_calls(&mut [&mut q, &mut q2], Duration::from_secs(5)).expect("wait"));
        assert_eq!(q2.stats().calls, 1);
    }

    #[test]
    fn reset_zeroes_the_rings_and_frees_everything() {
        let ram = ram();
        let mut q = SplitQueue::new(&ram, 8, true).expect("queue");
        let b = Buffer::writable(GuestAddress(0x8000), 64);
        let h1 = q.add_chain(&[b, b]).expect("add");
        q.add_indirect_chain(&[b]).expect("add");
        q.set_used_event(5).expect("used_event");
        let allocated = ram.allocated_bytes();
        let dropped = q.reset().expect("reset");
        assert_eq!(dropped.len(), 2);
        assert!(dropped
            .iter()
            .any(|c| c.head == h1 && c.buffers == vec![b, b]));
        assert_eq!(ram.allocated_bytes(), allocated - 16);
        assert_eq!(q.num_free(), 8);
        assert_eq!(q.next_avail(), 0);
        let mut ring = vec![0u8; q.layout().total_len() as usize];
        ram.read(q.layout().desc_table, &mut ring).expect("read");
        assert!(ring.iter().all(|&x| x == 0));
        let ring_bytes = ram.allocated_bytes();
        drop(q);
        assert!(ram.allocated_bytes() < ring_bytes);
        assert_eq!(ram.allocated_bytes(), 0);
    }

    #[test]
    fn need_event_matches_the_spec_formula() {
        assert!(vring_need_event(0, 1, 0));
        assert!(!vring_need_event(0, 2, 1));
        assert!(vring_need_event(5, 10, 0));
        assert!(!vring_need_event(10, 10, 0));
        assert!(vring_need_event(u16::MAX, 0, u16::MAX));
    }
}
