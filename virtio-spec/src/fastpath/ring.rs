//! Ring index arithmetic (SPEC.md §13.3). A ring carries a byte stream: `head` counts the bytes
//! the producer wrote, `tail` the bytes the consumer took, both since the connection started,
//! with wrapping 64-bit arithmetic; byte `n` is at `n mod ring_size` of the data area. Each side
//! keeps the index it writes in private memory ([`Producer`], [`Consumer`]) and checks every
//! index it reads from the window: a value that would put more than `ring_size` bytes in flight
//! is a broken ring, whoever wrote it.

use std::ops::Range;

/// An index read from the window does not fit the index kept in private memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("broken ring: head {head}, tail {tail} put more than {ring_size} bytes in flight")]
pub struct RingError {
    /// The producer's index (read or private).
    pub head: u64,
    /// The consumer's index (read or private).
    pub tail: u64,
    /// The ring's data size.
    pub ring_size: u64,
}

/// Bytes in flight between `tail` and `head`, checked against `ring_size`.
pub fn in_flight(head: u64, tail: u64, ring_size: u64) -> Result<u64, RingError> {
    let n = head.wrapping_sub(tail);
    if n > ring_size {
        return Err(RingError {
            head,
            tail,
            ring_size,
        });
    }
    Ok(n)
}

/// Where `len` bytes starting at stream position `pos` are in a data area of `ring_size`
/// bytes (a power of two): one range, or two when they wrap. `len` is at most `ring_size`.
pub fn pieces(pos: u64, len: u64, ring_size: u64) -> [Range<u64>; 2] {
    debug_assert!(ring_size.is_power_of_two() && len <= ring_size);
    let len = len.min(ring_size);
    let start = pos & (ring_size - 1);
    let first = len.min(ring_size - start);
    [start..start + first, 0..len - first]
}

/// The producer's side of a ring: its `head`, kept in private memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Producer {
    head: u64,
    ring_size: u64,
}

impl Producer {
    /// A producer of a fresh ring (`head` 0) of `ring_size` bytes (a power of two).
    pub fn new(ring_size: u64) -> Producer {
        Producer { head: 0, ring_size }
    }

    /// The `head` to publish.
    pub fn head(&self) -> u64 {
        self.head
    }

    /// Free space, given the `tail` read from the window.
    pub fn space(&self, tail: u64) -> Result<u64, RingError> {
        Ok(self.ring_size - in_flight(self.head, tail, self.ring_size)?)
    }

    /// Where the next `len` bytes go (`len` no more than [`Producer::space`]).
    pub fn write_at(&self, len: u64) -> [Range<u64>; 2] {
        pieces(self.head, len, self.ring_size)
    }

    /// Counts `len` bytes written; publish [`Producer::head`] after this.
    pub fn advance(&mut self, len: u64) {
        self.head = self.head.wrapping_add(len);
    }
}

/// The consumer's side of a ring: its `tail`, kept in private memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Consumer {
    tail: u64,
    ring_size: u64,
}

impl Consumer {
    /// A consumer of a fresh ring (`tail` 0) of `ring_size` bytes (a power of two).
    pub fn new(ring_size: u64) -> Consumer {
        Consumer { tail: 0, ring_size }
    }

    /// The `tail` to publish.
    pub fn tail(&self) -> u64 {
        self.tail
    }

    /// Bytes readable, given the `head` read from the window.
    pub fn available(&self, head: u64) -> Result<u64, RingError> {
        in_flight(head, self.tail, self.ring_size)
    }

    /// Where the next `len` bytes are (`len` no more than [`Consumer::available`]).
    pub fn read_at(&self, len: u64) -> [Range<u64>; 2] {
        pieces(self.tail, len, self.ring_size)
    }

    /// Counts `len` bytes consumed; publish [`Consumer::tail`] after this.
    pub fn advance(&mut self, len: u64) {
        self.tail = self.tail.wrapping_add(len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIZE: u64 = 4096;

    fn range(r: &Range<u64>) -> Range<usize> {
        r.start as usize..r.end as usize
    }

    #[test]
    fn a_stream_crosses_the_ring_many_times_intact() {
        // A producer and a consumer in lockstep over a simulated data area, with chunk sizes
        // that do not divide the ring, starting near the 64-bit wrap.
        let mut data = vec![0u8; SIZE as usize];
        let start = u64::MAX - 10_000;
        let mut p = Producer {
            head: start,
            ring_size: SIZE,
        };
        let mut c = Consumer {
            tail: start,
            ring_size: SIZE,
        };
        let (mut sent, mut got) = (0u64, Vec::new());
        for round in 0..2_000u64 {
            let want = (round * 997) % (SIZE + 1);
            let n = want.min(p.space(c.tail()).expect("tail in range"));
            for r in p.write_at(n) {
                for slot in &mut data[range(&r)] {
                    *slot = (sent % 251) as u8;
                    sent += 1;
                }
            }
            p.advance(n);
            let m = c
                .available(p.head())
                .expect("head in range")
                .min(round % 3000);
            for r in c.read_at(m) {
                got.extend_from_slice(&data[range(&r)]);
            }
            c.advance(m);
        }
        assert!(got.len() > 1_000_000, "{}", got.len());
        assert!(got.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8));
    }

    #[test]
    fn indices_that_put_too_much_in_flight_are_refused() {
        let mut p = Producer::new(SIZE);
        p.advance(100);
        // A tail ahead of the head, or one so far behind that more than the ring is in flight.
        assert!(p.space(101).is_err());
        assert!(p.space(100u64.wrapping_sub(SIZE + 1)).is_err());
        // A tail of -1 (2^64 - 1) is 101 bytes behind a head of 100: in range.
        assert_eq!(p.space(u64::MAX), Ok(SIZE - 101));
        assert_eq!(p.space(100), Ok(SIZE));
        assert_eq!(p.space(0), Ok(SIZE - 100));
        let c = Consumer::new(SIZE);
        assert_eq!(c.available(SIZE), Ok(SIZE));
        assert_eq!(
            c.available(SIZE + 1),
            Err(RingError {
                head: SIZE + 1,
                tail: 0,
                ring_size: SIZE
            })
        );
        // A head behind the tail (wraps to a huge count).
        assert!(c.available(u64::MAX).is_err());
    }

    #[test]
    fn pieces_split_where_the_ring_wraps() {
        assert_eq!(pieces(10, 20, SIZE), [10..30, 0..0]);
        assert_eq!(pieces(SIZE - 5, 20, SIZE), [SIZE - 5..SIZE, 0..15]);
        assert_eq!(pieces(SIZE, SIZE, SIZE), [0..SIZE, 0..0]);
        assert_eq!(pieces(u64::MAX, 2, SIZE), [SIZE - 1..SIZE, 0..1]);
    }
}
