//! Rings over two mappings of one window file (two "sides"): a stream both ways, hostile
//! indices, and the sleeping-flag race.

// Test patterns and sizes: truncation is intended or impossible.
#![allow(clippy::cast_possible_truncation)]

mod support;

use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use sockbypass_guest::ring::{RingRx, RingTx};
use sockbypass_guest::window::Window;
use sockbypass_wire::fastpath::layout::{Geometry, WindowKind, RING_SIZE};

use support::*;

fn pattern(i: u64) -> u8 {
    (i.wrapping_mul(2_654_435_761) >> 13) as u8
}

/// Sends `total` bytes of the pattern through `tx` in uneven chunks, then closes.
fn produce(mut tx: RingTx, total: u64) -> RingTx {
    let mut sent = 0u64;
    let mut round = 0u64;
    let mut buf = vec![0u8; 70_000];
    while sent < total {
        round += 1;
        let want = ((round * 7919) % 70_000 + 1).min(total - sent) as usize;
        for (k, b) in buf[..want].iter_mut().enumerate() {
            *b = pattern(sent + k as u64);
        }
        let n = tx.write(&buf[..want]).expect("tail in range");
        if n == 0 {
            thread::yield_now();
        }
        sent += n as u64;
    }
    tx.close();
    tx
}

/// Reads to end of stream, checking the pattern; returns the count.
fn consume(mut rx: RingRx) -> u64 {
    let mut got = 0u64;
    let mut round = 0u64;
    let mut buf = vec![0u8; 70_000];
    loop {
        round += 1;
        let len = ((round * 104_729) % 70_000 + 1) as usize;
        let n = rx.read(&mut buf[..len]).expect("head in range");
        if n == 0 {
            if rx.at_end().expect("head in range") {
                return got;
            }
            thread::yield_now();
            continue;
        }
        for (k, b) in buf[..n].iter().enumerate() {
            assert_eq!(*b, pattern(got + k as u64), "byte {}", got + k as u64);
        }
        got += n as u64;
    }
}

#[test]
fn a_stream_crosses_the_ring_many_times_both_ways() {
    let f = window_file(WindowKind::Pair, 3, 4, MIB, 1);
    let a = Arc::new(Window::open_path(f.path()).expect("side A"));
    let b = Arc::new(Window::open_path(f.path()).expect("side B"));
    let slot = 5;
    const TOTAL: u64 = 3 * MIB + 12_345;
    // A produces ring 0 (lower CID), B ring 1.
    let a_tx = RingTx::new(Arc::clone(&a), slot, 0).expect("ring");
    let b_rx = RingRx::new(Arc::clone(&b), slot, 0).expect("ring");
    let b_tx = RingTx::new(Arc::clone(&b), slot, 1).expect("ring");
    let a_rx = RingRx::new(Arc::clone(&a), slot, 1).expect("ring");
    let p1 = thread::spawn(move || produce(a_tx, TOTAL));
    let c1 = thread::spawn(move || consume(b_rx));
    let p2 = thread::spawn(move || produce(b_tx, TOTAL));
    let c2 = thread::spawn(move || consume(a_rx));
    assert_eq!(c1.join().expect("consumer"), TOTAL);
    assert_eq!(c2.join().expect("consumer"), TOTAL);
    let tx = p1.join().expect("producer");
    const { assert!(TOTAL / RING_SIZE > 40, "wraps many times") };
    assert_eq!(tx.head(), TOTAL);
    // Nothing outside slot 5's data areas was written: slot 4 and 6 are still zero.
    let g = Geometry::new(MIB).expect("geometry");
    let raw = raw(f.path());
    for s in [4u32, 6] {
        let start = g.slot_offset(s).expect("slot");
        let mut bytes = vec![0u8; Geometry::slot_size() as usize];
        std::os::unix::fs::FileExt::read_exact_at(&raw, &mut bytes, start).expect("read");
        assert!(bytes.iter().all(|b| *b == 0), "slot {s} touched");
    }
    p2.join().expect("producer");
}

#[test]
fn a_head_with_more_than_the_ring_in_flight_is_a_broken_ring() {
    let f = window_file(WindowKind::Pair, 3, 4, MIB, 1);
    let w = Arc::new(Window::open_path(f.path()).expect("window"));
    let raw = raw(f.path());
    let mut rx = RingRx::new(Arc::clone(&w), 2, 0).expect("ring");
    let mut buf = vec![0xAAu8; 2 * RING_SIZE as usize];

    // Exactly the ring in flight is fine.
    set_head(&raw, MIB, 2, 0, RING_SIZE);
    assert_eq!(rx.read(&mut buf[..10]).expect("in range"), 10);
    // One byte more than the ring past the consumer's tail: broken, nothing read.
    buf.fill(0xAA);
    set_head(&raw, MIB, 2, 0, 10 + RING_SIZE + 1);
    let e = rx.read(&mut buf).expect_err("broken");
    assert_eq!(
        (e.head, e.tail, e.ring_size),
        (10 + RING_SIZE + 1, 10, RING_SIZE)
    );
    assert!(buf.iter().all(|b| *b == 0xAA), "nothing read");
    assert!(rx.readable().is_err());
    assert!(rx.at_end().is_err());
    assert!(rx.read(&mut []).is_err(), "an empty read still checks");
    // A head behind the tail (rewound).
    set_head(&raw, MIB, 2, 0, 5);
    assert!(rx.read(&mut buf).is_err());
    set_head(&raw, MIB, 2, 0, u64::MAX);
    assert!(rx.read(&mut buf).is_err());
    assert_eq!(rx.tail(), 10, "the private tail did not move");
}

#[test]
fn a_tail_rewound_or_jumped_is_a_broken_ring() {
    let f = window_file(WindowKind::Pair, 3, 4, MIB, 1);
    let w = Arc::new(Window::open_path(f.path()).expect("window"));
    let raw = raw(f.path());
    let mut tx = RingTx::new(Arc::clone(&w), 0, 1).expect("ring");
    assert_eq!(tx.write(&[1u8; 100]).expect("fresh"), 100);
    // A tail ahead of the head (jumped).
    set_tail(&raw, MIB, 0, 1, 101);
    assert!(tx.write(&[2u8; 10]).is_err());
    assert!(tx.space().is_err());
    assert!(tx.write(&[]).is_err(), "an empty write still checks");
    // A tail so far behind that more than the ring is in flight (rewound past the wrap).
    set_tail(&raw, MIB, 0, 1, 100u64.wrapping_sub(RING_SIZE + 1));
    assert!(tx.write(&[2u8; 10]).is_err());
    assert_eq!(tx.head(), 100, "nothing written");
    // In range again: writes the free space only.
    set_tail(&raw, MIB, 0, 1, 100);
    assert_eq!(
        tx.write(&vec![3u8; 2 * RING_SIZE as usize]).expect("ok"),
        RING_SIZE as usize
    );
    assert_eq!(tx.write(&[4u8; 1]).expect("full"), 0);
}

#[test]
fn a_sleeping_consumer_never_misses_data_that_raced_with_its_flag() {
    let f = window_file(WindowKind::Pair, 3, 4, MIB, 1);
    let a = Arc::new(Window::open_path(f.path()).expect("side A"));
    let b = Arc::new(Window::open_path(f.path()).expect("side B"));
    let mut tx = RingTx::new(a, 1, 0).expect("ring");
    let mut rx = RingRx::new(b, 1, 0).expect("ring");
    let (kick, woken) = mpsc::channel::<()>();
    const MSGS: u32 = 5_000;
    let producer = thread::spawn(move || {
        let mut kicks = 0u32;
        for i in 0..MSGS {
            // Jitter so that writes land before, during and after the consumer's sleep.
            for _ in 0..(i % 64) {
                std::hint::spin_loop();
            }
            assert_eq!(tx.write(&[i as u8]).expect("range"), 1);
            if tx.consumer_sleeping() {
                kicks += 1;
                let _ = kick.send(());
            }
            // Ping-pong: the next byte only after this one was taken, so a consumer that
            // missed this byte and sleeps is not rescued by the next write's kick.
            let deadline = Instant::now() + Duration::from_secs(10);
            while tx.peer_tail().expect("range") != tx.head() {
                assert!(
                    Instant::now() < deadline,
                    "byte {i} never taken: lost wake-up"
                );
                std::hint::spin_loop();
            }
        }
        tx.close();
        if tx.consumer_sleeping() {
            let _ = kick.send(());
        }
        kicks
    });
    let mut got = 0u32;
    let mut sleeps = 0u32;
    let mut buf = [0u8; 7];
    loop {
        let n = rx.read(&mut buf).expect("range");
        for b in &buf[..n] {
            assert_eq!(*b, got as u8);
            got += 1;
        }
        if n > 0 {
            continue;
        }
        if rx.at_end().expect("range") {
            break;
        }
        if rx.set_sleeping(true).expect("range") {
            // Data (or the end) came between the empty read and the flag.
            rx.set_sleeping(false).expect("clear");
            continue;
        }
        sleeps += 1;
        // A lost wake-up leaves the consumer here with data in the ring.
        woken
            .recv_timeout(Duration::from_secs(10))
            .expect("woken: no lost wake-up");
        rx.set_sleeping(false).expect("clear");
    }
    let kicks = producer.join().expect("producer");
    assert_eq!(got, MSGS);
    assert!(
        sleeps > 0 && kicks > 0,
        "the consumer slept ({sleeps}) and was kicked ({kicks})"
    );
}
