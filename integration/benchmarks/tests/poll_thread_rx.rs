//! The poll engine with the microbenchmark's pair (fixed buffers, a receiver that need not
//! kick): a poll thread delivers packets held for a receiver that gives RX buffers back without
//! a kick.

use std::time::Duration;

use harness::wait_until;
use sockbypass_benchmarks::microbench::daemon::{poll_config, BenchDaemon};
use sockbypass_benchmarks::microbench::scenarios::SMALL;
use sockbypassd::config::PollMode;

const T: Duration = Duration::from_secs(60);

/// A poll thread walks the RX queue of a VM that packets wait for: the receiver gives buffers
/// back without ever kicking, and the poll thread delivers the held packets. (The host thread's
/// 100 ms sweep would deliver them too, eventually; so the test checks that the poll thread
/// did, and allows two retries for the rare round where the sweep got there first.)
#[test]
fn poll_mode_notices_rx_buffers_without_a_kick() {
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
