//! The microbenchmark's machinery works and measures what it claims: every packet it counts
//! was forwarded by the switch and checked on arrival, in every poll mode, and the gate's
//! fixed run forwards exactly what it asked for. (No speed is asserted here.)

use std::time::Duration;

use sockbypass_integration::microbench::daemon::{poll_config, BenchDaemon};
use sockbypass_integration::microbench::scenarios::{self, BULK, SMALL};
use sockbypassd::config::PollMode;

fn short_run(mode: PollMode) {
    let daemon = BenchDaemon::start(4, poll_config(mode, 1, 50)).expect("daemon");
    let mut pairs = vec![
        daemon.pair(0, true).expect("pair 0"),
        daemon.pair(1, false).expect("pair 1"),
    ];
    let lat = scenarios::latency(&mut pairs[0], SMALL, 200).expect("latency");
    assert!(lat.p50_ns > 0.0 && lat.p99_ns >= lat.p50_ns, "{lat:?}");
    let small =
        scenarios::pipelined(&mut pairs, SMALL, Duration::from_millis(200)).expect("small packets");
    let bulk =
        scenarios::pipelined(&mut pairs[..1], BULK, Duration::from_millis(200)).expect("bulk");
    assert!(small.packets > 0 && bulk.bytes == bulk.packets * u64::from(BULK));
    let received: u64 = pairs.iter().map(|p| p.packets).sum();
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
    let run = scenarios::gate(20, 16).expect("gate run");
    assert_eq!(run.packets, 20 * 16);
    // REQUEST, RESPONSE and the RWs; no credit update is due at this size.
    assert_eq!(run.totals.forwarded, 20 * 16 + 2);
    // Event mode: one kick per batch published (plus the handshake and RX reposts).
    assert!(run.totals.kicks_received >= 20, "{:?}", run.totals);
}
