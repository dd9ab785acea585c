//! Flow control between VMs (SPEC.md §5.2 VM-to-VM credit, §5.3 waiting for RX buffers, §11
//! limits): a receiver without RX buffers stalls its sender without loss, with bounded state and
//! no head-of-line blocking of the sender's other peers; an RW beyond the credit the receiver
//! granted resets that connection only.

use std::time::{Duration, Instant};

use harness::peers::{assert_same_bytes, connect_peers};
use harness::transfer::{run, Job};
use harness::{random_bytes, wait_until, Harness, VmSpec};
use sockbypass_frontend::{DriverConfig, StreamState, TxLayout};
use sockbypass_wire::{Op, PacketHeader};

const T: Duration = Duration::from_secs(60);
const MIB: usize = 1024 * 1024;
/// How long the receiver posts no RX buffer.
const STALL: Duration = Duration::from_secs(2);

fn three_vms() -> Harness {
    Harness::start(&[
        VmSpec::new("a", 3),
        VmSpec::new("b", 4),
        VmSpec::new("c", 5),
    ])
}

#[test]
fn a_receiver_without_rx_buffers_stalls_its_sender_losslessly_and_not_its_other_peers() {
    let h = three_vms();
    let (mut a, mut c) = (h.vm("a"), h.vm("c"));
    // b posts one RX buffer, for the REQUEST, and none after that until told to.
    let mut b = h.vm_without_rx_buffers("b", 1, DriverConfig::default());
    let (ab_a, ab_b) = connect_peers(&mut a, &mut b, 5000, T);
    assert_eq!(b.driver().rx_posted(), 0, "b has no RX buffer left");
    let (ac_a, ac_c) = connect_peers(&mut a, &mut c, 5001, T);
    let b_rx_before = h.counters("b").rx_packets;

    let to_b = random_bytes(MIB, 1);
    let to_c = random_bytes(MIB / 2, 2);
    let mut ja = [
        Job::new(ab_a, to_b.clone(), 0, 3),
        Job::new(ac_a, to_c.clone(), 0, 4),
    ];
    let mut jc = [Job::new(ac_c, Vec::new(), to_c.len(), 5)];
    let tx_size = usize::from(a.driver().config().tx_queue_size);

    // The stall: a keeps sending to both; only c gets anything.
    let start = Instant::now();
    let mut c_done_at = None;
    let mut max_held = 0;
    while start.elapsed() < STALL {
        for j in ja.iter_mut() {
            j.step(a.driver_mut());
        }
        jc[0].step(c.driver_mut());
        if c_done_at.is_none() && jc[0].done() {
            c_done_at = Some(start.elapsed());
        }
        for vm in [&mut a, &mut b, &mut c] {
            vm.driver_mut()
                .pump(Duration::from_millis(1))
                .expect("pump");
        }
        let (ga, gb) = (h.gauges("a"), h.gauges("b"));
        max_held = max_held.max(ga.held_chains);
        assert!(ga.held_chains <= tx_size, "a: held chains {ga:?}");
        assert!(gb.inbound_queued <= tx_size, "b: inbound {gb:?}");
        assert!(
            ga.queued_replies == 0 && gb.queued_replies == 0,
            "no replies: {ga:?} {gb:?}"
        );
        assert!(ga.peer_conns == 2 && gb.peer_conns == 1, "{ga:?} {gb:?}");
    }
    let c_done_at = c_done_at.expect("a → c finished while b was stalled");
    assert_same_bytes(&jc[0].got, &to_c, "a → c during the stall");
    assert!(c_done_at < STALL);
    let sent = ja[0].sent();
    assert!(
        sent > 0 && sent < to_b.len(),
        "a sent {sent} bytes to b: some, within the credit, not all"
    );
    assert_eq!(
        h.counters("b").rx_packets,
        b_rx_before,
        "b got nothing without buffers"
    );
    assert_eq!(b.driver().buffered(ab_b).expect("buffered"), 0);
    assert!(max_held > 0, "the switch held a's chains for b");
    assert!(
        a.driver().tx_in_flight() > 0,
        "a's chains for b are not returned before they are delivered"
    );
    assert!(h.counters("b").rx_buffer_stalls > 0, "b's stall counted");

    // Buffers appear: the transfer finishes, byte-exact.
    b.driver_mut().set_rx_refill(true);
    b.driver_mut().post_rx_buffers(32).expect("RX buffers");
    let mut jb = [Job::new(ab_b, Vec::new(), to_b.len(), 6)];
    std::thread::scope(|s| {
        s.spawn(|| run(a.driver_mut(), &mut ja, T, "a"));
        s.spawn(|| run(b.driver_mut(), &mut jb, T, "b"));
    });
    assert_same_bytes(&jb[0].got, &to_b, "a → b after the stall");
    a.driver_mut()
        .flush_tx(T)
        .expect("every TX chain of a came back");
    assert!(
        wait_until(T, || {
            let (ga, gb) = (h.gauges("a"), h.gauges("b"));
            ga.held_chains == 0 && gb.inbound_queued == 0
        }),
        "nothing left held: a {:?}, b {:?}",
        h.gauges("a"),
        h.gauges("b")
    );
    let (ka, kb) = (h.counters("a"), h.counters("b"));
    assert!(kb.rx_wait_ns > 0, "b's wait for RX buffers measured");
    assert_eq!(
        ka.fwd_bytes,
        (to_b.len() + to_c.len()) as u64,
        "a: fwd_bytes"
    );
    assert_eq!(kb.rx_bytes, to_b.len() as u64, "b: rx_bytes");
    assert_eq!(ka.rst_sent + kb.rst_sent, 0, "no RST anywhere");
    assert_eq!(ka.malformed_total() + kb.malformed_total(), 0);
}

#[test]
fn rw_beyond_the_granted_credit_resets_both_sides_and_nothing_else() {
    let h = three_vms();
    let (mut a, mut c) = (h.vm("a"), h.vm("c"));
    let mut b = h.vm_with(
        "b",
        DriverConfig {
            buf_alloc: 8192,
            ..DriverConfig::default()
        },
    );
    let (victim_a, victim_b) = connect_peers(&mut a, &mut b, 5000, T);
    let (other_a, other_b) = connect_peers(&mut a, &mut b, 5001, T);
    let (ac_a, ac_c) = connect_peers(&mut a, &mut c, 5002, T);
    let info = a.driver().stream_info(victim_a).expect("info");
    assert_eq!(info.peer_buf_alloc, 8192, "b granted 8 KiB");
    let rw = |len: u32| {
        let mut hdr = PacketHeader::stream(Op::Rw, 3, info.local_port, 4, 5000);
        hdr.set_len(len).set_credit(info.buf_alloc, info.fwd_cnt);
        hdr
    };

    // Exactly the credit b granted: delivered.
    let window = random_bytes(8192, 7);
    a.driver_mut()
        .send_raw(&rw(8192), &window, &TxLayout::Single)
        .expect("raw RW");
    b.driver_mut()
        .wait_until(T, "the 8 KiB window", |d| {
            Ok((d.buffered(victim_b)? == 8192).then_some(()))
        })
        .expect("b got the window");
    // One byte more: dropped, and both sides get an RST.
    a.driver_mut()
        .send_raw(&rw(1), b"!", &TxLayout::Single)
        .expect("raw RW");
    a.driver_mut()
        .wait_state(victim_a, |s| s == StreamState::Reset, T)
        .expect("a reset");
    b.driver_mut()
        .wait_state(victim_b, |s| s == StreamState::Reset, T)
        .expect("b reset");
    let vb = b.driver().stream_info(victim_b).expect("info");
    assert_eq!(
        vb.counters.bytes_received, 8192,
        "the extra byte never arrived"
    );
    assert_eq!(vb.counters.credit_violations, 0, "b never saw an overrun");
    let mut got = Vec::new();
    b.driver_mut().recv(victim_b, &mut got).expect("recv");
    assert_same_bytes(&got, &window, "the window");
    let ka = h.counters("a");
    assert_eq!(ka.drop_credit_violation, 1, "counted on the sender");
    assert_eq!(h.counters("b").drop_credit_violation, 0);
    assert!(
        wait_until(T, || h.gauges("a").peer_conns == 2
            && h.gauges("b").peer_conns == 1),
        "the victim's entry is freed: a {:?}, b {:?}",
        h.gauges("a"),
        h.gauges("b")
    );

    // The other connections carry on, both ways.
    let (ab, ba) = (random_bytes(MIB, 8), random_bytes(MIB, 9));
    let (ac, ca) = (random_bytes(MIB / 2, 10), random_bytes(MIB / 2, 11));
    let mut ja = [
        Job::new(other_a, ab.clone(), ba.len(), 1),
        Job::new(ac_a, ac.clone(), ca.len(), 2),
    ];
    let mut jb = [Job::new(other_b, ba.clone(), ab.len(), 3)];
    let mut jc = [Job::new(ac_c, ca.clone(), ac.len(), 4)];
    std::thread::scope(|s| {
        s.spawn(|| run(a.driver_mut(), &mut ja, T, "a"));
        s.spawn(|| run(b.driver_mut(), &mut jb, T, "b"));
        s.spawn(|| run(c.driver_mut(), &mut jc, T, "c"));
    });
    assert_same_bytes(&jb[0].got, &ab, "a → b on the other connection");
    assert_same_bytes(&ja[0].got, &ba, "b → a on the other connection");
    assert_same_bytes(&jc[0].got, &ac, "a → c");
    assert_same_bytes(&ja[1].got, &ca, "c → a");
    assert_eq!(
        h.counters("a").drop_credit_violation,
        1,
        "honest traffic never counted"
    );
    let violations = |d: &sockbypass_frontend::VsockDriver, id| {
        d.stream_info(id).expect("info").counters.credit_violations
    };
    assert_eq!(violations(a.driver(), other_a), 0);
    assert_eq!(violations(b.driver(), other_b), 0);
}
