//! One run of the switch between two simulated guests, and the properties checked on it.
//!
//! A (CID 3) and B (CID 4) share a group. Before the input's steps, A opens a stream from port
//! [`A_PORT`] to B's port [`B_PORT`], and the harness plays both ends of it as well-behaved
//! guests do (credit respected, buffers refilled, credit updates sent). The steps mix that
//! stream's sends and reads with anything else either guest may do: packets of its own making,
//! malformed chains, raw writes to its rings, calls into the switch in any order, reattaching.
//!
//! Checked, on top of "nothing panics and nothing hangs":
//! - **byte-exact stream**: what B reads is always a prefix of what A sent; unless a guest broke
//!   its own rings or was reattached, or a sweep far enough in the future reset connections that
//!   waited for RX buffers (the RX-stall timeout, SPEC.md §5.3), all of it arrives and the
//!   stream closes cleanly;
//! - **credit never negative**: B's driver never receives stream data beyond the credit it
//!   announced (`credit_violations` stays 0);
//! - **every chain comes back**: once the switch has nothing left to do, every chain a guest
//!   published is back in its used ring (unless its own rings are broken, or its chains were
//!   dropped with a detach); after B detaches, A gets back the chains B held;
//! - **well-formed deliveries**: every packet a guest finds in its RX queue is addressed to it,
//!   of a known op and type, with a used length of exactly `44 + len`, in a buffer it posted
//!   (the last unless the guest published RX heads of its own making);
//! - **no leak**: after each guest detaches, [`Switch::gauges`] shows nothing left for it (peer
//!   connections, held chains, queued replies and packets, host connections);
//! - **no livelock**: with no broken ring, the switch and the drivers settle (a bounded number of
//!   rounds with nothing new).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use sockbypass_frontend::{StreamId, StreamState};
use sockbypass_wire::consts::HOST_CID;
use sockbypass_wire::{Op, PacketHeader};
use sockbypassd::config::{DaemonConfig, VmConfig};
use sockbypassd::host::HostPoller;
use sockbypassd::switch::{DetachReason, Switch, VmGauges};

use crate::guest::{clean, clean_u16, clean_u32, clean_u64, tx_layout, Guest};
use crate::scenario::{Cid, Packet, Port, Scenario, Side, Step, SwitchOp};

/// Steps taken from one input.
pub const MAX_STEPS: usize = 128;
/// The stream's port at A (it holds [`crate::guest::MARK`], which nothing hostile writes).
pub const A_PORT: u32 = 0xB5B5;
/// The stream's port at B, where B listens.
pub const B_PORT: u32 = 80;
/// Rounds with nothing new after which the system counts as settled.
const QUIET_ROUNDS: usize = 3;
/// Rounds a settle may take at most (a livelock otherwise).
const SETTLE_CAP: usize = 20_000;
/// Rounds the stream may take to open.
const OPEN_CAP: usize = 64;
const NAMES: [&str; 2] = ["a", "b"];
const CIDS: [u64; 2] = [3, 4];

/// Runs `scenario` and checks every property; panics on a violation.
pub fn run(scenario: &Scenario) {
    let mut r = Run::new(scenario);
    for step in scenario.steps.iter().take(MAX_STEPS) {
        r.step(step);
    }
    r.finish();
}

/// What a settle found.
#[derive(Debug, PartialEq, Eq)]
enum Settled {
    Quiet,
    StillBusy,
}

struct Run {
    switch: Switch,
    guests: [Guest; 2],
    /// The stream's ids at A and at B.
    ida: StreamId,
    idb: StreamId,
    data: Vec<u8>,
    sent: usize,
    received: Vec<u8>,
    /// A guest was reattached: its connections are gone (the stream too, maybe).
    reattached: bool,
    /// Chains of this guest were dropped with its detach and never come back.
    lost_chains: [bool; 2],
}

/// One round of everything: the switch serves both guests, both drivers poll.
fn round(switch: &Switch, guests: &mut [Guest; 2]) {
    for i in 0..2 {
        switch.service(i);
    }
    for g in guests.iter_mut() {
        let _ = g.driver.poll();
    }
}

/// A connects to B and B accepts, with nothing hostile going on yet. Returns the stream's ids
/// at A and at B.
fn open_stream(switch: &Switch, guests: &mut [Guest; 2]) -> (StreamId, StreamId) {
    guests[1].driver.listen(B_PORT).expect("B listens");
    let ida = guests[0]
        .driver
        .connect_from(A_PORT, CIDS[1], B_PORT)
        .expect("A sends REQUEST");
    let mut idb = None;
    for _ in 0..OPEN_CAP {
        round(switch, guests);
        if idb.is_none() {
            idb = guests[1].driver.accept(B_PORT).expect("B listens");
        }
        let a_state = guests[0].driver.state(ida).expect("A's stream");
        if idb.is_some() && a_state == StreamState::Connected {
            break;
        }
    }
    let idb = idb.expect("B accepted the stream within the rounds allowed");
    let a_state = guests[0].driver.state(ida).expect("A's stream");
    assert_eq!(a_state, StreamState::Connected, "A's stream did not open");
    let info = guests[1].driver.stream_info(idb).expect("B's stream");
    assert_eq!(
        (info.peer_cid, info.peer_port),
        (CIDS[0], A_PORT),
        "B accepted another stream"
    );
    (ida, idb)
}

fn vm_config(i: usize, max_conns: u32) -> VmConfig {
    let socket = PathBuf::from(format!("/nonexistent/sockbypass-fuzz-{}.sock", NAMES[i]));
    let mut vm = VmConfig::new(NAMES[i], CIDS[i], socket);
    vm.groups = vec!["g".to_string()];
    vm.max_conns = max_conns;
    vm
}

impl Run {
    fn new(s: &Scenario) -> Run {
        let setup = &s.setup;
        let max_conns = 1 + u32::from(setup.max_conns % 16);
        let config = DaemonConfig::with_vms(vec![vm_config(0, max_conns), vm_config(1, max_conns)]);
        let poller = HostPoller::new().expect("epoll instance");
        let switch = Switch::new(&config, &poller, None).expect("a switch with no uds listeners");
        let guests = [
            Guest::new(CIDS[0], setup, false),
            Guest::new(CIDS[1], setup, true),
        ];
        for (i, g) in guests.iter().enumerate() {
            let vm = switch.vm(i).expect("two VMs configured");
            vm.set_memory(Some(g.mem.clone()));
            switch.bind(i, &g.vrings);
            assert!(vm.is_attached(), "guest {} did not attach", NAMES[i]);
        }
        let data: Vec<u8> = (0..usize::from(setup.stream_len % 4096))
            .map(|i| (i.wrapping_mul(131) >> 3) as u8 ^ (i as u8))
            .collect();
        let mut guests = guests;
        let (ida, idb) = open_stream(&switch, &mut guests);
        Run {
            switch,
            guests,
            ida,
            idb,
            data,
            sent: 0,
            received: Vec::new(),
            reattached: false,
            lost_chains: [false; 2],
        }
    }

    fn a(&mut self) -> &mut Guest {
        &mut self.guests[0]
    }

    /// One round of everything (see [`round`]).
    fn round(&mut self) {
        round(&self.switch, &mut self.guests);
    }

    /// Whether a guest broke its own rings (its packets may be lost or repeated).
    fn broken(&self) -> bool {
        self.guests.iter().any(|g| g.broken)
    }

    /// Whether a sweep reset connections whose packets waited too long for a guest's RX
    /// buffers (the stream's among them, maybe).
    fn stall_reset(&self) -> bool {
        NAMES.iter().any(|n| {
            self.switch
                .counters(n)
                .is_some_and(|c| c.rx_stall_resets > 0)
        })
    }

    /// A summary that changes whenever anything moves.
    fn progress(&self) -> Vec<u64> {
        let mut v = vec![self.sent as u64, self.received.len() as u64];
        for (i, g) in self.guests.iter().enumerate() {
            if let Some(c) = self.switch.counters(NAMES[i]) {
                v.extend([c.tx_packets, c.rx_packets, c.fwd_packets, c.rst_sent]);
            }
            let d = g.driver.stats();
            v.extend([d.rx_packets, d.tx_packets, g.driver.tx_in_flight() as u64]);
        }
        v
    }

    /// Moves the stream along (A sends what credit allows, B reads all) and runs rounds until
    /// nothing moves any more.
    fn settle(&mut self) -> Settled {
        let mut quiet = 0;
        let mut last = self.progress();
        for _ in 0..SETTLE_CAP {
            self.stream_send(usize::MAX);
            self.stream_recv(usize::MAX);
            self.round();
            let now = self.progress();
            if now == last {
                quiet += 1;
                if quiet >= QUIET_ROUNDS {
                    return Settled::Quiet;
                }
            } else {
                quiet = 0;
                last = now;
            }
        }
        Settled::StillBusy
    }

    fn stream_send(&mut self, max: usize) {
        let end = self.data.len().min(self.sent.saturating_add(max));
        if end > self.sent {
            let (ida, from) = (self.ida, self.sent);
            let chunk = self.data[from..end].to_vec();
            if let Ok(n) = self.a().driver.send(ida, &chunk) {
                self.sent += n;
            }
        }
    }

    fn stream_recv(&mut self, max: usize) {
        let idb = self.idb;
        let mut got = Vec::new();
        if self.guests[1].driver.recv_max(idb, &mut got, max).is_err() {
            return;
        }
        self.received.extend_from_slice(&got);
        self.check_stream();
    }

    /// What B read is a prefix of what A sent, within the credit B announced.
    fn check_stream(&self) {
        if !self.broken() {
            let n = self.received.len();
            assert!(n <= self.sent, "B read {n} bytes, A sent {}", self.sent);
            if self.received[..] != self.data[..n] {
                let at = self
                    .received
                    .iter()
                    .zip(&self.data)
                    .position(|(x, y)| x != y)
                    .unwrap_or(n);
                panic!("the stream's bytes differ from byte {at} on (B read {n})");
            }
        }
        if let Ok(info) = self.guests[1].driver.stream_info(self.idb) {
            assert_eq!(
                info.counters.credit_violations, 0,
                "B's stream got data beyond the credit it announced: {info:?}"
            );
        }
    }

    fn step(&mut self, step: &Step) {
        match step {
            Step::StreamSend(n) => self.stream_send(usize::from(*n)),
            Step::StreamRecv(n) => self.stream_recv(usize::from(*n)),
            Step::Packet(side, p) => self.packet(*side, p),
            Step::Bytes(side, bytes, layout) => {
                let mut bytes = bytes.clone();
                bytes.truncate(4096);
                clean(&mut bytes);
                let layout = tx_layout(layout);
                let _ = self.guests[side.index()]
                    .driver
                    .send_raw_bytes(&bytes, &layout);
            }
            Step::Chain(side, bufs, indirect) => {
                self.guests[side.index()].hostile_chain(bufs, *indirect)
            }
            Step::Ring(side, op) => {
                let i = side.index();
                let popped = self.switch.counters(NAMES[i]).map_or(0, |c| c.tx_packets);
                let g = &mut self.guests[i];
                // The device's count of taken heads, modulo 2^16 like the ring's indices.
                let unpopped = g.driver.queues()[1]
                    .next_avail()
                    .wrapping_sub(popped as u16);
                g.ring_op(op, unpopped);
            }
            Step::Switch(op) => self.switch_op(*op),
            Step::Poll(side) => {
                let _ = self.guests[side.index()].driver.poll();
            }
            Step::Reattach(side) => {
                let i = side.index();
                self.switch.detach(i, DetachReason::RingStopped);
                self.switch.bind(i, &self.guests[i].vrings);
                self.reattached = true;
                self.lost_chains[i] = true;
            }
        }
    }

    fn switch_op(&mut self, op: SwitchOp) {
        let sw = &self.switch;
        match op {
            SwitchOp::ProcessTx(s) => drop(sw.process_tx(s.index())),
            SwitchOp::ProcessTxPolled(s) => drop(sw.process_tx_polled(s.index())),
            SwitchOp::FillRx(s) => drop(sw.fill_rx(s.index())),
            SwitchOp::Service(s) => sw.service(s.index()),
            SwitchOp::ServiceRx(s) => drop(sw.fill_rx_then_resume_tx(s.index())),
            SwitchOp::FillEvents(s) => drop(sw.fill_events(s.index())),
            SwitchOp::Sweep(secs) => {
                sw.sweep(Instant::now() + Duration::from_secs(u64::from(secs)))
            }
        }
    }

    fn packet(&mut self, side: Side, p: &Packet) {
        let cid = |c: Cid| match c {
            Cid::Own => CIDS[side.index()],
            Cid::Peer => CIDS[side.other().index()],
            Cid::Host => HOST_CID,
            Cid::Unknown(n) => 5 + u64::from(n),
            Cid::Raw(x) => clean_u64(x),
        };
        let port = |p: Port| match p {
            Port::Shared(n) => 1 + u32::from(n % 8),
            Port::Listen => B_PORT,
            Port::Raw(x) => clean_u32(x),
        };
        let payload: Vec<u8> = (0..usize::from(p.payload))
            .map(|i| (i % 251) as u8)
            .collect();
        let mut h = PacketHeader::stream(
            Op::Rw,
            cid(p.src),
            port(p.src_port),
            cid(p.dst),
            port(p.dst_port),
        );
        h.set_op_raw(u16::from(p.op % 9))
            .set_type(p.type_.map_or(1, clean_u16))
            .set_len(p.len.map_or(payload.len() as u32, clean_u32))
            .set_flags(p.flags)
            .set_credit(p.buf_alloc, p.fwd_cnt);
        let layout = tx_layout(&p.layout);
        let _ = self.guests[side.index()]
            .driver
            .send_raw(&h, &payload, &layout);
    }

    /// Every chain of guest `i` is back in its used ring.
    fn assert_chains_back(&self, i: usize, when: &str) {
        let n = self.guests[i].driver.tx_in_flight();
        assert_eq!(
            n, 0,
            "{when}: {n} TX chains of guest {} never came back",
            NAMES[i]
        );
    }

    fn assert_no_leak(&self, i: usize) {
        let g = self.switch.gauges(NAMES[i]).expect("configured VM");
        assert_eq!(
            g,
            VmGauges::default(),
            "guest {} detached, the switch still holds {g:?}",
            NAMES[i]
        );
    }

    /// Every packet the switch wrote into a guest's RX queue was well-formed and for it.
    fn check_deliveries(&self) {
        for (i, g) in self.guests.iter().enumerate() {
            let d = g.driver.stats();
            let bad = [
                ("addressed to another CID", d.rx_wrong_cid),
                ("of another type than stream", d.rx_bad_type),
                ("of an unknown op", d.rx_unknown_op),
                (
                    "with a used length short of its header or len",
                    d.rx_malformed,
                ),
                (
                    "with a used length other than 44 + len",
                    d.rx_used_len_mismatch,
                ),
            ];
            for (what, n) in bad {
                assert_eq!(n, 0, "guest {} got {n} packets {what}: {d:?}", NAMES[i]);
            }
            if !g.broken {
                assert_eq!(
                    d.rx_unknown_used, 0,
                    "guest {} got used RX entries for buffers it never posted: {d:?}",
                    NAMES[i]
                );
            }
        }
    }

    fn finish(mut self) {
        let settled = self.settle();
        self.check_stream();
        self.check_deliveries();
        let clean_run = !self.broken() && !self.reattached && !self.stall_reset();
        if !self.broken() {
            assert_eq!(
                settled,
                Settled::Quiet,
                "no broken ring, yet the switch never settles"
            );
        }
        if clean_run {
            assert_eq!(
                self.received.len(),
                self.data.len(),
                "the stream stalled: B read {} of {} bytes (A sent {})",
                self.received.len(),
                self.data.len(),
                self.sent
            );
            let ida = self.ida;
            self.a().driver.close(ida).expect("A closes its stream");
            assert_eq!(self.settle(), Settled::Quiet, "closing never settles");
            let a_state = self.guests[0].driver.state(self.ida).expect("A's stream");
            let b_state = self.guests[1].driver.state(self.idb).expect("B's stream");
            assert_eq!(a_state, StreamState::Closed, "A's stream did not close");
            assert!(
                b_state.is_terminal(),
                "B's stream did not close: {b_state:?}"
            );
            self.assert_chains_back(0, "both attached, settled");
            self.assert_chains_back(1, "both attached, settled");
        }
        // B leaves: nothing of B stays, and A gets back what B held.
        self.switch.detach(1, DetachReason::Disconnected);
        self.assert_no_leak(1);
        let settled = self.settle();
        if !self.guests[0].broken {
            assert_eq!(settled, Settled::Quiet, "A alone never settles");
            if !self.lost_chains[0] {
                self.assert_chains_back(0, "after B detached");
            }
        }
        self.check_deliveries();
        self.switch.detach(0, DetachReason::Disconnected);
        self.assert_no_leak(0);
    }
}
