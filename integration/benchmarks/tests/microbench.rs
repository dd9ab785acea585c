//! The microbenchmark's machinery works and measures what it claims: every packet it counts
//! was forwarded by the switch and checked on arrival, in every poll mode, each figure comes
//! from the samples it names, and the gate's fixed run forwards exactly what it asked for. (No
//! speed is asserted here.)

use std::time::{Duration, Instant};

use sockbypass_benchmarks::error::MicrobenchError;
use sockbypass_benchmarks::microbench::bench_vm::RING_SIZE;
use sockbypass_benchmarks::microbench::daemon::{poll_config, BenchDaemon};
use sockbypass_benchmarks::microbench::pair::Pair;
use sockbypass_benchmarks::microbench::scenarios::{self, Latency, Rate, BULK, SMALL};
use sockbypassd::config::PollMode;
use vm_memory::Address;

/// Timed packets per latency figure.
const LATENCY_PACKETS: u32 = 200;
/// Duration of each pipelined run.
const RUN: Duration = Duration::from_millis(200);

/// Packets the pairs received and checked so far.
fn checked(pairs: &[Pair]) -> u64 {
    pairs.iter().map(|p| p.packets).sum()
}

/// Checks a latency figure against the run that produced it: `checked` packets arrived and
/// were verified during the `wall` time the measurement took.
fn check_latency(lat: &Latency, checked: u64, wall: Duration, mode: PollMode) {
    let n = LATENCY_PACKETS;
    assert_eq!(lat.samples, n, "{mode:?}: samples reported: {lat:?}");
    // The timed packets and the tenth as many sent first to warm up, each checked on arrival.
    assert_eq!(
        checked,
        u64::from(n + n / 10),
        "{mode:?}: packets checked during the latency run"
    );
    for (name, v) in [("p50", lat.p50_ns), ("p99", lat.p99_ns)] {
        assert!(v.is_finite() && v > 0.0, "{mode:?}: {name} = {v} ns");
    }
    // The samples are disjoint spans inside `wall`, so the half at or above the median (and the
    // hundredth at or above p99) cannot add up to more than it: a figure in the wrong unit, or
    // not taken from these samples, breaks this.
    let wall = wall.as_nanos() as f64;
    assert!(
        lat.p50_ns * f64::from(n / 2 - 1) <= wall,
        "{mode:?}: p50 {} ns × {} samples > {wall} ns of measuring",
        lat.p50_ns,
        n / 2 - 1
    );
    assert!(
        lat.p99_ns * f64::from(n / 100) <= wall,
        "{mode:?}: p99 {} ns × {} samples > {wall} ns of measuring",
        lat.p99_ns,
        n / 100
    );
}

/// Checks a pipelined figure against the run that produced it: `checked` packets of `len`
/// bytes arrived and were verified over `pairs` pairs during `wall`.
fn check_rate(rate: &Rate, pairs: usize, len: u32, checked: u64, wall: Duration, what: &str) {
    assert_eq!(rate.pairs, pairs, "{what}: pairs");
    assert!(rate.packets > 0, "{what}: nothing moved: {rate:?}");
    assert_eq!(
        rate.packets, checked,
        "{what}: packets counted = packets checked"
    );
    assert_eq!(
        rate.bytes,
        rate.packets * u64::from(len),
        "{what}: bytes = packets × {len}"
    );
    assert!(
        rate.elapsed >= RUN && rate.elapsed <= wall,
        "{what}: elapsed {:?} outside [{RUN:?}, {wall:?}]",
        rate.elapsed
    );
    let ns = rate.ns_per_packet();
    assert!(ns.is_finite() && ns > 0.0, "{what}: {ns} ns per packet");
}

/// Runs `measure` and returns its figure, the packets the pairs checked meanwhile and the wall
/// time it took.
fn measured<T>(pairs: &mut [Pair], measure: impl FnOnce(&mut [Pair]) -> T) -> (T, u64, Duration) {
    let before = checked(pairs);
    let start = Instant::now();
    let figure = measure(pairs);
    let wall = start.elapsed();
    (figure, checked(pairs) - before, wall)
}

fn short_run(mode: PollMode) {
    let daemon = BenchDaemon::start(4, poll_config(mode, 1, 50)).expect("daemon");
    let mut pairs = vec![
        daemon.pair(0, true).expect("pair 0"),
        daemon.pair(1, false).expect("pair 1"),
    ];
    let (lat, n, wall) = measured(&mut pairs[..1], |p| {
        scenarios::latency(&mut p[0], SMALL, LATENCY_PACKETS).expect("latency")
    });
    check_latency(&lat, n, wall, mode);
    let (small, n, wall) = measured(&mut pairs, |p| {
        scenarios::pipelined(p, SMALL, RUN).expect("small packets")
    });
    check_rate(&small, 2, SMALL, n, wall, &format!("{mode:?} small"));
    let (bulk, n, wall) = measured(&mut pairs[..1], |p| {
        scenarios::pipelined(p, BULK, RUN).expect("bulk")
    });
    check_rate(&bulk, 1, BULK, n, wall, &format!("{mode:?} bulk"));
    // Every packet a pair sent was received and its payload checked.
    for (i, p) in pairs.iter().enumerate() {
        assert!(p.drained(), "{mode:?}: pair {i} has packets in flight");
        assert_eq!(p.packets, p.sent(), "{mode:?}: pair {i}: checked = sent");
    }
    let received = checked(&pairs);
    drop(pairs);
    let totals = daemon.totals();
    // Every RW the pairs checked went through the switch (plus handshakes and credit updates).
    assert!(
        totals.forwarded >= received,
        "{mode:?}: switch forwarded {} < {received} received",
        totals.forwarded
    );
    match mode {
        PollMode::Event => assert!(daemon.poll_counters().is_empty()),
        _ => {
            let pc = daemon.poll_counters();
            let batches: u64 = pc.iter().flat_map(|c| c.batch_histogram()).sum();
            assert!(batches > 0, "{mode:?}: no batch recorded: {pc:?}");
        }
    }
}

#[test]
fn poll_mode_runs_and_checks_every_packet() {
    short_run(PollMode::Poll);
}

#[test]
fn adaptive_mode_runs_and_checks_every_packet() {
    short_run(PollMode::Adaptive);
}

#[test]
fn event_mode_runs_and_checks_every_packet() {
    short_run(PollMode::Event);
}

#[test]
fn gate_run_forwards_exactly_its_batches() {
    let run = scenarios::gate(PollMode::Event, 20, 16).expect("gate run");
    assert_eq!(run.packets, 20 * 16);
    // REQUEST, RESPONSE and the RWs; no credit update is due at this size.
    assert_eq!(run.totals.forwarded, 20 * 16 + 2);
    // Event mode: one kick per batch published (plus the handshake and RX reposts).
    assert!(run.totals.kicks_received >= 20, "{:?}", run.totals);
}

#[test]
fn one_wrong_byte_deep_in_a_payload_stops_the_run() {
    let daemon = BenchDaemon::start(2, poll_config(PollMode::Event, 1, 50)).expect("daemon");
    let mut pair = daemon.pair(0, true).expect("pair");
    // Byte 40,000 of every TX buffer no longer holds what the pattern says: B must notice,
    // whichever buffer the packet goes from (a check of a few bytes per packet would not).
    for head in 0..RING_SIZE {
        let a = pair.sender();
        let at = a.tx_payload(head).unchecked_add(40_000);
        let byte: u8 = a.ram().read_obj(at).expect("read");
        a.ram().write_obj(at, !byte).expect("write");
    }
    assert_eq!(pair.send_burst(BULK, 1).expect("send"), 1);
    let deadline = Instant::now() + Duration::from_secs(10);
    let err = loop {
        match pair.reap() {
            Err(e) => break e,
            Ok(_) => assert!(Instant::now() < deadline, "the wrong byte was not noticed"),
        }
    };
    match err {
        MicrobenchError::Corrupt(what) => {
            assert!(what.contains("payload byte 40000"), "{what}")
        }
        other => panic!("expected a corrupt payload, got {other}"),
    }
}

#[test]
fn gate_run_in_poll_mode_forwards_exactly_its_batches() {
    let run = scenarios::gate(PollMode::Poll, 20, 16).expect("gate run");
    assert_eq!(run.packets, 20 * 16);
    assert_eq!(run.totals.forwarded, 20 * 16 + 2);
    // A poll thread moved them: it counted passes that moved chains.
    assert!(run.totals.useful_loops > 0, "{:?}", run.totals);
}
