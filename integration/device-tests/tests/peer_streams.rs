//! VM-to-VM streams through the switch (SPEC.md §3.3 layout in descriptors, §4 routing, §4.2 one
//! copy and splitting, §5.2 end-to-end credit): byte-exact full-duplex transfers between three VMs,
//! payloads split over RX buffers smaller than the packet, multi-descriptor TX chains, and 64
//! concurrent connections without cross-talk.

use std::time::Duration;

use harness::peers::{assert_same_bytes, connect_peers, drive};
use harness::transfer::{run, Job};
use harness::{random_bytes, Harness, VmSpec};
use sockbypass_frontend::{
    DriverConfig, RxLayout, StreamId, TestVm, TxLayout, VmOptions, VsockDriver,
};
use sockbypass_wire::consts::F_RING_INDIRECT_DESC;
use sockbypass_wire::Op;

const T: Duration = Duration::from_secs(120);
const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

fn three_vms() -> Harness {
    Harness::start(&[
        VmSpec::new("a", 3),
        VmSpec::new("b", 4),
        VmSpec::new("c", 5),
    ])
}

/// Checks that a driver saw only well-formed packets and no credit overrun on `ids`.
fn assert_clean_driver(d: &VsockDriver, ids: &[StreamId], who: &str) {
    let s = d.stats();
    assert_eq!(s.rx_malformed, 0, "{who}: malformed RX packets");
    assert_eq!(s.rx_used_len_mismatch, 0, "{who}: used length ≠ 44 + len");
    assert_eq!(s.rx_wrong_cid, 0, "{who}: packets for another CID");
    assert_eq!(s.rst_received, 0, "{who}: unexpected RST");
    for id in ids {
        let c = d.stream_info(*id).expect("info").counters;
        assert_eq!(c.credit_violations, 0, "{who}: credit overrun on {id}");
    }
}

#[test]
fn full_duplex_8mib_between_two_vms_while_a_third_talks_to_both() {
    let h = three_vms();
    let (mut a, mut b, mut c) = (h.vm("a"), h.vm("b"), h.vm("c"));
    let (ab_a, ab_b) = connect_peers(&mut a, &mut b, 5000, T);
    let (ca_c, ca_a) = connect_peers(&mut c, &mut a, 5001, T);
    let (cb_c, cb_b) = connect_peers(&mut c, &mut b, 5002, T);

    let big = 8 * MIB;
    let small = MIB;
    let data = |n: usize, seed: u64| random_bytes(n, seed);
    let (a_to_b, b_to_a) = (data(big, 1), data(big, 2));
    let (c_to_a, a_to_c) = (data(small, 3), data(small, 4));
    let (c_to_b, b_to_c) = (data(small, 5), data(small, 6));

    let mut ja = vec![
        Job::new(ab_a, a_to_b.clone(), big, 11),
        Job::new(ca_a, a_to_c.clone(), small, 12),
    ];
    let mut jb = vec![
        Job::new(ab_b, b_to_a.clone(), big, 13),
        Job::new(cb_b, b_to_c.clone(), small, 14),
    ];
    let mut jc = vec![
        Job::new(ca_c, c_to_a.clone(), small, 15),
        Job::new(cb_c, c_to_b.clone(), small, 16),
    ];
    std::thread::scope(|s| {
        s.spawn(|| run(a.driver_mut(), &mut ja, T, "a"));
        s.spawn(|| run(b.driver_mut(), &mut jb, T, "b"));
        s.spawn(|| run(c.driver_mut(), &mut jc, T, "c"));
    });

    assert_same_bytes(&jb[0].got, &a_to_b, "a → b");
    assert_same_bytes(&ja[0].got, &b_to_a, "b → a");
    assert_same_bytes(&ja[1].got, &c_to_a, "c → a");
    assert_same_bytes(&jc[0].got, &a_to_c, "a → c");
    assert_same_bytes(&jb[1].got, &c_to_b, "c → b");
    assert_same_bytes(&jc[1].got, &b_to_c, "b → c");
    assert_clean_driver(a.driver(), &[ab_a, ca_a], "a");
    assert_clean_driver(b.driver(), &[ab_b, cb_b], "b");
    assert_clean_driver(c.driver(), &[ca_c, cb_c], "c");

    // Every payload byte each VM sent reached a peer, and each received exactly its share.
    let sent = (big + small) as u64;
    for vm in ["a", "b"] {
        let k = h.counters(vm);
        assert_eq!(k.fwd_bytes, sent, "{vm}: fwd_bytes");
        assert_eq!(k.rx_bytes, sent, "{vm}: rx_bytes");
        assert!(k.fwd_packets > 0, "{vm}: fwd_packets");
        assert_eq!(k.malformed_total(), 0, "{vm}: malformed");
        assert_eq!(k.rst_sent, 0, "{vm}: rst_sent");
    }
    let k = h.counters("c");
    assert_eq!(k.fwd_bytes, 2 * small as u64, "c: fwd_bytes");
    assert_eq!(k.rx_bytes, 2 * small as u64, "c: rx_bytes");
    for vm in ["a", "b", "c"] {
        assert_eq!(
            h.gauges(vm).peer_conns,
            2,
            "{vm}: two live peer connections"
        );
    }
}

/// Sends `packets` RW packets of exactly 64 KiB from `a` to `b` (waiting for a full packet of
/// credit before each) while `b` reads, and checks that `b` got them intact.
fn send_64k_packets(a: &mut TestVm, b: &mut TestVm, ida: StreamId, idb: StreamId, packets: usize) {
    let packet = 64 * KIB;
    let data = random_bytes(packets * packet, 21);
    let got = std::thread::scope(|s| {
        let receiver = s.spawn(|| {
            b.driver_mut()
                .recv_exact(idb, packets * packet, T)
                .expect("b receives everything")
        });
        let d = a.driver_mut();
        for chunk in data.chunks(packet) {
            d.wait_until(T, "64 KiB of credit", |d| {
                Ok((d.stream_info(ida)?.credit as usize >= packet).then_some(()))
            })
            .expect("credit");
            assert_eq!(
                d.send(ida, chunk).expect("send"),
                packet,
                "one 64 KiB packet"
            );
        }
        d.flush_tx(T).expect("a's TX chains all completed");
        receiver.join().expect("receiver thread")
    });
    let info = a.driver().stream_info(ida).expect("info");
    assert_eq!(
        info.counters.packets_sent, packets as u64,
        "a sent 64 KiB packets only"
    );
    assert_same_bytes(&got, &data, "64 KiB packets a → b");
}

#[test]
fn packets_larger_than_the_rx_buffers_are_split_into_valid_rw_packets() {
    for (port, rx_layout) in [(5000, RxLayout::Single), (5001, RxLayout::Split)] {
        let h = Harness::start(&[VmSpec::new("a", 3), VmSpec::new("b", 4)]);
        let mut a = h.vm("a");
        let mut b = h.vm_with(
            "b",
            DriverConfig {
                rx_buffer_size: 4096,
                rx_layout,
                raw_record_limit: 8192,
                ..DriverConfig::default()
            },
        );
        let (ida, idb) = connect_peers(&mut a, &mut b, port, T);
        let packets = 16;
        send_64k_packets(&mut a, &mut b, ida, idb, packets);

        let rw: Vec<_> = b
            .driver()
            .received_raw()
            .iter()
            .filter(|p| p.op() == Some(Op::Rw))
            .cloned()
            .collect();
        for p in &rw {
            assert!(!p.malformed, "{rx_layout:?}: malformed piece {p:?}");
            assert!(
                p.header.len() <= 4096,
                "{rx_layout:?}: piece of {} bytes",
                p.header.len()
            );
            assert!(p.header.len() > 0, "{rx_layout:?}: empty RW piece");
            assert_eq!(
                p.used_len,
                44 + p.header.len(),
                "{rx_layout:?}: used length"
            );
            assert_eq!((p.header.src_cid(), p.header.dst_cid()), (3, 4));
        }
        let total: u64 = rw.iter().map(|p| u64::from(p.header.len())).sum();
        assert_eq!(
            total,
            (packets * 64 * KIB) as u64,
            "{rx_layout:?}: pieces add up"
        );
        assert!(
            rw.len() >= packets * 16,
            "{rx_layout:?}: {} pieces",
            rw.len()
        );
        let k = h.counters("b");
        assert_eq!(
            k.rx_split,
            (rw.len() - packets) as u64,
            "{rx_layout:?}: rx_split counts the extra pieces"
        );
        assert_eq!(b.driver().stats().rx_used_len_mismatch, 0);
        assert_eq!(h.counters("a").fwd_bytes, (packets * 64 * KIB) as u64);
        assert!(
            h.counters("a").fwd_packets >= packets as u64,
            "a's packets counted"
        );
    }
}

#[test]
fn multi_descriptor_tx_chains_are_delivered_byte_exact() {
    let layouts = [
        TxLayout::Split { payload_descs: 3 },
        TxLayout::Indirect { payload_descs: 3 },
    ];
    for (round, layout) in layouts.into_iter().enumerate() {
        let h = Harness::start(&[VmSpec::new("a", 3), VmSpec::new("b", 4)]);
        let options = |layout: &TxLayout| {
            let mut o = VmOptions::default();
            o.frontend.features |= 1 << F_RING_INDIRECT_DESC;
            o.driver.tx_layout = layout.clone();
            o
        };
        let mut a = TestVm::connect(h.socket("a"), options(&layout)).expect("vm a");
        let mut b = TestVm::connect(h.socket("b"), options(&layout)).expect("vm b");
        h.wait_attached("b");
        let (ida, idb) = connect_peers(&mut a, &mut b, 5000, T);
        let a_to_b = random_bytes(2 * MIB, 31 + round as u64);
        let b_to_a = random_bytes(512 * KIB, 41 + round as u64);
        let mut ja = [Job::new(ida, a_to_b.clone(), b_to_a.len(), 1)];
        let mut jb = [Job::new(idb, b_to_a.clone(), a_to_b.len(), 2)];
        std::thread::scope(|s| {
            s.spawn(|| run(a.driver_mut(), &mut ja, T, "a"));
            s.spawn(|| run(b.driver_mut(), &mut jb, T, "b"));
        });
        assert_same_bytes(&jb[0].got, &a_to_b, &format!("{layout:?}: a → b"));
        assert_same_bytes(&ja[0].got, &b_to_a, &format!("{layout:?}: b → a"));
        assert_clean_driver(a.driver(), &[ida], "a");
        assert_clean_driver(b.driver(), &[idb], "b");
        let k = h.counters("a");
        assert_eq!(
            k.malformed_total(),
            0,
            "{layout:?}: a's chains were all valid"
        );
        assert_eq!(k.fwd_bytes, a_to_b.len() as u64);
    }
}

#[test]
fn sixty_four_concurrent_connections_carry_distinct_data_without_cross_talk() {
    const CONNS: usize = 64;
    let h = Harness::start(&[VmSpec::new("a", 3), VmSpec::new("b", 4)]);
    let (mut a, mut b) = (h.vm("a"), h.vm("b"));
    let port = 6000;
    b.driver_mut().listen(port).expect("listen");
    let client: Vec<StreamId> = (0..CONNS)
        .map(|_| a.driver_mut().connect(4, port).expect("REQUEST"))
        .collect();
    // Pair each of b's accepted streams with a's stream by a's local port.
    let mut server: Vec<Option<StreamId>> = vec![None; CONNS];
    let local: Vec<u32> = client
        .iter()
        .map(|id| a.driver().stream_info(*id).expect("info").local_port)
        .collect();
    drive(&mut [&mut a, &mut b], T, "64 connections", |vms| {
        while let Some(s) = vms[1].driver_mut().accept(port).expect("accept") {
            let peer = vms[1].driver().stream_info(s).expect("info").peer_port;
            let i = local.iter().position(|p| *p == peer).expect("a's port");
            assert!(server[i].replace(s).is_none(), "accepted twice");
        }
        server.iter().all(Option::is_some)
            && client
                .iter()
                .all(|id| vms[0].driver().state(*id).expect("state").is_established())
    });
    assert_eq!(h.gauges("a").peer_conns, CONNS);
    assert_eq!(h.gauges("b").peer_conns, CONNS);

    let size = |i: usize| 32 * KIB + i * KIB;
    let up: Vec<Vec<u8>> = (0..CONNS)
        .map(|i| random_bytes(size(i), 1000 + i as u64))
        .collect();
    let down: Vec<Vec<u8>> = (0..CONNS)
        .map(|i| random_bytes(size(CONNS - 1 - i), 2000 + i as u64))
        .collect();
    let mut ja: Vec<Job> = (0..CONNS)
        .map(|i| Job::with_max_write(client[i], up[i].clone(), down[i].len(), i as u64, 16 * KIB))
        .collect();
    let mut jb: Vec<Job> = (0..CONNS)
        .map(|i| {
            let id = server[i].expect("paired");
            Job::with_max_write(id, down[i].clone(), up[i].len(), 100 + i as u64, 16 * KIB)
        })
        .collect();
    std::thread::scope(|s| {
        s.spawn(|| run(a.driver_mut(), &mut ja, T, "a"));
        s.spawn(|| run(b.driver_mut(), &mut jb, T, "b"));
    });
    for i in 0..CONNS {
        assert_same_bytes(&jb[i].got, &up[i], &format!("connection {i}: a → b"));
        assert_same_bytes(&ja[i].got, &down[i], &format!("connection {i}: b → a"));
    }
    assert_clean_driver(a.driver(), &client, "a");

    // Closing every connection frees every entry.
    for id in &client {
        a.driver_mut().close(*id).expect("close");
    }
    drive(&mut [&mut a, &mut b], T, "every close to finish", |vms| {
        client
            .iter()
            .all(|id| vms[0].driver().state(*id).expect("state").is_terminal())
    });
    h.wait_peer_entries_freed("a", "b", T);
}

#[test]
fn control_packets_pass_through_with_their_fields_intact() {
    let h = three_vms();
    let (mut a, mut b) = (h.vm("a"), h.vm("b"));
    let (ia, ib) = connect_peers(&mut a, &mut b, 5000, T);
    let a_port = a.driver().stream_info(ia).expect("info").local_port;
    b.driver_mut().take_received_raw();
    a.driver_mut().take_received_raw();

    // a asks for credit; b sees a CREDIT_REQUEST carrying a's credit fields, and its answer
    // (a CREDIT_UPDATE with b's fields) reaches a.
    a.driver_mut()
        .set_buf_alloc(ia, 123_456)
        .expect("a changes its buf_alloc");
    a.driver_mut().request_credit(ia).expect("credit request");
    drive(&mut [&mut a, &mut b], T, "the credit round trip", |vms| {
        vms[0]
            .driver()
            .received_raw()
            .iter()
            .any(|p| p.op() == Some(Op::CreditUpdate))
    });
    let seen_by_b: Vec<_> = b
        .driver_mut()
        .take_received_raw()
        .into_iter()
        .filter(|p| p.op() == Some(Op::CreditRequest))
        .collect();
    assert_eq!(seen_by_b.len(), 1, "b got exactly one CREDIT_REQUEST");
    let req = seen_by_b[0].header;
    assert_eq!(
        (req.src_cid(), req.src_port(), req.dst_cid(), req.dst_port()),
        (3, a_port, 4, 5000)
    );
    assert_eq!(
        req.buf_alloc(),
        123_456,
        "buf_alloc passed through untouched"
    );
    assert_eq!(req.len(), 0);
    let update = a
        .driver()
        .received_raw()
        .iter()
        .find(|p| p.op() == Some(Op::CreditUpdate))
        .expect("update")
        .header;
    assert_eq!(
        (update.src_cid(), update.dst_cid(), update.dst_port()),
        (4, 3, a_port)
    );
    assert_eq!(
        update.buf_alloc(),
        b.driver().config().buf_alloc,
        "b's buf_alloc passed through untouched"
    );
    assert_clean_driver(a.driver(), &[ia], "a");
    assert_clean_driver(b.driver(), &[ib], "b");
    assert_eq!(h.gauges("a").peer_conns, 1);
}
