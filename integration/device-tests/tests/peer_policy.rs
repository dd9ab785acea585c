//! Who may reach whom, and every refusal being an RST (SPEC.md §4 identity and routing, §4.1
//! connection table, §7 policy, §10 RST cases, §11 limits): spoofed source CIDs, groups, `ports=`,
//! `max_conns`, unknown and detached CIDs, and packets naming no connection.

use std::time::Duration;

use harness::peers::{connect_peers, drive, send_and_expect};
use harness::{ping_host, wait_until, Harness, VmSpec};
use sockbypass_frontend::{DriverError, StreamState, TestVm, TxLayout};
use sockbypass_wire::{Op, PacketHeader};

const T: Duration = Duration::from_secs(20);

fn three_vms() -> Harness {
    Harness::start(&[
        VmSpec::new("a", 3),
        VmSpec::new("b", 4),
        VmSpec::new("c", 5),
    ])
}

/// `vm` connects to `cid:port` and must be refused with an RST.
fn assert_refused(vm: &mut TestVm, cid: u64, port: u32) {
    match vm.driver_mut().connect_blocking(cid, port, T) {
        Err(DriverError::Refused { .. }) => {}
        other => panic!("connect to {cid}:{port} was not refused with RST: {other:?}"),
    }
}

#[test]
fn spoofed_source_cids_are_dropped_counted_and_never_delivered() {
    let h = three_vms();
    let (mut a, mut b, mut c) = (h.vm("a"), h.vm("b"), h.vm("c"));
    // A real connection c → b that a tries to inject into.
    let (cb_c, cb_b) = connect_peers(&mut c, &mut b, 5000, T);
    let c_port = c.driver().stream_info(cb_c).expect("info").local_port;

    let mut forged = Vec::new();
    // REQUESTs claiming to come from c, from b itself, and from a CID nobody has.
    for src in [5, 4, 99] {
        let mut hdr = PacketHeader::stream(Op::Request, src, 7000, 4, 5000);
        hdr.set_credit(65536, 0);
        forged.push((hdr, Vec::new()));
    }
    // Data and an RST injected into c's connection, with c's addresses.
    let mut rw = PacketHeader::stream(Op::Rw, 5, c_port, 4, 5000);
    rw.set_len(6).set_credit(65536, 0);
    forged.push((rw, b"forged".to_vec()));
    forged.push((
        PacketHeader::stream(Op::Rst, 5, c_port, 4, 5000),
        Vec::new(),
    ));
    for (hdr, payload) in &forged {
        a.driver_mut()
            .send_raw(hdr, payload, &TxLayout::Single)
            .expect("raw send");
    }
    // a's TX queue is walked in order: once a's own connection to b is up, every forged packet
    // was handled. (connect_peers also fails if b accepted a forged REQUEST first.)
    let (_ab_a, _ab_b) = connect_peers(&mut a, &mut b, 5000, T);
    assert_eq!(h.counters("a").drop_spoofed_src, forged.len() as u64);

    // c's connection is intact: it carries exactly what c sends.
    send_and_expect(&mut c, cb_c, &mut b, cb_b, b"real", T);
    assert_eq!(
        b.driver().buffered(cb_b).expect("buffered"),
        0,
        "no forged bytes"
    );
    assert_eq!(
        b.driver().state(cb_b).expect("state"),
        StreamState::Connected
    );
    // Nothing was answered, to a or to c, and b saw no packet from a forged source.
    assert_eq!(a.driver().stats().rst_received, 0, "a got no answer");
    assert_eq!(c.driver().stats().rst_received, 0, "c got nothing");
    assert_eq!(b.driver_mut().accept(5000).expect("accept"), None);
    for p in b.driver().received_raw() {
        let (src, port) = (p.header.src_cid(), p.header.src_port());
        assert!(
            src == 3 || (src == 5 && port == c_port),
            "b received a packet from {src}:{port}"
        );
    }
    assert_eq!(h.counters("a").rst_sent, 0);
}

#[test]
fn vms_reach_each_other_only_within_a_shared_group() {
    let h = Harness::start(&[
        VmSpec::new("a", 3).groups(&["red"]),
        VmSpec::new("b", 4).groups(&["red", "blue"]),
        VmSpec::new("c", 5).groups(&["blue"]),
        VmSpec::new("d", 6).groups(&[]),
    ]);
    let (mut a, mut b, mut c, mut d) = (h.vm("a"), h.vm("b"), h.vm("c"), h.vm("d"));
    for vm in [&mut a, &mut b, &mut c, &mut d] {
        vm.driver_mut().listen(5000).expect("listen");
    }
    // A shared group: allowed, either way.
    connect_peers(&mut a, &mut b, 5000, T);
    connect_peers(&mut b, &mut a, 5000, T);
    connect_peers(&mut c, &mut b, 5000, T);
    connect_peers(&mut b, &mut c, 5000, T);
    // No shared group: an RST, counted on the requester, and nothing reaches the target.
    let before: Vec<u64> = ["a", "b", "c", "d"]
        .iter()
        .map(|n| h.counters(n).rx_packets)
        .collect();
    assert_refused(&mut a, 5, 5000);
    assert_refused(&mut c, 3, 5000);
    assert_refused(&mut a, 6, 5000);
    assert_refused(&mut d, 4, 5000);
    assert_refused(&mut b, 6, 5000);
    let after: Vec<u64> = ["a", "b", "c", "d"]
        .iter()
        .map(|n| h.counters(n).rx_packets)
        .collect();
    // Each refused VM got exactly its RSTs; the targets got nothing.
    assert_eq!(after[0] - before[0], 2, "a: two RSTs");
    assert_eq!(after[1] - before[1], 1, "b: one RST");
    assert_eq!(after[2] - before[2], 1, "c: one RST");
    assert_eq!(after[3] - before[3], 1, "d: one RST");
    for (vm, n) in [("a", 2), ("b", 1), ("c", 1), ("d", 1)] {
        assert_eq!(h.counters(vm).drop_policy, n, "{vm}: drop_policy");
        assert_eq!(h.counters(vm).rst_sent, n, "{vm}: rst_sent");
    }
    for vm in [&mut a, &mut b, &mut c, &mut d] {
        assert_eq!(vm.driver_mut().accept(5000).expect("accept"), None);
    }
}

#[test]
fn ports_list_refuses_other_ports_with_rst_and_allows_listed_ones() {
    let h = Harness::start(&[
        VmSpec::new("a", 3),
        VmSpec::new("b", 4).ports(&[5000, 5001]),
    ]);
    let (mut a, mut b) = (h.vm("a"), h.vm("b"));
    // b listens on 6000 too: only the policy refuses it.
    b.driver_mut().listen(6000).expect("listen");
    let b_rx = h.counters("b").rx_packets;
    assert_refused(&mut a, 4, 6000);
    assert_eq!(h.counters("a").drop_policy, 1);
    assert_eq!(
        h.counters("b").rx_packets,
        b_rx,
        "the REQUEST never reached b"
    );
    b.driver_mut().poll().expect("poll");
    assert_eq!(b.driver_mut().accept(6000).expect("accept"), None);

    // A listed port works, data included.
    let (ida, idb) = connect_peers(&mut a, &mut b, 5001, T);
    send_and_expect(&mut a, ida, &mut b, idb, b"to a listed port", T);
    // The list restricts only connections to b: b reaches any port of a.
    let (idb2, ida2) = connect_peers(&mut b, &mut a, 7777, T);
    send_and_expect(&mut b, idb2, &mut a, ida2, b"out", T);
    assert_eq!(h.counters("a").drop_policy, 1);
    assert_eq!(h.counters("b").drop_policy, 0);
}

#[test]
fn connection_limit_refuses_past_max_conns_and_frees_on_close() {
    let h = Harness::start(&[VmSpec::new("a", 3).max_conns(4), VmSpec::new("b", 4)]);
    let (mut a, mut b) = (h.vm("a"), h.vm("b"));
    let conns: Vec<_> = (0..4)
        .map(|_| connect_peers(&mut a, &mut b, 5000, T))
        .collect();
    assert_eq!(h.gauges("a").peer_conns, 4);
    assert_refused(&mut a, 4, 5000);
    assert_eq!(h.counters("a").drop_conn_limit, 1);
    assert_eq!(h.gauges("a").peer_conns, 4);
    b.driver_mut().poll().expect("poll");
    assert_eq!(
        b.driver_mut().accept(5000).expect("accept"),
        None,
        "b saw no 5th"
    );

    // Host connections are counted apart from peer connections.
    let listener = h.host_listener("a", 9000);
    ping_host(
        &mut a,
        &listener,
        9000,
        T,
        "a host connection while at the peer limit",
    );

    // Closing one peer connection makes room for a new one.
    let (first, _) = conns[0];
    a.driver_mut().close(first).expect("close");
    drive(&mut [&mut a, &mut b], T, "the close", |vms| {
        vms[0].driver().state(first).expect("state") == StreamState::Closed
    });
    assert!(
        wait_until(T, || h.gauges("a").peer_conns == 3),
        "entry freed: {:?}",
        h.gauges("a")
    );
    let (ida, idb) = connect_peers(&mut a, &mut b, 5000, T);
    send_and_expect(&mut a, ida, &mut b, idb, b"fifth", T);
    assert_eq!(h.counters("a").drop_conn_limit, 1);
}

#[test]
fn a_full_receiver_refuses_further_requests() {
    let h = Harness::start(&[
        VmSpec::new("a", 3),
        VmSpec::new("b", 4).max_conns(2),
        VmSpec::new("c", 5),
    ]);
    let (mut a, mut b, mut c) = (h.vm("a"), h.vm("b"), h.vm("c"));
    connect_peers(&mut a, &mut b, 5000, T);
    connect_peers(&mut c, &mut b, 5000, T);
    assert_eq!(h.gauges("b").peer_conns, 2);
    assert_refused(&mut c, 4, 5000);
    assert_eq!(
        h.counters("c").drop_conn_limit,
        1,
        "counted on the requester"
    );
    assert_eq!(h.gauges("b").peer_conns, 2);
    b.driver_mut().poll().expect("poll");
    assert_eq!(b.driver_mut().accept(5000).expect("accept"), None);
}

#[test]
fn requests_to_unknown_or_detached_vms_get_rst() {
    let h = three_vms();
    let mut a = h.vm("a");
    // Nobody has CID 99.
    assert_refused(&mut a, 99, 5000);
    assert_eq!(h.counters("a").drop_peer_unreachable, 1);
    // b is configured but never attached.
    assert_refused(&mut a, 4, 5000);
    assert_eq!(h.counters("a").drop_peer_unreachable, 2);
    // c attaches, serves, and goes away.
    let mut c = h.vm("c");
    let (ida, _) = connect_peers(&mut a, &mut c, 5000, T);
    c.disconnect();
    assert!(wait_until(T, || !h.is_attached("c")), "c detached");
    a.driver_mut()
        .wait_state(ida, |s| s == StreamState::Reset, T)
        .expect("the open connection was reset");
    assert_refused(&mut a, 5, 5000);
    assert_eq!(h.counters("a").drop_peer_unreachable, 3);
    assert!(h.counters("a").rst_sent >= 3);
    assert_eq!(h.gauges("a").peer_conns, 0);
}

#[test]
fn packets_naming_no_connection_get_rst_and_never_reach_the_peer() {
    let h = Harness::start(&[VmSpec::new("a", 3), VmSpec::new("b", 4)]);
    let (mut a, mut b) = (h.vm("a"), h.vm("b"));
    b.driver_mut().listen(5000).expect("listen");
    let b_rx = h.counters("b").rx_packets;
    let ops = [
        Op::Response,
        Op::Rw,
        Op::Shutdown,
        Op::CreditUpdate,
        Op::CreditRequest,
    ];
    for (port, op) in (4000..).zip(ops) {
        let mut hdr = PacketHeader::stream(op, 3, port, 4, 5000);
        hdr.set_credit(65536, 0);
        let payload: &[u8] = if op == Op::Rw { b"data" } else { b"" };
        hdr.set_len(if op == Op::Rw { 4 } else { 0 });
        if op == Op::Shutdown {
            hdr.set_flags(3);
        }
        a.driver_mut()
            .send_raw(&hdr, payload, &TxLayout::Single)
            .expect("raw");
    }
    // An RST for no connection is dropped without an answer.
    a.driver_mut()
        .send_raw(
            &PacketHeader::stream(Op::Rst, 3, 4999, 4, 5000),
            &[],
            &TxLayout::Single,
        )
        .expect("raw");
    let d = a.driver_mut();
    d.wait_until(T, "an RST for each packet", |d| {
        let n = d
            .received_raw()
            .iter()
            .filter(|p| p.op() == Some(Op::Rst))
            .count();
        Ok((n >= ops.len()).then_some(()))
    })
    .expect("RSTs");
    // A barrier: a real connection after them.
    connect_peers(&mut a, &mut b, 5000, T);
    let rsts: Vec<_> = a
        .driver()
        .received_raw()
        .iter()
        .filter(|p| p.op() == Some(Op::Rst))
        .map(|p| (p.header.src_cid(), p.header.src_port(), p.header.dst_port()))
        .collect();
    let want: Vec<_> = (4000..)
        .take(ops.len())
        .map(|port| (4, 5000, port))
        .collect();
    assert_eq!(
        rsts, want,
        "one RST per packet, addressed back to its sender"
    );
    let k = h.counters("a");
    assert_eq!(k.drop_no_connection, ops.len() as u64 + 1);
    assert_eq!(k.rst_sent, ops.len() as u64);
    // b got the REQUEST of the real connection and nothing else.
    assert_eq!(h.counters("b").rx_packets, b_rx + 1);
}

/// SPEC.md §4 routes a packet for an attached VM of the daemon through the connection table
/// (§4.1) and the policy (§7), with no exception for the sender itself; a VM shares its own
/// groups, so it may connect to itself, and it takes part in that connection once (§4.1:
/// "A VM takes part in at most `max_conns` VM-to-VM connections"). A VM with no groups shares
/// none, not even with itself, so policy refuses it.
#[test]
fn a_connection_to_itself_is_accepted_and_counts_once() {
    let h = Harness::start(&[
        VmSpec::new("a", 3).max_conns(2),
        VmSpec::new("b", 4),
        VmSpec::new("c", 5).groups(&[]),
    ]);
    let (mut a, mut b, mut c) = (h.vm("a"), h.vm("b"), h.vm("c"));
    a.driver_mut().listen(5000).expect("listen");
    let id = a
        .driver_mut()
        .connect_blocking(3, 5000, T)
        .expect("a connects to itself");
    let accepted = a
        .driver_mut()
        .accept_blocking(5000, T)
        .expect("a accepts its own connection");
    let local_port = a.driver().stream_info(id).expect("info").local_port;
    let info = a.driver().stream_info(accepted).expect("info");
    assert_eq!((info.peer_cid, info.peer_port), (3, local_port));
    assert_eq!(h.gauges("a").peer_conns, 1, "one connection, counted once");
    // Data flows both ways within the VM.
    let d = a.driver_mut();
    d.send_all(id, b"to myself", T).expect("send");
    assert_eq!(d.recv_exact(accepted, 9, T).expect("recv"), b"to myself");
    d.send_all(accepted, b"and back", T).expect("send back");
    assert_eq!(d.recv_exact(id, 8, T).expect("recv back"), b"and back");

    // Under max_conns = 2 the self-connection takes one place: one more fits, a third does not.
    let (ida, idb) = connect_peers(&mut a, &mut b, 5000, T);
    send_and_expect(&mut a, ida, &mut b, idb, b"room", T);
    assert_eq!(h.gauges("a").peer_conns, 2, "{:?}", h.gauges("a"));
    assert_refused(&mut a, 4, 5000);
    assert_eq!(h.counters("a").drop_conn_limit, 1);
    assert_eq!(h.counters("a").drop_policy, 0);
    assert_eq!(h.counters("a").drop_protocol, 0);

    // Closing it frees its one place.
    a.driver_mut()
        .close_blocking(id, T)
        .expect("the self-connection closes");
    assert!(
        wait_until(T, || h.gauges("a").peer_conns == 1),
        "entry freed: {:?}",
        h.gauges("a")
    );

    // A VM with no group shares none with itself.
    c.driver_mut().listen(5000).expect("listen");
    assert_refused(&mut c, 5, 5000);
    assert_eq!(h.counters("c").drop_policy, 1);
    assert_eq!(c.driver_mut().accept(5000).expect("accept"), None);
}
