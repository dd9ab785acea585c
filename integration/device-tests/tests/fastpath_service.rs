//! The fast path's control channel and host-copied data path (SPEC.md §13.5–§13.9) with the
//! test frontend as the guests: each VM's control connections go over its real vsock device to
//! CID 2 ([`GuestBridge`]), and the guests' rings are the daemon's window files ([`WindowFile`]).
//! No QEMU needed.

use std::time::Duration;

use harness::guest_bridge::GuestBridge;
use harness::raw_control::{open_conn, RawControl};
use harness::window_file::WindowFile;
use harness::{harness_config, random_bytes, test_poll_config, wait_until, Harness, VmSpec};
use sockbypass_frontend::{TestVm, VmOptions};
use sockbypass_wire::fastpath::control::{ControlMsg, Op, Placement, Reason};
use sockbypass_wire::fastpath::layout::RING_SIZE;
use sockbypassd::config::PairConfig;

const MIB: u64 = 1 << 20;
const MIB_USIZE: usize = 1 << 20;
const T: Duration = Duration::from_secs(20);

fn fast(name: &'static str, cid: u64) -> VmSpec {
    VmSpec::new(name, cid).fastpath(MIB)
}

fn bridge(h: &Harness, name: &str) -> GuestBridge {
    let vm = TestVm::connect(h.socket(name), VmOptions::default()).expect("frontend");
    h.wait_attached(name);
    GuestBridge::start(vm)
}

fn control(b: &GuestBridge) -> RawControl {
    RawControl::hello(b.open_control().expect("control connection"))
}

/// VMs a (CID 3) and b (CID 4) with 1 MiB windows, a control connection each, b listening on
/// port 7000. Fields drop in order: the controls, then the VMs, then the daemon.
struct Two {
    ca: RawControl,
    cb: RawControl,
    ba: GuestBridge,
    bb: GuestBridge,
    h: Harness,
}

fn two() -> Two {
    with_controls(Harness::start(&[fast("a", 3), fast("b", 4)]))
}

/// [`two`] with a and b configured as a pair (1 MiB pair window): direct connections.
fn two_paired() -> Two {
    let (mut config, dir) = harness_config(&[fast("a", 3), fast("b", 4)], test_poll_config());
    config.pairs.push(PairConfig {
        vms: ["a".into(), "b".into()],
        size: MIB,
    });
    with_controls(Harness::start_config((config, dir)))
}

fn with_controls(h: Harness) -> Two {
    let (ba, bb) = (bridge(&h, "a"), bridge(&h, "b"));
    let (ca, mut cb) = (control(&ba), control(&bb));
    cb.listen(7000);
    Two { ca, cb, ba, bb, h }
}

/// What a guest does after it moved an index (§13.5): `KICK` if the daemon's poller sleeps.
fn kick_if_sleeping(w: &WindowFile, c: &mut RawControl, conn: u32) {
    if w.host_sleeping() != 0 {
        c.about(Op::Kick, conn);
    }
}

#[test]
fn host_copied_stream_goes_ring_to_ring_byte_exact_and_ends() {
    let Two {
        h,
        mut ca,
        mut cb,
        ba: _ba,
        bb: _bb,
    } = two();
    let (ok, inc) = open_conn(&mut ca, &mut cb, 4, 7000, Placement::HostCopied);
    assert_eq!((ok.peer_cid, inc.peer_cid), (4, 3));
    let (wa, wb) = (
        WindowFile::open(&h.window("a")),
        WindowFile::open(&h.window("b")),
    );
    let (a_tx, b_rx) = (wa.ring(ok.slot, 0), wb.ring(inc.slot, 1));
    assert_eq!(
        a_tx.generation(),
        ok.conn,
        "the slot carries the connection id"
    );

    // 1 MiB in uneven pieces, each at most the free space, through several ring wraps.
    let data = random_bytes(MIB_USIZE, 7);
    let (mut sent, mut got) = (0usize, Vec::new());
    let mut pieces = [777usize, 40_000, 65_536, 3].iter().cycle();
    while got.len() < data.len() {
        let free =
            usize::try_from(RING_SIZE - a_tx.head().wrapping_sub(a_tx.tail())).expect("fits");
        let n = (*pieces.next().expect("cycle"))
            .min(free)
            .min(data.len() - sent);
        if n > 0 {
            a_tx.produce(&data[sent..sent + n]);
            sent += n;
            kick_if_sleeping(&wa, &mut ca, ok.conn);
        }
        let before = got.len();
        got.extend(b_rx.consume());
        if got.len() > before {
            kick_if_sleeping(&wb, &mut cb, ok.conn);
        }
        if n == 0 {
            std::thread::yield_now();
        }
    }
    assert!(got == data, "1 MiB arrives byte-exact");
    a_tx.set_closed();
    ca.about(Op::Close, ok.conn);

    let closed = cb.expect();
    assert_eq!((closed.op, closed.conn), (Op::Closed, ok.conn));
    assert!(
        b_rx.closed(),
        "end of stream follows the bytes into b's RX ring"
    );

    let (fa, fb) = (h.fastpath_counters("a"), h.fastpath_counters("b"));
    assert_eq!((fa.fastpath_tx_bytes, fb.fastpath_rx_bytes), (MIB, MIB));
    assert_eq!((fa.fastpath_conns, fb.fastpath_conns), (1, 1));
    // The bytes did not travel as vsock RW packets between the VMs.
    assert_eq!(h.counters("a").fwd_bytes, 0);
    assert_eq!(h.counters("b").fwd_bytes, 0);
}

#[test]
fn both_directions_flow_at_once_and_slots_come_back_for_reuse() {
    let Two {
        h,
        mut ca,
        mut cb,
        ba: _ba,
        bb: _bb,
    } = two();
    let (wa, wb) = (
        WindowFile::open(&h.window("a")),
        WindowFile::open(&h.window("b")),
    );
    let slots = wa.geometry().slots();
    // More connections, one after another, than the window has slots.
    for round in 0..(slots + 3) {
        let (ok, inc) = open_conn(&mut ca, &mut cb, 4, 7000, Placement::HostCopied);
        let (x, y) = (random_bytes(3000, u64::from(round)), random_bytes(5000, 99));
        wa.ring(ok.slot, 0).produce(&x);
        wb.ring(inc.slot, 0).produce(&y);
        kick_if_sleeping(&wa, &mut ca, ok.conn);
        kick_if_sleeping(&wb, &mut cb, inc.conn);
        let (mut at_b, mut at_a) = (Vec::new(), Vec::new());
        assert!(wait_until(T, || {
            at_b.extend(wb.ring(inc.slot, 1).consume());
            at_a.extend(wa.ring(ok.slot, 1).consume());
            at_b.len() == x.len() && at_a.len() == y.len()
        }));
        assert!(
            at_b == x && at_a == y,
            "round {round}: both directions byte-exact"
        );
        ca.about(Op::Close, ok.conn);
        assert_eq!(cb.expect().op, Op::Closed);
        // a let go first: it hears nothing more; both gone, the slots are free again.
        cb.about(Op::Close, inc.conn);
    }
    assert!(ca.silent_for(Duration::from_millis(100)));
}

#[test]
fn refusals_name_their_reason_and_fall_back_only_where_vsock_would_work() {
    let h = Harness::start(&[
        fast("a", 3),
        fast("b", 4),
        fast("other", 5).groups(&["elsewhere"]),
        VmSpec::new("plain", 6),
        fast("ports", 7).ports(&[9000]),
    ]);
    let (ba, bb, bo) = (bridge(&h, "a"), bridge(&h, "b"), bridge(&h, "other"));
    let bp = bridge(&h, "ports");
    let mut ca = control(&ba);
    let mut cb = control(&bb);
    let mut co = control(&bo);
    let mut cp = control(&bp);
    co.listen(7000);
    cp.listen(7000);
    ca.connect_refused(5, 7000, Reason::Policy);
    ca.connect_refused(7, 7000, Reason::Policy);
    ca.connect_refused(4, 7000, Reason::NoListener);
    ca.connect_refused(6, 7000, Reason::NoWindow);
    ca.connect_refused(99, 7000, Reason::PeerGone);
    assert!(Reason::NoListener.falls_back_to_vsock() && Reason::NoWindow.falls_back_to_vsock());
    assert!(!Reason::Policy.falls_back_to_vsock());
    // The listener says no.
    cb.listen(7000);
    let req = ca.connect_asking(1, 4, 7000, Some(Placement::Direct));
    let m = ca.expect();
    assert_eq!(
        (m.req, m.reason()),
        (req, Some(Reason::NoWindow)),
        "no pair, no direct"
    );
    let req = ca.connect(1, 4, 7000);
    let inc = cb.expect();
    cb.about(Op::Reject, inc.conn);
    let m = ca.expect();
    assert_eq!(
        (m.op, m.req, m.reason()),
        (Op::Refused, req, Some(Reason::Rejected))
    );
    assert_eq!(h.fastpath_counters("a").fastpath_refused, 7);
    // A port is listened on by one control connection of a VM at a time.
    let mut cb2 = control(&bb);
    let req = cb2.listen_unsynced(7000);
    let m = cb2.expect();
    assert_eq!(
        (m.op, m.req, m.reason()),
        (Op::Listening, req, Some(Reason::PortInUse))
    );
    // A VM without the fast path cannot open a control connection at all (RST).
    let plain = bridge(&h, "plain");
    assert!(
        plain.open_control().is_err(),
        "no fast path, no control port"
    );
}

#[test]
fn a_full_window_refuses_with_window_full_and_limits_hold() {
    let h = Harness::start(&[fast("a", 3), fast("b", 4).max_conns(200)]);
    let (ba, bb) = (bridge(&h, "a"), bridge(&h, "b"));
    let (mut ca, mut cb) = (control(&ba), control(&bb));
    cb.listen(7000);
    let slots = WindowFile::open(&h.window("a")).geometry().slots();
    for _ in 0..slots {
        open_conn(&mut ca, &mut cb, 4, 7000, Placement::HostCopied);
    }
    ca.connect_refused(4, 7000, Reason::WindowFull);

    let (config, dir) = harness_config(
        &[fast("c", 5).max_conns(2), fast("d", 6)],
        test_poll_config(),
    );
    let h2 = Harness::start_config((config, dir));
    let (bc, bd) = (bridge(&h2, "c"), bridge(&h2, "d"));
    let (mut cc, mut cd) = (control(&bc), control(&bd));
    cd.listen(1);
    open_conn(&mut cc, &mut cd, 6, 1, Placement::HostCopied);
    open_conn(&mut cc, &mut cd, 6, 1, Placement::HostCopied);
    cc.connect_refused(6, 1, Reason::ConnLimit);
    drop(h);
}

#[test]
fn a_pair_gets_direct_connections_and_kicks_become_wakes() {
    let Two {
        h,
        mut ca,
        mut cb,
        ba: _ba,
        bb: _bb,
    } = two_paired();
    let (ok, inc) = open_conn(&mut ca, &mut cb, 4, 7000, Placement::Direct);
    assert_eq!(ok.slot, inc.slot, "one slot of the pair window for both");
    let pair = WindowFile::open(&h.dir.path().join("a+b.window"));
    // a (CID 3) is the lower CID: it produces ring 0, b consumes it, with no host copy.
    pair.ring(ok.slot, 0).produce(b"direct bytes");
    ca.about(Op::Kick, ok.conn);
    let w = cb.expect();
    assert_eq!((w.op, w.conn), (Op::Wake, ok.conn));
    assert_eq!(pair.ring(ok.slot, 0).consume(), b"direct bytes");
    assert_eq!(h.fastpath_counters("a").fastpath_tx_bytes, 0);
    assert_eq!(h.fastpath_counters("a").fastpath_kicks, 1);
    ca.about(Op::Close, ok.conn);
    assert_eq!(cb.expect().op, Op::Closed);
    // A CONNECT may ask for the host-copied placement even between a pair.
    let req = ca.connect_asking(1, 4, 7000, Some(Placement::HostCopied));
    let inc = cb.expect();
    assert_eq!(
        (inc.op, inc.placement()),
        (Op::Incoming, Some(Placement::HostCopied))
    );
    cb.about(Op::Accept, inc.conn);
    let ok = ca.expect();
    assert_eq!((ok.req, ok.placement()), (req, Some(Placement::HostCopied)));
    // A direct peer that saw a broken index aborts: both sides are reset, both VMs count it.
    let (ok, _) = open_conn(&mut ca, &mut cb, 4, 7000, Placement::Direct);
    let mut abort = ControlMsg::new(Op::Abort);
    abort.conn = ok.conn;
    abort.code = Reason::BrokenRing.raw();
    cb.send(&abort);
    let (ra, rb) = (ca.expect(), cb.expect());
    assert_eq!((ra.op, ra.reason()), (Op::Reset, Some(Reason::BrokenRing)));
    assert_eq!((rb.op, rb.reason()), (Op::Reset, Some(Reason::BrokenRing)));
    assert_eq!(h.fastpath_counters("a").fastpath_aborts, 1);
    assert_eq!(h.fastpath_counters("b").fastpath_aborts, 1);
}

/// A hostile direct peer kicks in a loop while the other guest is busy and reads nothing: its
/// socket, the stream's credit and the daemon's socket fill, and then the daemon keeps at most
/// one `WAKE` per connection waiting for it (§13.5) instead of 1024 answers and a closed
/// channel. The busy guest's control channel survives and works afterwards.
#[test]
fn a_peer_kicking_in_a_loop_cannot_overflow_a_busy_guests_channel() {
    let Two {
        h,
        mut ca,
        mut cb,
        ba: _ba,
        bb: _bb,
    } = two_paired();
    let (ok, _) = open_conn(&mut ca, &mut cb, 4, 7000, Placement::Direct);
    // 3.2 MB of WAKEs: far more than b's socket, its stream's credit, the daemon's socket and
    // its queue (1024) hold together.
    const KICKS: u64 = 100_000;
    for _ in 0..KICKS {
        ca.about(Op::Kick, ok.conn);
    }
    assert!(
        wait_until(T, || h.fastpath_counters("a").fastpath_kicks == KICKS),
        "the daemon took every KICK: {}",
        h.fastpath_counters("a").fastpath_kicks
    );
    // b reads now: WAKEs for the connection only, fewer than the KICKs, then silence.
    let mut wakes = 0u64;
    while let Some(m) = cb.next_within(Duration::from_millis(300)) {
        assert_eq!((m.op, m.conn), (Op::Wake, ok.conn), "{m:?}");
        wakes += 1;
    }
    assert!(
        wakes > 0 && wakes < KICKS,
        "{wakes} WAKEs for {KICKS} KICKs"
    );
    assert_eq!(h.fastpath_counters("b").fastpath_wakes, wakes);
    // Its channel still works: a second listen and a connection over it.
    cb.listen(7001);
    let (ok2, _) = open_conn(&mut ca, &mut cb, 4, 7001, Placement::Direct);
    ca.about(Op::Kick, ok2.conn);
    let w = cb.expect();
    assert_eq!((w.op, w.conn), (Op::Wake, ok2.conn));
}

#[test]
fn a_sleeping_reader_gets_one_wake_until_it_moves() {
    let Two {
        h,
        mut ca,
        mut cb,
        ba: _ba,
        bb: _bb,
    } = two();
    let (ok, inc) = open_conn(&mut ca, &mut cb, 4, 7000, Placement::HostCopied);
    let (wa, wb) = (
        WindowFile::open(&h.window("a")),
        WindowFile::open(&h.window("b")),
    );
    let b_rx = wb.ring(inc.slot, 1);
    b_rx.set_consumer_sleeping(true);
    wa.ring(ok.slot, 0).produce(b"first");
    kick_if_sleeping(&wa, &mut ca, ok.conn);
    let w = cb.expect();
    assert_eq!((w.op, w.conn), (Op::Wake, ok.conn));
    wa.ring(ok.slot, 0).produce(b"second");
    kick_if_sleeping(&wa, &mut ca, ok.conn);
    assert!(
        wait_until(T, || b_rx.head() == 11),
        "the second write is copied too"
    );
    assert!(
        cb.silent_for(Duration::from_millis(300)),
        "no second WAKE while b has not moved"
    );
    assert_eq!(b_rx.consume(), b"firstsecond");
    wa.ring(ok.slot, 0).produce(b"third");
    kick_if_sleeping(&wa, &mut ca, ok.conn);
    let w = cb.expect();
    assert_eq!(w.op, Op::Wake, "b moved its tail: it may be woken again");
    assert_eq!(h.fastpath_counters("b").fastpath_wakes, 2);
}

#[test]
fn a_broken_ring_resets_only_its_connection() {
    let Two {
        h,
        mut ca,
        mut cb,
        ba: _ba,
        bb: _bb,
    } = two();
    let (good, good_in) = open_conn(&mut ca, &mut cb, 4, 7000, Placement::HostCopied);
    let (bad, _) = open_conn(&mut ca, &mut cb, 4, 7000, Placement::HostCopied);
    let (wa, wb) = (
        WindowFile::open(&h.window("a")),
        WindowFile::open(&h.window("b")),
    );
    // a claims more than a ring in flight.
    wa.ring(bad.slot, 0).set_head(RING_SIZE + 1);
    kick_if_sleeping(&wa, &mut ca, bad.conn);
    let (ra, rb) = (ca.expect(), cb.expect());
    assert_eq!(
        (ra.op, ra.conn, ra.reason()),
        (Op::Reset, bad.conn, Some(Reason::BrokenRing))
    );
    assert_eq!(
        (rb.op, rb.conn, rb.reason()),
        (Op::Reset, bad.conn, Some(Reason::BrokenRing))
    );
    assert_eq!(h.fastpath_counters("a").fastpath_bad_ring, 1);
    assert_eq!(h.fastpath_counters("b").fastpath_bad_ring, 0);
    // The other connection still carries bytes.
    wa.ring(good.slot, 0).produce(b"still here");
    kick_if_sleeping(&wa, &mut ca, good.conn);
    let mut got = Vec::new();
    assert!(wait_until(T, || {
        got.extend(wb.ring(good_in.slot, 1).consume());
        got == b"still here"
    }));
    // A reader's tail past the head the daemon wrote is caught as well.
    let (bad, bad_in) = open_conn(&mut ca, &mut cb, 4, 7000, Placement::HostCopied);
    wb.ring(bad_in.slot, 1).set_tail(5);
    wa.ring(bad.slot, 0).produce(b"x");
    kick_if_sleeping(&wa, &mut ca, bad.conn);
    let rb = cb.expect();
    assert_eq!((rb.op, rb.reason()), (Op::Reset, Some(Reason::BrokenRing)));
    assert_eq!(h.fastpath_counters("b").fastpath_bad_ring, 1);
}

#[test]
fn protocol_errors_close_only_that_control_connection() {
    let h = Harness::start(&[fast("a", 3), fast("b", 4)]);
    let (ba, bb) = (bridge(&h, "a"), bridge(&h, "b"));
    // Before HELLO.
    let mut raw = RawControl::raw(ba.open_control().expect("control"));
    raw.listen_unsynced(1);
    assert!(
        raw.closed_by_daemon(),
        "LISTEN before HELLO closes the connection"
    );
    // An unknown op.
    let mut bad = control(&ba);
    let mut bytes = ControlMsg::new(Op::Kick).encode();
    bytes[0] = 0x44;
    bad.send_bytes(&bytes);
    assert!(bad.closed_by_daemon());
    // Someone else's connection.
    let (mut ca, mut cb) = (control(&ba), control(&bb));
    cb.listen(7000);
    let (ok, _) = open_conn(&mut ca, &mut cb, 4, 7000, Placement::HostCopied);
    let mut thief = control(&ba);
    thief.about(Op::Close, ok.conn);
    assert!(
        thief.closed_by_daemon(),
        "CLOSE of another's connection is a protocol error"
    );
    assert!(
        wait_until(T, || h.fastpath_counters("a").fastpath_control_errors == 3),
        "{:?}",
        h.fastpath_counters("a")
    );
    // The others are untouched.
    ca.about(Op::Close, ok.conn);
    assert_eq!(cb.expect().op, Op::Closed);
}

#[test]
fn a_vanishing_side_resets_its_peers_and_frees_everything() {
    let h = Harness::start(&[fast("a", 3), fast("b", 4)]);
    let (ba, bb) = (bridge(&h, "a"), bridge(&h, "b"));
    let mut cb = control(&bb);
    cb.listen(7000);
    // A control connection that closes resets its connections.
    let mut ca = control(&ba);
    let (ok, _) = open_conn(&mut ca, &mut cb, 4, 7000, Placement::HostCopied);
    drop(ca);
    let m = cb.expect();
    assert_eq!(
        (m.op, m.conn, m.reason()),
        (Op::Reset, ok.conn, Some(Reason::PeerGone))
    );
    // A whole VM that vanishes does too, even mid-offer.
    let mut ca = control(&ba);
    let (ok, _) = open_conn(&mut ca, &mut cb, 4, 7000, Placement::HostCopied);
    ca.connect(1, 4, 7000);
    let offered = cb.expect();
    assert_eq!(offered.op, Op::Incoming);
    drop(ba);
    let mut reset = [cb.expect(), cb.expect()];
    reset.sort_by_key(|m| m.conn);
    assert_eq!(
        reset.iter().map(|m| (m.op, m.conn)).collect::<Vec<_>>(),
        vec![(Op::Reset, ok.conn), (Op::Reset, offered.conn)]
    );
    // Every slot is free again: b's window takes as many connections as it has slots.
    let ba = bridge(&h, "a");
    let mut ca = control(&ba);
    let slots = WindowFile::open(&h.window("b")).geometry().slots();
    for _ in 0..slots {
        open_conn(&mut ca, &mut cb, 4, 7000, Placement::HostCopied);
    }
}

#[test]
fn a_half_close_ends_one_direction_and_the_other_still_flows() {
    let Two {
        h,
        mut ca,
        mut cb,
        ba: _ba,
        bb: _bb,
    } = two();
    let (ok, inc) = open_conn(&mut ca, &mut cb, 4, 7000, Placement::HostCopied);
    let (wa, wb) = (
        WindowFile::open(&h.window("a")),
        WindowFile::open(&h.window("b")),
    );
    // a sends its request and ends its write side, as a client shutting down its socket.
    wa.ring(ok.slot, 0).produce(b"request");
    wa.ring(ok.slot, 0).set_closed();
    kick_if_sleeping(&wa, &mut ca, ok.conn);
    let b_rx = wb.ring(inc.slot, 1);
    let mut got = Vec::new();
    assert!(wait_until(T, || {
        got.extend(b_rx.consume());
        b_rx.closed()
    }));
    assert_eq!(got, b"request", "the bytes, then the end of stream");
    assert!(
        cb.silent_for(Duration::from_millis(200)),
        "no CLOSED for a half-close"
    );
    // b answers after the end of a's stream; a gets it.
    wb.ring(inc.slot, 0).produce(b"reply");
    kick_if_sleeping(&wb, &mut cb, inc.conn);
    let a_rx = wa.ring(ok.slot, 1);
    let mut back = Vec::new();
    assert!(wait_until(T, || {
        back.extend(a_rx.consume());
        back == b"reply"
    }));
    // Now b is done with the connection: a hears CLOSED.
    wb.ring(inc.slot, 0).set_closed();
    cb.about(Op::Close, inc.conn);
    let m = ca.expect();
    assert_eq!((m.op, m.conn), (Op::Closed, ok.conn));
    assert!(wait_until(T, || a_rx.closed()));
}

#[test]
fn a_vm_has_at_most_64_control_connections() {
    let h = Harness::start(&[fast("a", 3).max_conns(200)]);
    let ba = bridge(&h, "a");
    let mut open: Vec<RawControl> = (0..64).map(|_| control(&ba)).collect();
    let mut extra = RawControl::raw(ba.open_control().expect("the vsock connect itself works"));
    // The daemon may close it before the HELLO is even written.
    let _ = extra.try_send(&ControlMsg::new(Op::Hello));
    assert!(
        extra.closed_by_daemon(),
        "the 65th control connection is closed"
    );
    // One goes, another may come.
    open.pop();
    assert!(wait_until(T, || {
        let mut c = RawControl::raw(ba.open_control().expect("connect"));
        let welcomed = c.try_send(&ControlMsg::new(Op::Hello))
            && c.receive().is_ok_and(|m| m.op == Op::Welcome);
        if welcomed {
            open.push(c);
        }
        welcomed
    }));
    assert_eq!(h.fastpath_counters("a").fastpath_control_conns, 65);
}

#[test]
fn listening_ports_and_unanswered_offers_are_bounded() {
    // 16 MiB windows (124 slots) and a high connection limit, so that the waiting offers
    // are what runs out.
    let big = |name, cid| {
        VmSpec::new(name, cid)
            .fastpath(16 << 20)
            .max_conns(200)
            .max_conns_per_peer(200)
    };
    let h = Harness::start(&[big("a", 3), big("b", 4)]);
    let (ba, bb) = (bridge(&h, "a"), bridge(&h, "b"));
    let (mut ca, mut cb) = (control(&ba), control(&bb));
    // 64 ports per control connection; the 65th is refused, the connection stays.
    for port in 0..64 {
        cb.listen(7000 + port);
    }
    let req = cb.listen_unsynced(8000);
    let m = cb.expect();
    assert_eq!(
        (m.op, m.req, m.reason()),
        (Op::Listening, req, Some(Reason::ConnLimit))
    );
    // 64 INCOMINGs may wait for the listener's answer; the 65th CONNECT is refused.
    let mut offered = Vec::new();
    for _ in 0..64 {
        ca.connect(1, 4, 7000);
        let inc = cb.expect();
        assert_eq!(inc.op, Op::Incoming);
        offered.push(inc.conn);
    }
    ca.connect_refused(4, 7000, Reason::ConnLimit);
    // An answer makes room for one more.
    cb.about(Op::Accept, offered[0]);
    assert_eq!(ca.expect().op, Op::Connected);
    ca.connect(1, 4, 7000);
    assert_eq!(cb.expect().op, Op::Incoming);
    ca.connect_refused(4, 7000, Reason::ConnLimit);
}
