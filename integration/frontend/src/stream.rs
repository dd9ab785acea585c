//! One guest-side stream: its state machine and its credit accounting (virtio 1.2 §5.10.6.3).
//!
//! Credit, from the sender's side: it may have at most
//! `peer_buf_alloc - (tx_cnt - peer_fwd_cnt)` bytes in flight, where `tx_cnt` counts payload
//! bytes it sent and `peer_buf_alloc` / `peer_fwd_cnt` come from the last header the peer sent.
//! From the receiver's side: every header it sends carries its `buf_alloc` and `fwd_cnt` (payload
//! bytes the application consumed). All counters wrap at 2^32, as on the wire.

use std::collections::VecDeque;
use std::fmt;

use sockbypass_wire::{Op, PacketHeader};

/// Identifies a stream of one driver.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId(pub(crate) u64);

impl StreamId {
    /// The raw number (unique per driver, never reused).
    pub fn raw(self) -> u64 {
        self.0
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// Where a stream is in its life.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum StreamState {
    /// REQUEST sent, waiting for RESPONSE or RST.
    Connecting,
    /// Established.
    Connected,
    /// Established, and the peer sent SHUTDOWN with these flags (accumulated).
    PeerShutdown(u32),
    /// [`crate::VsockDriver::close`] sent SHUTDOWN (both directions); waiting for the peer's RST.
    Closing,
    /// The peer sent RST (a refused connection, a reset, or a transport reset).
    Reset,
    /// Closed on this side: RST sent, or the peer's RST ended a close.
    Closed,
}

impl StreamState {
    /// Whether the stream is over (no more packets will be accepted for it).
    pub fn is_terminal(self) -> bool {
        matches!(self, StreamState::Reset | StreamState::Closed)
    }

    /// Whether the stream is established (connected, maybe half shut down, maybe closing).
    pub fn is_established(self) -> bool {
        matches!(
            self,
            StreamState::Connected | StreamState::PeerShutdown(_) | StreamState::Closing
        )
    }
}

/// Per-stream counters.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamCounters {
    /// Payload bytes sent (RW).
    pub bytes_sent: u64,
    /// Payload bytes received (RW).
    pub bytes_received: u64,
    /// RW packets sent.
    pub packets_sent: u64,
    /// RW packets received.
    pub packets_received: u64,
    /// Largest RW payload received in one packet.
    pub max_packet_received: u32,
    /// CREDIT_UPDATE packets sent.
    pub credit_updates_sent: u64,
    /// CREDIT_UPDATE packets received.
    pub credit_updates_received: u64,
    /// CREDIT_REQUEST packets sent.
    pub credit_requests_sent: u64,
    /// CREDIT_REQUEST packets received.
    pub credit_requests_received: u64,
    /// RW packets that took the peer past the credit this side had announced.
    pub credit_violations: u64,
    /// RW payload bytes received after this side shut down receiving (dropped).
    pub bytes_after_shutdown: u64,
    /// Packets with an op that makes no sense in the stream's state (ignored).
    pub unexpected_packets: u64,
}

/// A snapshot of one stream.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct StreamInfo {
    /// The stream.
    pub id: StreamId,
    /// This side's port.
    pub local_port: u32,
    /// The peer's CID.
    pub peer_cid: u64,
    /// The peer's port.
    pub peer_port: u32,
    /// State.
    pub state: StreamState,
    /// SHUTDOWN flags this side sent.
    pub local_shutdown: u32,
    /// SHUTDOWN flags the peer sent.
    pub peer_shutdown: u32,
    /// The receive buffer size this side advertises.
    pub buf_alloc: u32,
    /// Payload bytes the application consumed.
    pub fwd_cnt: u32,
    /// Payload bytes received.
    pub rx_cnt: u32,
    /// Received bytes not yet consumed.
    pub rx_buffered: usize,
    /// Payload bytes sent.
    pub tx_cnt: u32,
    /// The peer's advertised buffer size.
    pub peer_buf_alloc: u32,
    /// The peer's consumed count.
    pub peer_fwd_cnt: u32,
    /// Bytes this side may send now.
    pub credit: u32,
    /// Counters.
    pub counters: StreamCounters,
}

/// The driver's record of one stream.
#[derive(Debug)]
pub(crate) struct Stream {
    pub id: StreamId,
    pub local_port: u32,
    pub peer_cid: u64,
    pub peer_port: u32,
    pub state: StreamState,
    pub local_shutdown: u32,
    pub peer_shutdown: u32,
    pub buf_alloc: u32,
    /// Largest `buf_alloc` ever advertised: the peer may still act on it.
    buf_alloc_max: u32,
    pub fwd_cnt: u32,
    pub last_fwd_cnt_sent: u32,
    pub rx_cnt: u32,
    pub rx: VecDeque<u8>,
    pub tx_cnt: u32,
    pub peer_buf_alloc: u32,
    pub peer_fwd_cnt: u32,
    pub counters: StreamCounters,
}

impl Stream {
    pub fn new(
        id: StreamId,
        local_port: u32,
        peer_cid: u64,
        peer_port: u32,
        state: StreamState,
        buf_alloc: u32,
    ) -> Self {
        Stream {
            id,
            local_port,
            peer_cid,
            peer_port,
            state,
            local_shutdown: 0,
            peer_shutdown: 0,
            buf_alloc,
            buf_alloc_max: buf_alloc,
            fwd_cnt: 0,
            last_fwd_cnt_sent: 0,
            rx_cnt: 0,
            rx: VecDeque::new(),
            tx_cnt: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            counters: StreamCounters::default(),
        }
    }

    /// Bytes this side may send now: `peer_buf_alloc - (tx_cnt - peer_fwd_cnt)`, or 0 when the
    /// peer has more in flight than its buffer (it shrank).
    pub fn credit(&self) -> u32 {
        let in_flight = self.tx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Takes the peer's credit fields from any header it sent.
    pub fn update_peer_credit(&mut self, hdr: &PacketHeader) {
        self.peer_buf_alloc = hdr.buf_alloc();
        self.peer_fwd_cnt = hdr.fwd_cnt();
    }

    /// A header from this stream with `op`, `len` 0 and this side's credit fields. Marks the
    /// credit as announced.
    pub fn header(&mut self, op: Op, guest_cid: u64) -> PacketHeader {
        let mut hdr = PacketHeader::stream(
            op,
            guest_cid,
            self.local_port,
            self.peer_cid,
            self.peer_port,
        );
        hdr.set_credit(self.buf_alloc, self.fwd_cnt);
        self.last_fwd_cnt_sent = self.fwd_cnt;
        hdr
    }

    /// Records `n` payload bytes sent.
    pub fn note_sent(&mut self, n: u32) {
        self.tx_cnt = self.tx_cnt.wrapping_add(n);
        self.counters.bytes_sent += u64::from(n);
        self.counters.packets_sent += 1;
    }

    /// Takes received payload into the buffer and checks the peer stayed within the credit this
    /// side announced.
    pub fn receive(&mut self, payload: &[u8]) {
        let n = u32::try_from(payload.len()).unwrap_or(u32::MAX);
        self.counters.packets_received += 1;
        self.counters.max_packet_received = self.counters.max_packet_received.max(n);
        if self.local_shutdown & sockbypass_wire::consts::SHUTDOWN_RCV != 0 {
            self.counters.bytes_after_shutdown += u64::from(n);
            return;
        }
        self.rx_cnt = self.rx_cnt.wrapping_add(n);
        self.counters.bytes_received += u64::from(n);
        self.rx.extend(payload);
        // The peer can only have seen fwd_cnt values up to the last one this side sent.
        if self.rx_cnt.wrapping_sub(self.last_fwd_cnt_sent) > self.buf_alloc_max {
            self.counters.credit_violations += 1;
        }
    }

    /// Moves up to `max` buffered bytes into `out`; returns how many.
    pub fn consume(&mut self, out: &mut Vec<u8>, max: usize) -> usize {
        let n = self.rx.len().min(max);
        out.extend(self.rx.drain(..n));
        self.fwd_cnt = self
            .fwd_cnt
            .wrapping_add(u32::try_from(n).unwrap_or(u32::MAX));
        n
    }

    /// Changes the advertised buffer size.
    pub fn set_buf_alloc(&mut self, buf_alloc: u32) {
        self.buf_alloc = buf_alloc;
        self.buf_alloc_max = self.buf_alloc_max.max(buf_alloc);
    }

    /// Whether the application consumed at least `threshold` bytes the peer has not been told
    /// about yet.
    pub fn credit_update_due(&self, threshold: u32) -> bool {
        let unannounced = self.fwd_cnt.wrapping_sub(self.last_fwd_cnt_sent);
        unannounced > 0 && unannounced >= threshold
    }

    pub fn info(&self) -> StreamInfo {
        StreamInfo {
            id: self.id,
            local_port: self.local_port,
            peer_cid: self.peer_cid,
            peer_port: self.peer_port,
            state: self.state,
            local_shutdown: self.local_shutdown,
            peer_shutdown: self.peer_shutdown,
            buf_alloc: self.buf_alloc,
            fwd_cnt: self.fwd_cnt,
            rx_cnt: self.rx_cnt,
            rx_buffered: self.rx.len(),
            tx_cnt: self.tx_cnt,
            peer_buf_alloc: self.peer_buf_alloc,
            peer_fwd_cnt: self.peer_fwd_cnt,
            credit: self.credit(),
            counters: self.counters,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream() -> Stream {
        Stream::new(StreamId(1), 1024, 4, 80, StreamState::Connected, 1000)
    }

    #[test]
    fn credit_is_peer_buffer_minus_in_flight_with_wrapping() {
        let mut s = stream();
        assert_eq!(s.credit(), 0);
        let mut h = PacketHeader::default();
        h.set_credit(4096, 0);
        s.update_peer_credit(&h);
        assert_eq!(s.credit(), 4096);
        s.note_sent(4000);
        assert_eq!(s.credit(), 96);
        h.set_credit(4096, 3000);
        s.update_peer_credit(&h);
        assert_eq!(s.credit(), 3096);
        // Counters near the 2^32 wrap.
        s.tx_cnt = u32::MAX - 10;
        h.set_credit(100, u32::MAX - 50);
        s.update_peer_credit(&h);
        assert_eq!(s.credit(), 60);
        s.note_sent(30);
        assert_eq!(s.tx_cnt, 19);
        assert_eq!(s.credit(), 30);
        // The peer shrank its buffer below what is in flight.
        h.set_credit(10, u32::MAX - 50);
        s.update_peer_credit(&h);
        assert_eq!(s.credit(), 0);
    }

    #[test]
    fn receive_consume_and_credit_updates() {
        let mut s = stream();
        let hdr = s.header(Op::Response, 3);
        assert_eq!((hdr.buf_alloc(), hdr.fwd_cnt()), (1000, 0));
        assert_eq!(
            (hdr.src_cid(), hdr.src_port(), hdr.dst_cid(), hdr.dst_port()),
            (3, 1024, 4, 80)
        );
        s.receive(&[7u8; 600]);
        s.receive(&[8u8; 400]);
        assert_eq!(s.counters.credit_violations, 0);
        assert!(!s.credit_update_due(250));
        let mut out = Vec::new();
        assert_eq!(s.consume(&mut out, 300), 300);
        assert_eq!(s.fwd_cnt, 300);
        assert!(s.credit_update_due(250));
        assert!(!s.credit_update_due(301));
        // One byte past the announced credit (fwd_cnt 300 was never sent) is a violation.
        s.receive(&[9u8; 1]);
        assert_eq!(s.counters.credit_violations, 1);
        let hdr = s.header(Op::CreditUpdate, 3);
        assert_eq!(hdr.fwd_cnt(), 300);
        assert!(!s.credit_update_due(1));
        s.receive(&[9u8; 299]);
        assert_eq!(s.counters.credit_violations, 1);
        assert_eq!(s.info().rx_buffered, 1000);
        assert_eq!(s.counters.bytes_received, 1300);
        assert_eq!(s.counters.max_packet_received, 600);
    }

    #[test]
    fn data_after_receive_shutdown_is_dropped() {
        let mut s = stream();
        s.local_shutdown = sockbypass_wire::consts::SHUTDOWN_RCV;
        s.receive(&[1u8; 10]);
        assert_eq!(s.rx.len(), 0);
        assert_eq!(s.counters.bytes_after_shutdown, 10);
    }

    #[test]
    fn terminal_and_established_states() {
        assert!(StreamState::Reset.is_terminal());
        assert!(StreamState::Closed.is_terminal());
        assert!(!StreamState::Closing.is_terminal());
        assert!(StreamState::PeerShutdown(1).is_established());
        assert!(!StreamState::Connecting.is_established());
        assert_eq!(StreamId(5).to_string(), "#5");
    }
}
