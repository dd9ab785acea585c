//! Credit accounting for one direction of a stream (virtio 1.2 §5.10.6.3, SPEC.md §5): the
//! host endpoints' connections and the switch's VM-to-VM connections both count with
//! [`room`], the one credit formula of the daemon.
//!
//! All counters are `u32` and wrap, as on the wire.

/// The credit formula: bytes a receiver that granted `buf_alloc` bytes of buffer can still
/// take, when `sent` bytes went to it and it has consumed `fwd_cnt` of them. `None` when more
/// than `buf_alloc` is already in flight (the receiver shrank its buffer since).
pub fn room(buf_alloc: u32, sent: u32, fwd_cnt: u32) -> Option<u32> {
    buf_alloc.checked_sub(sent.wrapping_sub(fwd_cnt))
}

/// What the device knows about a receiver's buffer (a guest's, for data sent to it): for a
/// host connection, the guest's; for a VM-to-VM connection, each side's.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PeerCredit {
    /// The receiver's `buf_alloc`, from its latest packet.
    pub buf_alloc: u32,
    /// The receiver's `fwd_cnt`, from its latest packet.
    pub fwd_cnt: u32,
    /// Payload bytes sent (or let through) to the receiver.
    pub tx_cnt: u32,
}

impl PeerCredit {
    /// Takes the credit fields of a packet the guest sent.
    pub fn update(&mut self, buf_alloc: u32, fwd_cnt: u32) {
        self.buf_alloc = buf_alloc;
        self.fwd_cnt = fwd_cnt;
    }

    /// Bytes the device may still send without overrunning the receiver.
    pub fn available(&self) -> u32 {
        room(self.buf_alloc, self.tx_cnt, self.fwd_cnt).unwrap_or(0)
    }

    /// Whether `len` more bytes fit in what the receiver granted.
    pub fn admits(&self, len: u32) -> bool {
        room(self.buf_alloc, self.tx_cnt, self.fwd_cnt).is_some_and(|r| len <= r)
    }

    /// Records `n` bytes sent.
    pub fn consume(&mut self, n: u32) {
        self.tx_cnt = self.tx_cnt.wrapping_add(n);
    }
}

/// The device's own receive buffer for data from the guest, on behalf of a host program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalCredit {
    /// The `buf_alloc` the device advertises.
    pub buf_alloc: u32,
    /// Bytes taken from the guest.
    pub rx_cnt: u32,
    /// Bytes handed on to the host program (`fwd_cnt` on the wire).
    pub fwd_cnt: u32,
    /// The `fwd_cnt` the guest was last told.
    pub fwd_cnt_sent: u32,
}

impl LocalCredit {
    /// A buffer of `buf_alloc` bytes, empty.
    pub fn new(buf_alloc: u32) -> Self {
        LocalCredit {
            buf_alloc,
            rx_cnt: 0,
            fwd_cnt: 0,
            fwd_cnt_sent: 0,
        }
    }

    /// Whether accepting `n` more bytes stays within what the device granted.
    pub fn admits(&self, n: u32) -> bool {
        room(self.buf_alloc, self.rx_cnt, self.fwd_cnt).is_some_and(|r| n <= r)
    }

    /// Records `n` bytes taken from the guest.
    pub fn received(&mut self, n: u32) {
        self.rx_cnt = self.rx_cnt.wrapping_add(n);
    }

    /// Records `n` bytes handed to the host program.
    pub fn forwarded(&mut self, n: u32) {
        self.fwd_cnt = self.fwd_cnt.wrapping_add(n);
    }

    /// Whether the guest should be told about freed space now: a quarter of the buffer has been
    /// freed since it last heard.
    pub fn update_due(&self) -> bool {
        self.fwd_cnt.wrapping_sub(self.fwd_cnt_sent) >= self.buf_alloc / 4
    }

    /// Notes that a packet carrying the current `fwd_cnt` went out.
    pub fn mark_sent(&mut self) {
        self.fwd_cnt_sent = self.fwd_cnt;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_credit_limits_in_flight_bytes_and_wraps() {
        let mut c = PeerCredit::default();
        assert_eq!(
            c.available(),
            0,
            "no credit before the guest says buf_alloc"
        );
        c.update(1000, 0);
        c.consume(600);
        assert_eq!(c.available(), 400);
        c.update(1000, 500);
        assert_eq!(c.available(), 900);
        // Across the u32 wrap.
        let mut w = PeerCredit {
            buf_alloc: 100,
            fwd_cnt: u32::MAX - 10,
            tx_cnt: u32::MAX - 10,
        };
        w.consume(50);
        assert_eq!(w.available(), 50);
    }

    #[test]
    fn peer_credit_admits_what_is_available_and_nothing_once_overrun() {
        let mut c = PeerCredit::default();
        c.update(1000, 0);
        assert!(c.admits(1000));
        assert!(!c.admits(1001));
        c.consume(1000);
        assert!(c.admits(0));
        // The receiver shrank its buffer below what is in flight: not even an empty packet.
        c.update(500, 0);
        assert_eq!(c.available(), 0);
        assert!(!c.admits(0));
        assert_eq!(room(500, 1000, 0), None);
        assert_eq!(room(100, 5, u32::MAX - 4), Some(90), "across the u32 wrap");
    }

    #[test]
    fn local_credit_admits_up_to_buf_alloc_and_schedules_updates() {
        let mut c = LocalCredit::new(1000);
        assert!(c.admits(1000));
        assert!(!c.admits(1001));
        c.received(700);
        assert!(!c.admits(301));
        assert!(c.admits(300));
        c.forwarded(200);
        assert!(!c.update_due());
        c.forwarded(100);
        assert!(c.update_due());
        c.mark_sent();
        assert!(!c.update_due());
        assert!(c.admits(600));
    }
}
