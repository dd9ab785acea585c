//! One direction of one connection (SPEC.md §13.3): [`RingTx`] where this side produces,
//! [`RingRx`] where it consumes.
//!
//! Each keeps the index it writes in private memory (the wire crate's `Producer` /
//! `Consumer`) and checks every index it reads from the window: a value that puts more than
//! `ring_size` bytes in flight is a [`RingError`] (a broken ring; the connection is over).
//! Ordering: bytes, then `head` with release; `head` with acquire, bytes, then `tail` with
//! release; `tail` with acquire before space is reused. Sleeping flags are stored, then a
//! sequentially consistent fence, then the other side's index is loaded again.
//!
//! Zero lengths: [`RingTx::write`] and [`RingRx::read`] with an empty buffer still read and
//! check the other side's index (so they report a broken ring) and return 0 without touching
//! the ring. With a non-empty buffer, 0 means "full" (write) or "empty or at end" (read; see
//! [`RingRx::at_end`]).

use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use sockbypass_wire::fastpath::layout::{ring_control, RING_SIZE};
pub use sockbypass_wire::fastpath::ring::RingError;
use sockbypass_wire::fastpath::ring::{in_flight, Consumer, Producer};

use crate::window::Window;

/// The slot or ring number does not exist in the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("slot {slot} ring {ring} is not in the window ({slots} slots, rings 0 and 1)")]
pub struct NoSuchRing {
    /// The slot asked for.
    pub slot: u32,
    /// The ring asked for.
    pub ring: u8,
    /// Slots in the window.
    pub slots: u32,
}

/// A piece of at most `RING_SIZE` bytes as a length.
fn piece_len(piece: &std::ops::Range<u64>) -> usize {
    // RING_SIZE (64 KiB) fits any usize this library builds for.
    usize::try_from(piece.end - piece.start).unwrap_or(0)
}

/// Where one ring is in its window: its control and data offsets, from the geometry.
#[derive(Debug, Clone)]
struct RingRef {
    win: Arc<Window>,
    control: u64,
    data: u64,
}

impl RingRef {
    fn new(win: Arc<Window>, slot: u32, ring: u8) -> Result<RingRef, NoSuchRing> {
        let g = win.geometry();
        let err = NoSuchRing {
            slot,
            ring,
            slots: g.slots(),
        };
        let control = g.ring_control(slot, ring).ok_or(err)?;
        let data = g.ring_data(slot, ring).ok_or(err)?;
        // Every field resolves (inside the mapping, aligned) and the data area fits: the
        // accessors below rely on it.
        let fields_ok = [ring_control::HEAD, ring_control::TAIL]
            .iter()
            .all(|f| win.u64_at(control + f).is_some())
            && [
                ring_control::CLOSED,
                ring_control::PRODUCER_SLEEPING,
                ring_control::CONSUMER_SLEEPING,
                ring_control::GENERATION,
            ]
            .iter()
            .all(|f| win.u32_at(control + f).is_some())
            && data + RING_SIZE <= g.size();
        if !fields_ok {
            return Err(err);
        }
        Ok(RingRef { win, control, data })
    }

    fn u64_field(&self, field: u64) -> &AtomicU64 {
        match self.win.u64_at(self.control + field) {
            Some(a) => a,
            // Checked in `RingRef::new`; the mapping does not change.
            None => unreachable!("ring control field {field} outside the window"),
        }
    }

    fn u32_field(&self, field: u64) -> &AtomicU32 {
        match self.win.u32_at(self.control + field) {
            Some(a) => a,
            None => unreachable!("ring control field {field} outside the window"),
        }
    }

    fn head(&self) -> &AtomicU64 {
        self.u64_field(ring_control::HEAD)
    }
    fn tail(&self) -> &AtomicU64 {
        self.u64_field(ring_control::TAIL)
    }
    fn closed(&self) -> &AtomicU32 {
        self.u32_field(ring_control::CLOSED)
    }
    fn producer_sleeping(&self) -> &AtomicU32 {
        self.u32_field(ring_control::PRODUCER_SLEEPING)
    }
    fn consumer_sleeping(&self) -> &AtomicU32 {
        self.u32_field(ring_control::CONSUMER_SLEEPING)
    }
    fn generation(&self) -> u32 {
        self.u32_field(ring_control::GENERATION)
            .load(Ordering::Acquire)
    }
}

/// The ring this side produces into.
#[derive(Debug)]
pub struct RingTx {
    r: RingRef,
    p: Producer,
}

impl RingTx {
    /// Ring `ring` of slot `slot` of `win`, fresh (`head` 0): this side produces.
    pub fn new(win: Arc<Window>, slot: u32, ring: u8) -> Result<RingTx, NoSuchRing> {
        Ok(RingTx {
            r: RingRef::new(win, slot, ring)?,
            p: Producer::new(RING_SIZE),
        })
    }

    /// Free space now (checks the consumer's `tail`).
    pub fn space(&self) -> Result<u64, RingError> {
        self.p.space(self.r.tail().load(Ordering::Acquire))
    }

    /// Writes at most the free space of `buf`; returns the bytes written (0: full, or `buf`
    /// empty).
    pub fn write(&mut self, buf: &[u8]) -> Result<usize, RingError> {
        let space = self.space()?;
        let n = usize::try_from(space).unwrap_or(usize::MAX).min(buf.len());
        if n == 0 {
            return Ok(0);
        }
        let mut done = 0usize;
        for piece in self.p.write_at(n as u64) {
            let len = piece_len(&piece);
            if len == 0 {
                continue;
            }
            let copied = self
                .r
                .win
                .copy_in(self.r.data + piece.start, &buf[done..done + len]);
            debug_assert!(copied, "ring data outside the window");
            done += len;
        }
        self.p.advance(n as u64);
        self.r.head().store(self.p.head(), Ordering::Release);
        Ok(n)
    }

    /// This side's `head` (private copy).
    pub fn head(&self) -> u64 {
        self.p.head()
    }

    /// The consumer's `tail` as the window has it now, checked.
    pub fn peer_tail(&self) -> Result<u64, RingError> {
        let tail = self.r.tail().load(Ordering::Acquire);
        in_flight(self.p.head(), tail, RING_SIZE)?;
        Ok(tail)
    }

    /// Sets `closed`: end of stream, after the last `head` store. Idempotent.
    pub fn close(&self) {
        self.r.closed().store(1, Ordering::Release);
    }

    /// Whether this side set `closed`.
    pub fn is_closed(&self) -> bool {
        self.r.closed().load(Ordering::Relaxed) != 0
    }

    /// Stores `producer_sleeping`. Setting it is followed by a sequentially consistent fence
    /// and returns the space seen after it (0: really full, block).
    pub fn set_sleeping(&self, on: bool) -> Result<u64, RingError> {
        self.r
            .producer_sleeping()
            .store(u32::from(on), Ordering::SeqCst);
        if !on {
            return Ok(0);
        }
        fence(Ordering::SeqCst);
        self.space()
    }

    /// After publishing: a sequentially consistent fence, then whether the consumer sleeps
    /// (`consumer_sleeping` not 0).
    pub fn consumer_sleeping(&self) -> bool {
        fence(Ordering::SeqCst);
        self.r.consumer_sleeping().load(Ordering::Acquire) != 0
    }

    /// The slot's `generation` (the connection id the host wrote).
    pub fn generation(&self) -> u32 {
        self.r.generation()
    }
}

/// The ring this side consumes from.
#[derive(Debug)]
pub struct RingRx {
    r: RingRef,
    c: Consumer,
}

impl RingRx {
    /// Ring `ring` of slot `slot` of `win`, fresh (`tail` 0): this side consumes.
    pub fn new(win: Arc<Window>, slot: u32, ring: u8) -> Result<RingRx, NoSuchRing> {
        Ok(RingRx {
            r: RingRef::new(win, slot, ring)?,
            c: Consumer::new(RING_SIZE),
        })
    }

    /// Bytes readable now (checks the producer's `head`).
    pub fn readable(&self) -> Result<u64, RingError> {
        self.c.available(self.r.head().load(Ordering::Acquire))
    }

    /// Reads at most the readable bytes into `buf`; returns the bytes read (0: empty, at
    /// end, or `buf` empty).
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize, RingError> {
        let avail = self.readable()?;
        let n = usize::try_from(avail).unwrap_or(usize::MAX).min(buf.len());
        if n == 0 {
            return Ok(0);
        }
        let mut done = 0usize;
        for piece in self.c.read_at(n as u64) {
            let len = piece_len(&piece);
            if len == 0 {
                continue;
            }
            let copied = self
                .r
                .win
                .copy_out(self.r.data + piece.start, &mut buf[done..done + len]);
            debug_assert!(copied, "ring data outside the window");
            done += len;
        }
        self.c.advance(n as u64);
        self.r.tail().store(self.c.tail(), Ordering::Release);
        Ok(n)
    }

    /// End of stream: the producer set `closed` and everything up to `head` is consumed.
    /// (`closed` is loaded before `head`, so bytes written before it are never missed.)
    pub fn at_end(&self) -> Result<bool, RingError> {
        let closed = self.r.closed().load(Ordering::Acquire) != 0;
        let readable = self.readable()?;
        Ok(closed && readable == 0)
    }

    /// This side's `tail` (private copy).
    pub fn tail(&self) -> u64 {
        self.c.tail()
    }

    /// The producer's `head` as the window has it now, checked.
    pub fn peer_head(&self) -> Result<u64, RingError> {
        let head = self.r.head().load(Ordering::Acquire);
        self.c.available(head)?;
        Ok(head)
    }

    /// Stores `consumer_sleeping`. Setting it is followed by a sequentially consistent fence
    /// and returns whether there is something to read after it (data or end of stream;
    /// false: block).
    pub fn set_sleeping(&self, on: bool) -> Result<bool, RingError> {
        self.r
            .consumer_sleeping()
            .store(u32::from(on), Ordering::SeqCst);
        if !on {
            return Ok(false);
        }
        fence(Ordering::SeqCst);
        Ok(self.readable()? > 0 || self.at_end()?)
    }

    /// After freeing space: a sequentially consistent fence, then whether the producer sleeps
    /// (`producer_sleeping` not 0).
    pub fn producer_sleeping(&self) -> bool {
        fence(Ordering::SeqCst);
        self.r.producer_sleeping().load(Ordering::Acquire) != 0
    }

    /// The slot's `generation` (the connection id the host wrote).
    pub fn generation(&self) -> u32 {
        self.r.generation()
    }
}
