//! A hostile guest's ring state (SPEC.md §9.1 broken queues, §5.3 held packets, §11 walk
//! budgets): a jumped available index, a head published again while in flight, an event ring
//! full of unusable buffers. Each breaks only the VM that did it; the other VMs keep streaming,
//! and the daemon stops when asked. (A TX ring refilled as fast as the device drains it needs a
//! poll thread, so that test is in `poll_engine.rs`, which sets its own poll mode.)

use std::time::{Duration, Instant};

use harness::peers::{connect_peers, drive, send_and_expect};
use harness::{random_bytes, wait_until, Harness, VmSpec};
use sockbypass_frontend::{Buffer, DriverConfig, StreamId, StreamState, TestVm, TxLayout};
use sockbypass_wire::consts::{RX_QUEUE, TX_QUEUE};
use sockbypass_wire::{Op, PacketHeader};

const T: Duration = Duration::from_secs(30);

fn three_vms() -> Harness {
    Harness::start(&[
        VmSpec::new("a", 3),
        VmSpec::new("b", 4),
        VmSpec::new("x", 5),
    ])
}

/// a and b exchange a few messages both ways over `ab`: the switch still serves them.
fn a_and_b_still_talk(a: &mut TestVm, ab_a: (StreamId, StreamId), b: &mut TestVm, round: u64) {
    for i in 0..3 {
        let data = random_bytes(8 * 1024, round * 10 + i);
        send_and_expect(a, ab_a.0, b, ab_a.1, &data, T);
        send_and_expect(b, ab_a.1, a, ab_a.0, &data, T);
    }
}

/// Sets queue `queue` of `x`'s driver's available index past anything the device may accept,
/// and kicks.
fn jump_avail_index(x: &mut TestVm, queue: usize) {
    let d = x.driver_mut();
    let q = match queue {
        RX_QUEUE => d.rx_queue_mut(),
        _ => d.tx_queue_mut(),
    };
    let jumped = q.next_avail().wrapping_add(q.size()).wrapping_add(7);
    q.set_avail_idx(jumped).expect("jump the index");
    q.notify().expect("kick");
}

/// After x broke a queue: x is detached and counted once, b's connection with x is reset,
/// a and b keep talking, x stays detached through more kicks, and a device reset brings x
/// back.
fn x_is_detached_until_it_resets(
    h: &Harness,
    a: &mut TestVm,
    b: &mut TestVm,
    x: &mut TestVm,
    ab: (StreamId, StreamId),
    xb_b: StreamId,
) {
    assert!(
        wait_until(T, || !h.is_attached("x")),
        "x was not detached: {:?}",
        h.counters("x")
    );
    assert_eq!(h.counters("x").queue_broken, 1);
    drive(
        &mut [&mut *b],
        T,
        "b's connection with x to be reset",
        |vms| vms[0].driver().state(xb_b).expect("state") == StreamState::Reset,
    );
    a_and_b_still_talk(a, ab, b, 1);
    // More kicks from x's broken rings: it stays detached (not re-attached, not re-broken).
    for q in [TX_QUEUE, RX_QUEUE] {
        let d = x.driver_mut();
        let queue = if q == TX_QUEUE {
            d.tx_queue_mut()
        } else {
            d.rx_queue_mut()
        };
        queue.notify().expect("kick");
    }
    a_and_b_still_talk(a, ab, b, 2);
    assert!(!h.is_attached("x"), "x re-attached without a reset");
    assert_eq!(h.counters("x").queue_broken, 1, "x broke only once");
    assert_eq!(
        h.gauges("b").peer_conns,
        1,
        "only a↔b is left: {:?}",
        h.gauges("b")
    );

    x.guest_reset().expect("x resets its device");
    h.wait_attached("x");
    let (xb2_x, xb2_b) = connect_peers(x, b, 6001, T);
    send_and_expect(x, xb2_x, b, xb2_b, b"back after the reset", T);
}

#[test]
fn a_jumped_tx_avail_index_detaches_only_that_vm() {
    let h = three_vms();
    let (mut a, mut b, mut x) = (h.vm("a"), h.vm("b"), h.vm("x"));
    let ab = connect_peers(&mut a, &mut b, 5000, T);
    let (_xb_x, xb_b) = connect_peers(&mut x, &mut b, 6000, T);
    a_and_b_still_talk(&mut a, ab, &mut b, 0);

    jump_avail_index(&mut x, TX_QUEUE);
    x_is_detached_until_it_resets(&h, &mut a, &mut b, &mut x, ab, xb_b);
}

#[test]
fn a_jumped_rx_avail_index_detaches_only_that_vm() {
    let h = three_vms();
    let (mut a, mut b, mut x) = (h.vm("a"), h.vm("b"), h.vm("x"));
    let ab = connect_peers(&mut a, &mut b, 5000, T);
    let (xb_x, xb_b) = connect_peers(&mut x, &mut b, 6000, T);
    a_and_b_still_talk(&mut a, ab, &mut b, 0);

    jump_avail_index(&mut x, RX_QUEUE);
    // The device meets the jumped RX ring when it next has something for x.
    b.driver_mut()
        .send_all(xb_b, b"anyone there?", T)
        .expect("b sends to x");
    let _ = xb_x;
    x_is_detached_until_it_resets(&h, &mut a, &mut b, &mut x, ab, xb_b);
}

/// The RW header of stream `from_port`→`to` of `cid` with `len` bytes.
fn rw(cid: u64, port: u32, to_cid: u64, to_port: u32, len: u32) -> PacketHeader {
    let mut h = PacketHeader::stream(Op::Rw, cid, port, to_cid, to_port);
    h.set_len(len).set_credit(256 * 1024, 0);
    h
}

#[test]
fn a_head_published_again_while_held_is_refused() {
    // Rounds of republished heads, each less than the queue size ahead (more would break the
    // queue, tested above).
    const ROUNDS: u64 = 5;
    const PER_ROUND: u64 = 200;
    let h = three_vms();
    let mut x = h.vm("x");
    // b posts RX buffers only when told to: x's packet waits for it, held.
    let mut b = h.vm_without_rx_buffers("b", 1, DriverConfig::default());
    let (xb_x, xb_b) = connect_peers(&mut x, &mut b, 6000, T);
    assert_eq!(b.driver().rx_posted(), 0);
    let port = x.driver().stream_info(xb_x).expect("info").local_port;

    let payload = random_bytes(1000, 7);
    let head = x
        .driver_mut()
        .send_raw(&rw(5, port, 4, 6000, 1000), &payload, &TxLayout::Single)
        .expect("send");
    assert!(
        wait_until(T, || h.gauges("x").held_chains == 1),
        "x's packet is held for b: {:?}",
        h.gauges("x")
    );
    // x publishes the same head again and again while the device still holds it.
    for round in 1..=ROUNDS {
        let q = x.driver_mut().tx_queue_mut();
        for _ in 0..PER_ROUND {
            q.publish_head(head).expect("publish");
        }
        q.notify().expect("kick");
        assert!(
            wait_until(T, || h.counters("x").drop_head_in_flight
                == round * PER_ROUND),
            "every republished head refused: {:?}",
            h.counters("x")
        );
    }
    let k = h.counters("x");
    assert_eq!(
        (k.drop_head_in_flight, k.queue_broken),
        (ROUNDS * PER_ROUND, 0)
    );
    let (gx, gb) = (h.gauges("x"), h.gauges("b"));
    assert_eq!(gx.held_chains, 1, "x: {gx:?}");
    assert_eq!(gb.inbound_queued, 1, "b: {gb:?}");

    // b posts buffers: the packet arrives once, whole.
    b.driver_mut().set_rx_refill(true);
    b.driver_mut().post_rx_buffers(16).expect("RX buffers");
    let got = b
        .driver_mut()
        .recv_exact(xb_b, payload.len(), T)
        .expect("the held packet");
    assert_eq!(got, payload);
    assert!(wait_until(T, || h.gauges("x").held_chains == 0));
    // Nothing more than the one packet: a second copy would show as more bytes.
    let settle = Instant::now() + Duration::from_millis(300);
    while Instant::now() < settle {
        x.driver_mut()
            .pump(Duration::from_millis(5))
            .expect("pump x");
        b.driver_mut()
            .pump(Duration::from_millis(5))
            .expect("pump b");
    }
    assert_eq!(b.driver().buffered(xb_b).expect("buffered"), 0);
    assert_eq!(h.counters("b").rx_bytes, 1000);
}

#[test]
fn an_event_ring_of_unusable_buffers_is_handed_back_and_the_reset_still_arrives() {
    // A fill takes at most 64 event buffers (SPEC.md §9.2) and hands the rest to a later
    // pass: x's TRANSPORT_RESET must still reach the one good buffer behind 200 bad ones,
    // with no kick from x after the first.
    const UNUSABLE: u64 = 200;
    let h = Harness::start(&[VmSpec::new("a", 3), VmSpec::new("x", 5)]);
    let mut a = h.vm("a");
    let mut x = h.vm_with(
        "x",
        DriverConfig {
            event_queue_size: 256,
            event_buffers: Some(0),
            ..DriverConfig::default()
        },
    );
    let (ida, idx) = connect_peers(&mut a, &mut x, 5000, T);
    send_and_expect(&mut x, idx, &mut a, ida, b"rings in use", T);
    x.driver_mut().flush_tx(T).expect("flush");

    // Read-only event buffers (the device may only write an event there), then a good one.
    let buf = x.ram().alloc(8, 8).expect("an event buffer");
    let q = x.driver_mut().event_queue_mut();
    for _ in 0..UNUSABLE {
        q.add_chain(&[Buffer::readable(buf.addr, 8)])
            .expect("unusable buffer");
    }
    q.add_chain(&[Buffer::writable(buf.addr, 8)])
        .expect("good buffer");
    // The backend "restarts" under x's running driver: a TRANSPORT_RESET is owed, and the
    // event ring holds 201 buffers.
    x.reconnect_keep_rings()
        .expect("reattach with the same rings");
    assert!(
        wait_until(T, || h.counters("x").events_sent == 1),
        "the reset reached the good buffer: {:?}",
        h.counters("x")
    );
    let k = h.counters("x");
    assert_eq!(
        k.rx_bad_chain, UNUSABLE,
        "every bad buffer was seen once: {k:?}"
    );
    let q = x.driver_mut().event_queue_mut();
    assert_eq!(
        u64::from(q.used_idx().expect("used idx")),
        UNUSABLE + 1,
        "every buffer came back"
    );
    // a, whose connection with x the reset ended, still reaches x on a new one.
    let (ida2, idx2) = connect_peers(&mut a, &mut x, 5001, T);
    send_and_expect(&mut a, ida2, &mut x, idx2, b"after", T);
}
