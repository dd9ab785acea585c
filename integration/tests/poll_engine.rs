//! The poll engine (`backend/DESIGN-poller.md`, issue 5) with the test frontend: in each mode a
//! VM-to-VM stream is byte-exact; poll threads do the work, kicks are suppressed while they
//! spin, an adaptive thread sleeps when idle and wakes on the next kick, and event mode has no
//! poll thread at all.

mod common;

use std::time::Duration;

use common::peers::{assert_same_bytes, connect_peers};
use common::transfer::{run, Job};
use common::{random_bytes, wait_until, Harness, VmSpec};
use sockbypassd::config::{PollConfig, PollMode};

const T: Duration = Duration::from_secs(60);

fn harness(mode: PollMode) -> Harness {
    Harness::start_with_poll(
        &[VmSpec::new("a", 3), VmSpec::new("b", 4)],
        PollConfig {
            mode,
            ..PollConfig::default()
        },
    )
}

/// Streams `size` bytes from a to b; returns a's TX packets during the stream and a's kicks.
fn stream(h: &Harness, size: usize, seed: u64) -> (u64, u64) {
    let (mut a, mut b) = (h.vm("a"), h.vm("b"));
    let (ia, ib) = connect_peers(&mut a, &mut b, 5000, T);
    let before = h.counters("a");
    let data = random_bytes(size, seed);
    let mut ja = [Job::with_max_write(ia, data.clone(), 0, seed, 4096)];
    let mut jb = [Job::new(ib, Vec::new(), size, seed + 1)];
    std::thread::scope(|s| {
        s.spawn(|| run(a.driver_mut(), &mut ja, T, "a"));
        s.spawn(|| run(b.driver_mut(), &mut jb, T, "b"));
    });
    assert_same_bytes(&jb[0].got, &data, "a → b");
    let after = h.counters("a");
    (
        after.tx_packets - before.tx_packets,
        after.kicks_received - before.kicks_received,
    )
}

#[test]
fn poll_mode_moves_the_stream_with_kicks_suppressed() {
    let h = harness(PollMode::Poll);
    let (packets, kicks) = stream(&h, 2 << 20, 1);
    let pc = h.poll_counters();
    assert_eq!(pc.len(), 1, "one poll thread");
    assert!(pc[0].useful_loops > 0 && pc[0].packets >= packets, "{pc:?}");
    assert_eq!(pc[0].sleeps, 0, "poll mode never sleeps: {pc:?}");
    assert!(
        kicks * 4 < packets,
        "TX kicks suppressed while polling: {kicks} kicks for {packets} packets"
    );
}

#[test]
fn adaptive_mode_sleeps_when_idle_and_wakes_on_a_kick() {
    let h = harness(PollMode::Adaptive);
    stream(&h, 1 << 20, 2);
    assert!(
        wait_until(T, || h.poll_counters()[0].sleeps > 0),
        "the idle poll thread went to sleep: {:?}",
        h.poll_counters()
    );
    let asleep = h.poll_counters()[0];
    // A new stream needs the sleeping thread: a kick must wake it.
    stream(&h, 1 << 20, 3);
    let after = h.poll_counters()[0];
    assert!(after.wakeups > asleep.wakeups, "woken by a kick: {after:?}");
    assert!(
        after.packets > asleep.packets,
        "the poll thread moved the stream: {after:?}"
    );
}

#[test]
fn event_mode_has_no_poll_thread_and_takes_kicks() {
    let h = harness(PollMode::Event);
    let (packets, kicks) = stream(&h, 1 << 20, 4);
    assert!(h.poll_counters().is_empty());
    assert!(kicks > 0 && packets > 0, "{kicks} kicks, {packets} packets");
}

/// A poll thread walks the RX queue of a VM that packets wait for: the receiver gives buffers
/// back without ever kicking, and the poll thread delivers the held packets. (The host thread's
/// 100 ms sweep would deliver them too, eventually; so the test checks that the poll thread
/// did, and allows two retries for the rare round where the sweep got there first.)
#[test]
fn poll_mode_notices_rx_buffers_without_a_kick() {
    use sockbypass_integration::microbench::daemon::{poll_config, BenchDaemon};
    use sockbypass_integration::microbench::scenarios::SMALL;

    let daemon = BenchDaemon::start(2, poll_config(PollMode::Poll, 1, 50)).expect("daemon");
    let mut pair = daemon.pair(0, false).expect("pair");
    pair.receiver_kicks = false;
    let rx_kicks = pair.receiver().rx_kicks();
    let polled = || {
        daemon
            .poll_counters()
            .iter()
            .map(|c| c.packets)
            .sum::<u64>()
    };
    let mut by_poll_thread = Vec::new();
    for _ in 0..3 {
        // 256 packets fill every RX buffer of the receiver; 100 more have to wait (held), with
        // none left in the sender's ring (no TX work makes the switch look at the RX ring).
        assert_eq!(pair.send_burst(SMALL, 256).expect("send"), 256);
        assert!(wait_until(T, || {
            let b = pair.receiver();
            b.rx_used_idx()
                .expect("used idx")
                .wrapping_sub(b.rx_last_used())
                == 256
        }));
        assert_eq!(pair.send_burst(SMALL, 100).expect("send"), 100);
        assert!(wait_until(T, || daemon
            .gauges(1)
            .is_some_and(|g| g.inbound_queued == 100)));
        let before = polled();
        // The receiver takes the 256 and gives the buffers back, without kicking.
        assert!(wait_until(T, || {
            pair.reap().expect("reap");
            pair.drained()
        }));
        assert_eq!(pair.packets, pair.sent());
        by_poll_thread.push(polled() - before);
        if by_poll_thread.last() >= Some(&100) {
            break;
        }
    }
    assert!(
        by_poll_thread.last() >= Some(&100),
        "the poll thread never delivered the held packets itself: {by_poll_thread:?}"
    );
    assert_eq!(
        pair.receiver().rx_kicks(),
        rx_kicks,
        "the receiver never kicked RX"
    );
}
