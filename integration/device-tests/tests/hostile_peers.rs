//! One VM must not use up another's limits (SPEC.md §10 RST order, §11 limits): the RSTs a peer
//! provokes never stall a VM's own TX queue, one peer cannot take all of a VM's connections,
//! a connection that never gets its RESPONSE expires, an RST never overtakes data held for its
//! connection, and host connections of a VM share one byte budget.

use std::io::Read;
use std::time::Duration;

use harness::peers::{connect_peers, drive, send_and_expect};
use harness::{random_bytes, wait_until, Harness, VmSpec};
use sockbypass_frontend::{DriverConfig, StreamState, TestVm, TxLayout};
use sockbypass_wire::{Op, PacketHeader};

const T: Duration = Duration::from_secs(30);

fn header(op: Op, from: (u64, u32), to: (u64, u32), len: u32) -> PacketHeader {
    let mut h = PacketHeader::stream(op, from.0, from.1, to.0, to.1);
    h.set_len(len).set_credit(256 * 1024, 0);
    h
}

/// A VM whose driver posts `initial` RX buffers, then none until told, advertising `buf_alloc`.
fn starved(h: &Harness, name: &str, initial: u16, buf_alloc: u32) -> TestVm {
    let driver = DriverConfig {
        buf_alloc,
        ..DriverConfig::default()
    };
    h.vm_without_rx_buffers(name, initial, driver)
}

#[test]
fn rsts_a_peer_provokes_never_stall_a_vms_own_tx() {
    const PROVOKED: u32 = 400;
    let h = Harness::start(&[
        VmSpec::new("a", 3),
        VmSpec::new("b", 4),
        VmSpec::new("x", 5),
    ]);
    let mut a = h.vm("a");
    // b opens a connection to a (its RESPONSE takes b's one RX buffer), then posts no more.
    let mut b = starved(&h, "b", 1, 256 * 1024);
    let (ba_b, ba_a) = connect_peers(&mut b, &mut a, 5000, T);
    assert_eq!(b.driver().rx_posted(), 0);
    let mut x = h.vm_with(
        "x",
        DriverConfig {
            rst_unknown_packets: false,
            ..DriverConfig::default()
        },
    );
    // Each round: a REQUEST to b (held: b has no RX buffer), then data on that connection
    // before any RESPONSE, which resets it: one RST for x, one for b.
    for port in 0..PROVOKED {
        let d = x.driver_mut();
        d.send_raw(
            &header(Op::Request, (5, 20_000 + port), (4, 7000), 0),
            &[],
            &TxLayout::Single,
        )
        .expect("REQUEST");
        d.send_raw(
            &header(Op::Rw, (5, 20_000 + port), (4, 7000), 1),
            b"!",
            &TxLayout::Single,
        )
        .expect("RW");
        if port % 32 == 31 {
            d.flush_tx(T).expect("x's chains come back");
        }
    }
    x.driver_mut().flush_tx(T).expect("x's chains come back");
    assert!(
        wait_until(T, || h.counters("x").drop_protocol >= u64::from(PROVOKED)),
        "every connection was reset: {:?}",
        h.counters("x")
    );
    let gb = h.gauges("b");
    println!("b after the storm: {gb:?}, counters {:?}", h.counters("b"));
    assert!(
        gb.queued_replies > sockbypassd::switch::replies::REPLY_QUEUE_CAP,
        "the storm queued more RSTs for b than its own room: {gb:?}"
    );
    assert_eq!(
        gb.inbound_queued, 0,
        "the reset REQUESTs went back to x: {gb:?}"
    );
    assert_eq!(h.gauges("x").held_chains, 0);
    // b's own TX is not stalled by them: its data reaches a.
    send_and_expect(&mut b, ba_b, &mut a, ba_a, b"b still talks", T);
    // b posts buffers and drains the RSTs; then a answers over the same connection.
    b.driver_mut().set_rx_refill(true);
    b.driver_mut().post_rx_buffers(64).expect("RX buffers");
    send_and_expect(&mut a, ba_a, &mut b, ba_b, b"a answers", T);
    drive(&mut [&mut b], T, "b to take every RST", |_| {
        h.gauges("b").queued_replies == 0
    });
}

#[test]
fn one_peer_cannot_take_all_of_a_vms_connections() {
    let h = Harness::start(&[
        VmSpec::new("a", 3),
        VmSpec::new("b", 4).max_conns(8).max_conns_per_peer(4),
        VmSpec::new("x", 5),
    ]);
    let (mut a, mut b, mut x) = (h.vm("a"), h.vm("b"), h.vm("x"));
    for i in 0..4 {
        connect_peers(&mut x, &mut b, 6000 + i, T);
    }
    // The fifth from x is refused at once...
    b.driver_mut().listen(6004).expect("listen");
    let refused = x.driver_mut().connect(4, 6004).expect("REQUEST");
    drive(
        &mut [&mut x, &mut b],
        T,
        "x's fifth connection to be refused",
        |vms| vms[0].driver().state(refused).expect("state") == StreamState::Reset,
    );
    assert_eq!(h.counters("x").drop_conn_limit, 1);
    assert_eq!(h.gauges("b").peer_conns, 4);
    // ...while a still gets in.
    let (ab_a, ab_b) = connect_peers(&mut a, &mut b, 7000, T);
    send_and_expect(&mut a, ab_a, &mut b, ab_b, b"room for me", T);
    assert_eq!(h.gauges("b").peer_conns, 5);
}

#[test]
fn a_connection_that_never_gets_its_response_expires() {
    let h = {
        let vms = [VmSpec::new("b", 4), VmSpec::new("x", 5)];
        let mut config = harness::harness_config(&vms, harness::test_poll_config());
        config.0.half_open_timeout_ms = 300;
        Harness::start_config(config)
    };
    let mut x = h.vm("x");
    // b's driver neither answers nor resets a REQUEST for a port it does not listen on.
    let mut b = h.vm_with(
        "b",
        DriverConfig {
            rst_unknown_packets: false,
            ..DriverConfig::default()
        },
    );
    let id = x.driver_mut().connect(4, 6000).expect("REQUEST");
    assert!(wait_until(T, || h.gauges("b").peer_conns == 1));
    drive(
        &mut [&mut x, &mut b],
        T,
        "the half-open connection to expire",
        |vms| vms[0].driver().state(id).expect("state") == StreamState::Reset,
    );
    assert_eq!(h.counters("x").expired_half_open, 1);
    assert_eq!((h.gauges("x").peer_conns, h.gauges("b").peer_conns), (0, 0));
    // An answered connection does not expire.
    let (xb_x, xb_b) = connect_peers(&mut x, &mut b, 6001, T);
    std::thread::sleep(Duration::from_millis(600));
    send_and_expect(&mut x, xb_x, &mut b, xb_b, b"still here", T);
    assert_eq!(h.counters("x").expired_half_open, 1);
}

#[test]
fn an_rst_never_overtakes_data_held_for_its_connection() {
    const CREDIT: u32 = 4096;
    let h = Harness::start(&[VmSpec::new("b", 4), VmSpec::new("x", 5)]);
    let mut x = h.vm("x");
    let mut b = starved(&h, "b", 1, CREDIT);
    let (xb_x, xb_b) = connect_peers(&mut x, &mut b, 6000, T);
    let port = x.driver().stream_info(xb_x).expect("info").local_port;
    // All of b's credit, held (b has no RX buffer)...
    let data = random_bytes(CREDIT as usize, 3);
    x.driver_mut()
        .send_raw(
            &header(Op::Rw, (5, port), (4, 6000), CREDIT),
            &data,
            &TxLayout::Single,
        )
        .expect("RW");
    assert!(wait_until(T, || h.gauges("b").inbound_queued == 1));
    // ...then one byte more: a credit violation resets the connection on both sides.
    x.driver_mut()
        .send_raw(
            &header(Op::Rw, (5, port), (4, 6000), 1),
            b"!",
            &TxLayout::Single,
        )
        .expect("RW");
    assert!(wait_until(T, || h.counters("x").drop_credit_violation == 1));
    // The held data went back to x undelivered: the RST is all b gets.
    let g = (h.gauges("x"), h.gauges("b"));
    assert_eq!((g.0.held_chains, g.1.inbound_queued), (0, 0), "{g:?}");
    b.driver_mut().set_rx_refill(true);
    b.driver_mut().post_rx_buffers(16).expect("RX buffers");
    drive(&mut [&mut x, &mut b], T, "b's side to be reset", |vms| {
        vms[1].driver().state(xb_b).expect("state") == StreamState::Reset
    });
    let after_rst: Vec<_> = b
        .driver()
        .received_raw()
        .iter()
        .filter(|p| p.header.src_port() == port)
        .map(|p| p.op())
        .collect();
    assert_eq!(
        after_rst.last(),
        Some(&Some(Op::Rst)),
        "b's last packet of the connection is the RST: {after_rst:?}"
    );
    assert!(
        !after_rst.contains(&Some(Op::Rw)),
        "no data of the reset connection reached b: {after_rst:?}"
    );
    assert_eq!(h.counters("b").rx_bytes, 0);
}

#[test]
fn host_connections_of_a_vm_share_one_byte_budget() {
    // Two full grants (2 × 256 KiB), and a bit: a third connection gets what is left.
    const BUDGET: u64 = 2 * 256 * 1024 + 8192;
    let h = Harness::start(&[VmSpec::new("x", 5).host_buffer_bytes(BUDGET)]);
    let mut x = h.vm("x");
    let listener = h.host_listener("x", 9000);
    let mut hosts = Vec::new();
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(
            x.driver_mut()
                .connect_blocking(2, 9000, T)
                .expect("connect"),
        );
        hosts.push(listener.accept().expect("accept").0);
    }
    assert_eq!(h.gauges("x").host_buffer_granted, BUDGET);
    // The budget is spent: a fourth connection is refused.
    let err = x.driver_mut().connect_blocking(2, 9000, T);
    assert!(err.is_err(), "a fourth connection was accepted");
    assert_eq!(h.counters("x").drop_host_budget, 1);
    // The third connection's credit is the rest of the budget, 8 KiB: the guest learns it.
    let third = x.driver().stream_info(ids[2]).expect("info");
    assert_eq!(third.peer_buf_alloc, 8192, "{third:?}");
    // Closing one gives its grant back.
    x.driver_mut().reset_stream(ids[0]).expect("reset");
    x.driver_mut().flush_tx(T).expect("flush");
    let mut buf = [0u8; 1];
    let _ = hosts[0].read(&mut buf);
    assert!(wait_until(T, || h.gauges("x").host_buffer_granted
        == BUDGET - 256 * 1024));
    x.driver_mut()
        .connect_blocking(2, 9000, T)
        .expect("room again");
}

#[test]
fn a_receiver_that_posts_no_rx_buffers_holds_its_peers_only_so_long() {
    let h = {
        let vms = [
            VmSpec::new("a", 3),
            VmSpec::new("b", 4),
            VmSpec::new("c", 5),
        ];
        let mut config = harness::harness_config(&vms, harness::test_poll_config());
        config.0.rx_stall_timeout_ms = 500;
        Harness::start_config(config)
    };
    let (mut a, mut c) = (h.vm("a"), h.vm("c"));
    let mut b = starved(&h, "b", 1, 256 * 1024);
    let (ab_a, ab_b) = connect_peers(&mut a, &mut b, 6000, T);
    let (ac_a, ac_c) = connect_peers(&mut a, &mut c, 6001, T);
    a.driver_mut()
        .send_all(ab_a, &random_bytes(64 * 1024, 9), T)
        .expect("a queues data for b");
    assert!(wait_until(T, || h.gauges("a").held_chains > 0));
    // a's other peer is served meanwhile.
    send_and_expect(&mut a, ac_a, &mut c, ac_c, b"c is fine", T);
    // After the timeout, the connection is reset and a gets its descriptors back.
    drive(&mut [&mut a], T, "a's connection to b to be reset", |vms| {
        vms[0].driver().state(ab_a).expect("state") == StreamState::Reset
    });
    assert!(wait_until(T, || h.gauges("a").held_chains == 0));
    assert_eq!(h.gauges("b").inbound_queued, 0);
    assert_eq!(h.counters("b").rx_stall_resets, 1);
    assert_eq!(h.gauges("b").peer_conns, 0);
    // b learns it too, once it posts buffers; a and c go on.
    b.driver_mut().set_rx_refill(true);
    b.driver_mut().post_rx_buffers(16).expect("RX buffers");
    drive(&mut [&mut b], T, "b's side to be reset", |vms| {
        vms[0].driver().state(ab_b).expect("state") == StreamState::Reset
    });
    send_and_expect(&mut c, ac_c, &mut a, ac_a, b"and back", T);
}
