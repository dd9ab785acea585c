//! The poll engine (`backend/DESIGN-poller.md`, issue 5) with the test frontend: in each mode a
//! VM-to-VM stream is byte-exact; poll threads do the work, kicks are suppressed while they
//! spin, an adaptive thread sleeps when idle and wakes on the next kick, and event mode has no
//! poll thread at all; a poll thread's walk of a hostile TX ring keeps to its budget.
//!
//! Each test sets its own poll mode, so `ci/test.sh` does not run this file again per mode.

use std::time::{Duration, Instant};

use harness::peers::{assert_same_bytes, connect_peers};
use harness::transfer::{run, Job};
use harness::{random_bytes, wait_until, Harness, VmSpec};
use sockbypass_frontend::{DriverConfig, RawDescriptor};
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

/// A poll thread walking a hostile TX ring (SPEC.md §11 walk budgets): x republishes chains too
/// short for a header as fast as the device hands them back, and no walk takes more than a
/// queue of chains.
#[test]
fn a_tx_walk_takes_at_most_a_queue_of_chains() {
    const TX_SIZE: u16 = 8;
    let h = Harness::start_with_poll(
        &[VmSpec::new("a", 3), VmSpec::new("x", 5)],
        PollConfig {
            mode: PollMode::Poll,
            threads: 1,
            ..PollConfig::default()
        },
    );
    let _a = h.vm("a");
    let mut x = h.vm_with(
        "x",
        DriverConfig {
            tx_queue_size: TX_SIZE,
            ..DriverConfig::default()
        },
    );
    // Eight one-descriptor chains that are too short for a header: each comes back at once
    // with used length 0, and x publishes it again as fast as it can.
    let buf = x.ram().alloc(64, 8).expect("a buffer");
    let q = x.driver_mut().tx_queue_mut();
    let pool = q
        .reserve_descriptors(usize::from(TX_SIZE))
        .expect("every descriptor");
    for &d in &pool {
        let short = RawDescriptor {
            addr: buf.addr.0,
            len: 8,
            flags: 0,
            next: 0,
        };
        q.write_descriptor(d, short).expect("descriptor");
    }
    let end = Instant::now() + Duration::from_secs(2);
    let mut published = 0u64;
    let mut next = 0usize;
    while Instant::now() < end {
        let q = x.driver_mut().tx_queue_mut();
        while q.pop_used().expect("used").is_some() {}
        let in_ring = q.next_avail().wrapping_sub(q.used_idx().expect("used idx"));
        for _ in in_ring..TX_SIZE {
            q.publish_head(pool[next]).expect("publish");
            next = (next + 1) % pool.len();
            published += 1;
        }
    }
    let k = h.counters("x");
    println!("published {published}, taken {}", k.tx_packets);
    assert!(k.drop_short_chain > 1000, "the refill ran: {k:?}");
    let hist = h.poll_counters()[0].batch_histogram();
    println!("packets per poll loop: {hist:?}");
    // Buckets 1, 2-3, 4-7, 8-15, 16+: with a budget of 8 chains per walk and a idle, no loop
    // moves 16 or more.
    assert!(hist[3] > 0, "some walks took a full queue: {hist:?}");
    assert_eq!(
        hist[4..].iter().sum::<u64>(),
        0,
        "a walk took more than the queue size: {hist:?}"
    );
    assert!(k.tx_walks_cut > 0, "walks were cut at their budget: {k:?}");
}
