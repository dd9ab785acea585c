//! Two [`BenchVm`]s with one stream connection from A to B: A sends RW packets within B's
//! credit, B consumes them, checks them, and returns credit as a Linux guest would.
//!
//! Every byte of every packet is checked on arrival. The first 8 payload bytes carry a
//! sequence number and the TX buffer it was sent from; the rest of TX buffer `h` holds a fixed
//! pseudo-random pattern starting `h` bytes into [`pattern`], so each buffer's bytes differ
//! from every other's and from a shifted copy of themselves. B compares the whole payload with
//! what A's buffer held. So a lost, reordered, duplicated, truncated, shifted or mis-copied
//! packet stops the benchmark with an error. (The check reads the payload once more on B's
//! thread, as a receiving application would; that is part of what the figures measure.)

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use sockbypass_wire::consts::{MAX_PAYLOAD, OP_CREDIT_UPDATE, OP_RESPONSE, OP_RW};
use sockbypass_wire::{Op, PacketHeader};

use super::bench_vm::{BenchVm, Received, RING_SIZE};
use crate::error::MicrobenchError;

/// Receive buffer B advertises (`buf_alloc`).
const BUF_ALLOC: u32 = 64 << 20;
/// B sends CREDIT_UPDATE after consuming this much, as Linux does at a quarter.
const CREDIT_THRESHOLD: u32 = BUF_ALLOC / 4;
/// How long a wait may see no progress before the benchmark gives up.
pub const STALL_LIMIT: Duration = Duration::from_secs(10);
/// Bytes at the start of each payload that carry the check word.
pub const MIN_PAYLOAD: u32 = 8;

/// The payload pattern: TX buffer `h` holds `pattern()[h..h + MAX_PAYLOAD]` (after its first
/// 8 bytes, which carry the check word). Bytes of a 64-bit xorshift sequence.
pub fn pattern() -> &'static [u8] {
    static PATTERN: OnceLock<Vec<u8>> = OnceLock::new();
    PATTERN.get_or_init(|| {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        (0..MAX_PAYLOAD as usize + usize::from(RING_SIZE))
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 56) as u8
            })
            .collect()
    })
}

/// What TX buffer `head` holds from payload byte `from` to byte `to` (`from` ≥ 8).
fn expected(head: u16, from: usize, to: usize) -> &'static [u8] {
    let start = usize::from(head);
    &pattern()[start + from..start + to]
}

/// Spins until `ready` says yes, yielding now and then so that a 2-core machine keeps moving.
pub fn spin_until(
    what: &'static str,
    mut ready: impl FnMut() -> Result<bool, MicrobenchError>,
) -> Result<(), MicrobenchError> {
    let start = Instant::now();
    let mut spins = 0u32;
    while !ready()? {
        spins = spins.wrapping_add(1);
        if spins % 4096 == 0 {
            if start.elapsed() > STALL_LIMIT {
                return Err(MicrobenchError::Stalled(STALL_LIMIT, what));
            }
            std::thread::yield_now();
        }
        std::hint::spin_loop();
    }
    Ok(())
}

/// A connected pair and its accounting.
#[derive(Debug)]
pub struct Pair {
    a: BenchVm,
    b: BenchVm,
    rw: PacketHeader,
    credit_update: PacketHeader,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    tx_cnt: u32,
    fwd_cnt: u32,
    announced: u32,
    next_seq: u64,
    expected_seq: u64,
    /// RW packets B received and checked.
    pub packets: u64,
    /// Payload bytes B received and checked.
    pub bytes: u64,
    /// Whether B kicks its RX queue after giving buffers back (a driver that never does relies
    /// on a polling device to notice them).
    pub receiver_kicks: bool,
    /// Where B reads a payload to check it.
    scratch: Vec<u8>,
}

impl Pair {
    /// Opens a stream from A (local port `port + 1`) to B (port `port`): REQUEST, RESPONSE.
    pub fn connect(mut a: BenchVm, mut b: BenchVm, port: u32) -> Result<Pair, MicrobenchError> {
        for head in 0..RING_SIZE {
            let len = MAX_PAYLOAD as usize;
            a.ram().write(a.tx_payload(head), expected(head, 0, len))?;
        }
        let mut request = PacketHeader::stream(Op::Request, a.cid(), port + 1, b.cid(), port);
        request.set_credit(BUF_ALLOC, 0);
        a.send(&request)?;
        a.kick_tx()?;
        let got = wait_packet(&mut b, "waiting for the REQUEST")?;
        if got.header.op() != Some(Op::Request) {
            return Err(unexpected("REQUEST", &got.header));
        }
        let mut response = got.header.reply(Op::Response);
        response.set_credit(BUF_ALLOC, 0);
        b.repost_rx(got.head)?;
        b.send(&response)?;
        b.kick_tx()?;
        let got = wait_packet(&mut a, "waiting for the RESPONSE")?;
        if got.header.op_raw() != OP_RESPONSE {
            return Err(unexpected("RESPONSE", &got.header));
        }
        a.repost_rx(got.head)?;
        let mut rw = request;
        rw.set_op(Op::Rw).set_credit(BUF_ALLOC, 0);
        let mut credit_update = response;
        credit_update.set_op(Op::CreditUpdate);
        Ok(Pair {
            peer_buf_alloc: got.header.buf_alloc(),
            peer_fwd_cnt: got.header.fwd_cnt(),
            a,
            b,
            rw,
            credit_update,
            tx_cnt: 0,
            fwd_cnt: 0,
            announced: 0,
            next_seq: 0,
            expected_seq: 0,
            packets: 0,
            bytes: 0,
            receiver_kicks: true,
            scratch: vec![0; MAX_PAYLOAD as usize],
        })
    }

    /// The receiving VM.
    pub fn receiver(&mut self) -> &mut BenchVm {
        &mut self.b
    }

    /// The sending VM.
    pub fn sender(&mut self) -> &mut BenchVm {
        &mut self.a
    }

    /// Whether B's credit lets A send `len` more bytes now.
    fn credit_allows(&self, len: u32) -> bool {
        let in_flight = self.tx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight) >= len
    }

    /// Puts one RW of `len` bytes on A's TX ring (no kick). Returns false when credit or
    /// descriptors are exhausted.
    fn push_one(&mut self, len: u32) -> Result<bool, MicrobenchError> {
        if !self.credit_allows(len) {
            return Ok(false);
        }
        let Some(head) = self.a.next_tx_head() else {
            return Ok(false);
        };
        let word = self.next_seq << 16 | u64::from(head);
        self.a.ram().write_obj(self.a.tx_payload(head), word)?;
        self.rw.set_len(len);
        self.a.send(&self.rw)?;
        self.tx_cnt = self.tx_cnt.wrapping_add(len);
        self.next_seq += 1;
        Ok(true)
    }

    /// Sends up to `max` RW packets of `len` bytes as room allows, then kicks if the device
    /// asks. Returns how many went.
    pub fn send_burst(&mut self, len: u32, max: usize) -> Result<usize, MicrobenchError> {
        check_len(len)?;
        self.a.reap_tx()?;
        let mut n = 0;
        while n < max && self.push_one(len)? {
            n += 1;
        }
        if n > 0 {
            self.a.kick_tx()?;
        }
        Ok(n)
    }

    /// Sends one RW of `len` bytes and times it from the moment it is published on A's TX ring
    /// to the moment it shows up in B's RX used ring. Then consumes it.
    pub fn one_way(&mut self, len: u32) -> Result<Duration, MicrobenchError> {
        check_len(len)?;
        self.a.reap_tx()?;
        self.reap_credit()?;
        let before = self.b.rx_used_idx()?;
        let start = Instant::now();
        if !self.push_one(len)? {
            return Err(MicrobenchError::Stalled(STALL_LIMIT, "no room to send"));
        }
        self.a.kick_tx()?;
        let b = &self.b;
        spin_until("waiting for one packet", || Ok(b.rx_used_idx()? != before))?;
        let took = start.elapsed();
        self.reap()?;
        Ok(took)
    }

    /// Consumes every packet waiting at B (checking each), returns B's RX buffers, sends
    /// CREDIT_UPDATE when due, and takes A's credit updates. Returns the RW packets consumed.
    pub fn reap(&mut self) -> Result<u64, MicrobenchError> {
        let mut n = 0;
        while let Some(got) = self.b.recv()? {
            self.check(&got)?;
            self.b.repost_rx(got.head)?;
            n += 1;
        }
        if n > 0 {
            if self.receiver_kicks {
                self.b.kick_rx()?;
            }
        } else {
            // As Linux NAPI does: ask for an interrupt only when going idle (found nothing),
            // not while packets keep coming.
            self.b.rearm_rx()?;
        }
        if self.fwd_cnt.wrapping_sub(self.announced) >= CREDIT_THRESHOLD {
            self.b.reap_tx()?;
            self.credit_update.set_credit(BUF_ALLOC, self.fwd_cnt);
            self.b.send(&self.credit_update)?;
            self.b.kick_tx()?;
            self.announced = self.fwd_cnt;
        }
        self.reap_credit()?;
        Ok(n)
    }

    /// Takes CREDIT_UPDATEs that reached A.
    fn reap_credit(&mut self) -> Result<(), MicrobenchError> {
        let mut any = false;
        while let Some(got) = self.a.recv()? {
            if got.header.op_raw() != OP_CREDIT_UPDATE {
                return Err(unexpected("CREDIT_UPDATE", &got.header));
            }
            self.peer_buf_alloc = got.header.buf_alloc();
            self.peer_fwd_cnt = got.header.fwd_cnt();
            self.a.repost_rx(got.head)?;
            any = true;
        }
        if any {
            self.a.kick_rx()?;
        }
        Ok(())
    }

    fn check(&mut self, got: &Received) -> Result<(), MicrobenchError> {
        let h = &got.header;
        if h.op_raw() != OP_RW {
            return Err(unexpected("RW", h));
        }
        let len = h.len();
        if !(MIN_PAYLOAD..=MAX_PAYLOAD).contains(&len)
            || got.used_len != sockbypass_wire::consts::HEADER_LEN + len
        {
            return Err(MicrobenchError::Corrupt(format!(
                "RW of {len} bytes in a used buffer of {} bytes",
                got.used_len
            )));
        }
        let n = len as usize;
        let payload = &mut self.scratch[..n];
        self.b.ram().read(self.b.rx_payload(got.head), payload)?;
        let mut word = [0u8; 8];
        word.copy_from_slice(&payload[..8]);
        let word = u64::from_ne_bytes(word);
        let (seq, tx_head) = (word >> 16, (word & 0xffff) as u16);
        if seq != self.expected_seq || tx_head >= RING_SIZE {
            return Err(MicrobenchError::Corrupt(format!(
                "expected packet {}, got {seq} from TX buffer {tx_head}",
                self.expected_seq
            )));
        }
        if payload[8..] != *expected(tx_head, 8, n) {
            let at = payload[8..]
                .iter()
                .zip(expected(tx_head, 8, n))
                .position(|(got, want)| got != want)
                .map_or(0, |i| i + 8);
            return Err(MicrobenchError::Corrupt(format!(
                "packet {seq} ({len} bytes from TX buffer {tx_head}): payload byte {at} differs \
                 from what was sent"
            )));
        }
        self.expected_seq += 1;
        self.fwd_cnt = self.fwd_cnt.wrapping_add(len);
        self.packets += 1;
        self.bytes += u64::from(len);
        Ok(())
    }

    /// RW packets A has sent.
    pub fn sent(&self) -> u64 {
        self.next_seq
    }

    /// Whether everything A sent has been consumed by B.
    pub fn drained(&self) -> bool {
        self.expected_seq == self.next_seq
    }
}

fn check_len(len: u32) -> Result<(), MicrobenchError> {
    if !(MIN_PAYLOAD..=MAX_PAYLOAD).contains(&len) {
        return Err(MicrobenchError::Oversized(len));
    }
    Ok(())
}

fn wait_packet(vm: &mut BenchVm, what: &'static str) -> Result<Received, MicrobenchError> {
    let mut got = None;
    spin_until(what, || {
        got = vm.recv()?;
        Ok(got.is_some())
    })?;
    got.ok_or(MicrobenchError::Stalled(STALL_LIMIT, what))
}

fn unexpected(wanted: &str, h: &PacketHeader) -> MicrobenchError {
    MicrobenchError::Protocol(format!("wanted {wanted}, got {h:?}"))
}
