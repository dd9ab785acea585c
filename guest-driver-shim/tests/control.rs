//! FastPath and FastStream against a fake daemon on a `UnixStream` pair: handshake, connect
//! (both placements, refusals), listen/accept/reject, dispatch while waiting, RESET, KICK,
//! broken rings, epoch changes and malformed messages.

// Test sizes: truncation is impossible.
#![allow(clippy::cast_possible_truncation)]

mod support;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use sockbypass_guest::ring::{RingRx, RingTx};
use sockbypass_guest::{
    ConnectError, ControlChannelError, FastPath, FastStream, OpenError, SpinBudget, StreamError,
    Window,
};
use sockbypass_wire::fastpath::control::{ControlMsg, Op, Placement, Reason};
use sockbypass_wire::fastpath::layout::{ring_control, WindowKind, RING_SIZE};
use tempfile::NamedTempFile;

use support::*;

/// A VM's windows as files.
struct Vm {
    own: NamedTempFile,
    pairs: Vec<NamedTempFile>,
}

impl Vm {
    fn new(cid: u64, pairs: &[(u64, u64)]) -> Vm {
        Vm {
            own: window_file(WindowKind::Own, cid, 0, MIB, 1),
            pairs: pairs
                .iter()
                .map(|&(a, b)| window_file(WindowKind::Pair, a, b, MIB, 1))
                .collect(),
        }
    }

    fn windows(&self) -> Vec<Window> {
        std::iter::once(&self.own)
            .chain(&self.pairs)
            .map(|f| Window::open_path(f.path()).expect("window"))
            .collect()
    }
}

/// A FastPath on `vm` whose daemon runs `script` (after the handshake) in a thread.
fn start(
    vm: &Vm,
    script: impl FnOnce(Daemon) + Send + 'static,
) -> (FastPath<UnixStream>, thread::JoinHandle<()>) {
    let (guest, daemon) = UnixStream::pair().expect("pair");
    let t = thread::spawn(move || {
        let mut d = Daemon { s: daemon };
        d.greet();
        script(d);
    });
    let mut fp = FastPath::new(vm.windows(), guest).expect("handshake");
    fp.set_spin_budget(SpinBudget::NONE);
    (fp, t)
}

fn connected(req: u32, conn: u32, slot: u32, placement: Placement) -> ControlMsg {
    ControlMsg {
        req,
        conn,
        slot,
        code: placement.raw(),
        port: 1234,
        peer_port: 5000,
        ..ControlMsg::new(Op::Connected)
    }
}

/// The daemon answers the next CONNECT with CONNECTED (conn, slot, placement).
fn answer_connect(d: &mut Daemon, conn: u32, slot: u32, placement: Placement) -> ControlMsg {
    let c = d.expect(Op::Connect);
    assert_ne!(c.req, 0);
    d.send(connected(c.req, conn, slot, placement));
    c
}

/// The next message is the marker LISTEN on `port` (nothing else was sent before it).
fn expect_marker(d: &mut Daemon, port: u32) {
    let m = d.recv();
    assert_eq!((m.op, m.port), (Op::Listen, port), "{m:?}");
}

#[test]
fn the_handshake_needs_welcome_and_survives_short_reads() {
    let vm = Vm::new(5, &[]);
    let (guest, daemon) = UnixStream::pair().expect("pair");
    let t = thread::spawn(move || {
        let mut d = Daemon { s: daemon };
        let h = d.expect(Op::Hello);
        let b = ControlMsg {
            req: h.req,
            ..ControlMsg::new(Op::Welcome)
        }
        .encode();
        for part in [&b[..3], &b[3..20], &b[20..]] {
            d.s.write_all(part).expect("write");
            thread::sleep(Duration::from_millis(20));
        }
    });
    let fp = FastPath::new(vm.windows(), guest).expect("handshake");
    assert_eq!(fp.own_cid(), 5);
    t.join().expect("daemon");

    let (guest, daemon) = UnixStream::pair().expect("pair");
    let t = thread::spawn(move || {
        let mut d = Daemon { s: daemon };
        d.expect(Op::Hello);
        d.send(connected(1, 1, 1, Placement::HostCopied));
    });
    match FastPath::new(vm.windows(), guest) {
        Err(OpenError::Handshake(e)) => assert!(e.is_protocol(), "{e}"),
        other => panic!("{other:?}"),
    }
    t.join().expect("daemon");

    // No own window.
    let (guest, _daemon) = UnixStream::pair().expect("pair");
    let pair = Vm::new(5, &[(5, 6)]);
    let only_pair = vec![Window::open_path(pair.pairs[0].path()).expect("w")];
    assert!(matches!(
        FastPath::new(only_pair, guest),
        Err(OpenError::NoOwnWindow)
    ));
}

#[test]
fn host_copied_uses_the_own_window_ring_0_out_ring_1_in() {
    let vm = Vm::new(5, &[(5, 9)]);
    let own_path = vm.own.path().to_path_buf();
    let (fp, t) = start(&vm, move |mut d| {
        let c = answer_connect(&mut d, 7, 3, Placement::HostCopied);
        assert_eq!((c.peer_cid, c.peer_port, c.port), (9, 5000, 0));
        // The daemon's view: it consumes ring 0 and produces ring 1 of slot 3.
        let w = Arc::new(Window::open_path(&own_path).expect("daemon map"));
        let mut from_guest = RingRx::new(Arc::clone(&w), 3, 0).expect("ring");
        let mut to_guest = RingTx::new(Arc::clone(&w), 3, 1).expect("ring");
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut buf = [0u8; 16];
        let mut got = Vec::new();
        while got.len() < 5 {
            assert!(Instant::now() < deadline);
            let n = from_guest.read(&mut buf).expect("range");
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, b"hello");
        assert_eq!(to_guest.write(b"world").expect("range"), 5);
        to_guest.close();
        // The guest closes: its ring 0 is closed, then CLOSE.
        let m = d.expect(Op::Close);
        assert_eq!(m.conn, 7);
        assert!(from_guest.at_end().expect("range"));
    });
    let mut s = fp.connect_fast(9, 5000).expect("connected");
    let info = *s.info();
    assert_eq!(info.placement, Placement::HostCopied);
    assert_eq!(
        (info.conn, info.slot, info.tx_ring, info.rx_ring),
        (7, 3, 0, 1)
    );
    assert_eq!((info.port, info.peer_port, info.peer_cid), (1234, 5000, 9));
    assert!(Arc::ptr_eq(s.window(), fp.own_window()));
    s.write_all(b"hello").expect("write");
    let mut buf = [0u8; 16];
    let mut got = Vec::new();
    loop {
        // Blocking read: the daemon sends no WAKE here, so spin (the data comes promptly).
        s.set_nonblocking(true);
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(StreamError::WouldBlock) => thread::yield_now(),
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(got, b"world");
    s.close().expect("close");
    assert!(matches!(s.read(&mut buf), Err(StreamError::Closed)));
    t.join().expect("daemon");
}

#[test]
fn direct_picks_the_pair_window_and_the_ring_by_cid_order() {
    let vm = Vm::new(5, &[(3, 5), (5, 9)]);
    let (fp, t) = start(&vm, |mut d| {
        answer_connect(&mut d, 20, 1, Placement::Direct);
        answer_connect(&mut d, 21, 2, Placement::Direct);
        // Direct with a peer this VM has no pair window with: the guest gives it back.
        answer_connect(&mut d, 22, 0, Placement::Direct);
        assert_eq!(d.expect(Op::Close).conn, 22);
        // A slot past the window's end (1 MiB: 7 slots).
        answer_connect(&mut d, 23, 7, Placement::HostCopied);
        assert_eq!(d.expect(Op::Close).conn, 23);
        // The two good streams are dropped: CLOSE each.
        let mut closed = [d.expect(Op::Close).conn, d.expect(Op::Close).conn];
        closed.sort_unstable();
        assert_eq!(closed, [20, 21]);
    });
    let lower = fp.connect_fast(3, 80).expect("to 3");
    assert_eq!(lower.info().placement, Placement::Direct);
    assert_eq!((lower.window().cid(), lower.window().peer_cid()), (3, 5));
    assert_eq!(
        (lower.info().tx_ring, lower.info().rx_ring),
        (1, 0),
        "5 > 3: ring 1 is ours"
    );
    let higher = fp.connect_fast(9, 80).expect("to 9");
    assert_eq!((higher.window().cid(), higher.window().peer_cid()), (5, 9));
    assert_eq!(
        (higher.info().tx_ring, higher.info().rx_ring),
        (0, 1),
        "5 < 9: ring 0"
    );
    assert!(matches!(
        fp.connect_fast(4, 80),
        Err(ConnectError::NoPairWindow { peer_cid: 4 })
    ));
    match fp.connect_fast(9, 80) {
        Err(e @ ConnectError::BadSlot(_)) => assert_eq!(e.errno(), libc::EPROTO),
        other => panic!("{other:?}"),
    }
    drop(lower);
    drop(higher);
    t.join().expect("daemon");
}

#[test]
fn refusals_fall_back_or_fail_by_reason() {
    let vm = Vm::new(5, &[]);
    let (fp, t) = start(&vm, |mut d| {
        for reason in [
            Reason::NoListener,
            Reason::Policy,
            Reason::WindowFull,
            Reason::ConnLimit,
        ] {
            let c = d.expect(Op::Connect);
            d.send(ControlMsg {
                req: c.req,
                code: reason.raw(),
                ..ControlMsg::new(Op::Refused)
            });
        }
    });
    assert!(matches!(
        fp.connect_fast(9, 1),
        Err(ConnectError::Fallback(Reason::NoListener))
    ));
    match fp.connect_fast(9, 1) {
        Err(e @ ConnectError::Refused(Reason::Policy)) => {
            assert_eq!(e.errno(), libc::ECONNREFUSED)
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        fp.connect_fast(9, 1),
        Err(ConnectError::Fallback(Reason::WindowFull))
    ));
    assert!(matches!(
        fp.connect_fast(9, 1),
        Err(ConnectError::Refused(Reason::ConnLimit))
    ));
    t.join().expect("daemon");
}

#[test]
fn incoming_connections_are_accepted_rejected_or_refused_when_not_listening() {
    let vm = Vm::new(5, &[]);
    let (fp, t) = start(&vm, |mut d| {
        let l = d.expect(Op::Listen);
        assert_eq!(l.port, 5000);
        let incoming = |conn, port| ControlMsg {
            conn,
            slot: 2,
            code: Placement::HostCopied.raw(),
            peer_cid: 9,
            port,
            peer_port: 777,
            ..ControlMsg::new(Op::Incoming)
        };
        d.send(incoming(10, 6000));
        d.send(incoming(11, 5000));
        assert_eq!(d.expect(Op::Reject).conn, 10, "not listening on 6000");
        assert_eq!(d.expect(Op::Accept).conn, 11);
        d.send(ControlMsg {
            slot: 4,
            ..incoming(12, 5000)
        });
        assert_eq!(d.expect(Op::Reject).conn, 12);
        assert_eq!(d.expect(Op::Unlisten).port, 5000);
        assert_eq!(d.expect(Op::Close).conn, 11);
    });
    fp.listen(5000).expect("listen");
    let s = fp.accept().expect("accept");
    assert_eq!((s.conn(), s.info().slot, s.info().port), (11, 2, 5000));
    assert_eq!((s.info().peer_cid, s.info().peer_port), (9, 777));
    assert_eq!((s.info().tx_ring, s.info().rx_ring), (0, 1));
    let inc = fp.next_incoming().expect("incoming");
    assert_eq!((inc.conn(), inc.port(), inc.peer_port()), (12, 5000, 777));
    fp.reject(inc).expect("reject");
    assert!(fp.try_accept().expect("nothing").is_none());
    fp.unlisten(5000).expect("unlisten");
    drop(s);
    t.join().expect("daemon");
}

/// Waits until the 32-bit field at `off` of `path` is `v`.
fn wait_field(path: &std::path::Path, off: u64, v: u32) {
    let f = raw(path);
    let deadline = Instant::now() + Duration::from_secs(10);
    while get_u32(&f, off) != v {
        assert!(Instant::now() < deadline, "field at {off} never became {v}");
        thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn a_wake_that_arrives_while_another_thread_waits_for_connected_is_dispatched() {
    let vm = Vm::new(5, &[]);
    let own = vm.own.path().to_path_buf();
    let (fp, t) = start(&vm, move |mut d| {
        answer_connect(&mut d, 7, 0, Placement::HostCopied);
        let c = d.expect(Op::Connect);
        // Conn 7's reader sleeps on its RX ring (ring 1 of slot 0).
        wait_field(
            &own,
            control_at(MIB, 0, 1) + ring_control::CONSUMER_SLEEPING,
            1,
        );
        let w = Arc::new(Window::open_path(&own).expect("map"));
        let mut to_guest = RingTx::new(w, 0, 1).expect("ring");
        to_guest.write(b"wake!").expect("range");
        d.send(ControlMsg {
            conn: 7,
            ..ControlMsg::new(Op::Wake)
        });
        d.send(connected(c.req, 8, 1, Placement::HostCopied));
        let mut closed = [d.expect(Op::Close).conn, d.expect(Op::Close).conn];
        closed.sort_unstable();
        assert_eq!(closed, [7, 8]);
    });
    let mut a = fp.connect_fast(9, 1).expect("conn 7");
    let reader = thread::spawn(move || {
        let mut buf = [0u8; 16];
        let n = a.read(&mut buf).expect("read");
        assert_eq!(&buf[..n], b"wake!");
        a
    });
    let b = fp.connect_fast(9, 2).expect("conn 8");
    assert_eq!(b.conn(), 8);
    let a = reader.join().expect("reader");
    drop((a, b));
    t.join().expect("daemon");
}

#[test]
fn reset_fails_the_stream_and_nothing_more_is_sent_for_it() {
    let vm = Vm::new(5, &[]);
    let (fp, t) = start(&vm, |mut d| {
        answer_connect(&mut d, 7, 0, Placement::HostCopied);
        thread::sleep(Duration::from_millis(50));
        d.send(ControlMsg {
            conn: 7,
            code: Reason::PeerGone.raw(),
            ..ControlMsg::new(Op::Reset)
        });
        expect_marker(&mut d, 4242);
    });
    let mut s = fp.connect_fast(9, 1).expect("conn");
    let r = s.poll_ready();
    assert!(!r.readable && r.writable && !r.hup, "{r:?}");
    let mut buf = [0u8; 4];
    // Blocks (empty ring) until the RESET.
    match s.read(&mut buf) {
        Err(e @ StreamError::Reset(Reason::PeerGone)) => {
            assert_eq!(e.errno(), libc::ECONNRESET);
            assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset);
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(s.write(b"x"), Err(StreamError::Reset(_))));
    let r = s.poll_ready();
    assert!(r.hup && r.readable && r.writable);
    drop(s); // no CLOSE: the slot is not this side's any more
    fp.listen(4242).expect("marker");
    t.join().expect("daemon");
}

#[test]
fn kicks_follow_host_sleeping_and_the_peer_flags() {
    let vm = Vm::new(5, &[(5, 9)]);
    let own = raw(vm.own.path());
    let pair_path = vm.pairs[0].path().to_path_buf();
    let (fp, t) = start(&vm, |mut d| {
        answer_connect(&mut d, 7, 0, Placement::HostCopied);
        assert_eq!(d.expect(Op::Kick).conn, 7, "host_sleeping set");
        expect_marker(&mut d, 1);
        answer_connect(&mut d, 8, 1, Placement::Direct);
        assert_eq!(d.expect(Op::Kick).conn, 8, "consumer sleeps");
        expect_marker(&mut d, 2);
        assert_eq!(d.expect(Op::Kick).conn, 8, "after the consumer's progress");
        assert_eq!(d.expect(Op::Kick).conn, 8, "producer of our RX sleeps");
        expect_marker(&mut d, 3);
        // Closing sets `closed` and kicks a sleeping consumer (host_sleeping is still 1).
        let mut closed = Vec::new();
        while closed.len() < 2 {
            let m = d.recv();
            match m.op {
                Op::Close => closed.push(m.conn),
                Op::Kick => assert_eq!(m.conn, 7, "{m:?}"),
                _ => panic!("{m:?}"),
            }
        }
        closed.sort_unstable();
        assert_eq!(closed, [7, 8]);
    });
    let mut h = fp.connect_fast(9, 1).expect("host-copied");
    h.write(b"a").expect("write, no kick");
    put_u32(
        &own,
        sockbypass_wire::fastpath::layout::header::HOST_SLEEPING as u64,
        1,
    );
    h.write(b"b").expect("write, kick");
    fp.listen(1).expect("marker");

    let mut dct = fp.connect_fast(9, 2).expect("direct");
    assert_eq!(dct.info().tx_ring, 0);
    let pair = raw(&pair_path);
    let tx_ctl = control_at(MIB, 1, 0);
    dct.write(b"a").expect("no kick: awake");
    put_u32(&pair, tx_ctl + ring_control::CONSUMER_SLEEPING, 1);
    dct.write(b"b").expect("kick");
    dct.write(b"c").expect("no second kick without progress");
    fp.listen(2).expect("marker");
    put_u64(&pair, tx_ctl + ring_control::TAIL, 2);
    dct.write(b"d").expect("kick: the tail moved");
    // Our RX ring (ring 1): the peer wrote 3 bytes and sleeps for space.
    let rx_ctl = control_at(MIB, 1, 1);
    put_u64(&pair, rx_ctl + ring_control::HEAD, 3);
    put_u32(&pair, rx_ctl + ring_control::PRODUCER_SLEEPING, 1);
    let mut buf = [0u8; 8];
    assert_eq!(dct.read(&mut buf).expect("read"), 3);
    fp.listen(3).expect("marker");
    drop((h, dct));
    t.join().expect("daemon");
}

#[test]
fn a_broken_direct_ring_aborts_and_nonblocking_would_block() {
    let vm = Vm::new(5, &[(5, 9)]);
    let pair = raw(vm.pairs[0].path());
    let (fp, t) = start(&vm, |mut d| {
        answer_connect(&mut d, 8, 3, Placement::Direct);
        let a = d.expect(Op::Abort);
        assert_eq!((a.conn, a.reason()), (8, Some(Reason::BrokenRing)));
        expect_marker(&mut d, 9);
    });
    let mut s = fp.connect_fast(9, 2).expect("direct");
    s.set_nonblocking(true);
    let mut buf = [0u8; 8];
    assert!(matches!(s.read(&mut buf), Err(StreamError::WouldBlock)));
    let big = vec![0u8; RING_SIZE as usize + 10];
    assert_eq!(s.write(&big).expect("fills"), RING_SIZE as usize);
    assert!(matches!(s.write(b"x"), Err(StreamError::WouldBlock)));
    let r = s.poll_ready();
    assert!(!r.readable && !r.writable && !r.hup, "{r:?}");
    // The peer (or a liar) puts more than the ring in flight on our RX ring (ring 0... of
    // the higher CID: ring 1).
    set_head(&pair, MIB, 3, 1, RING_SIZE + 1);
    match s.read(&mut buf) {
        Err(e @ StreamError::BrokenRing(_)) => assert_eq!(e.errno(), libc::ECONNRESET),
        other => panic!("{other:?}"),
    }
    assert!(matches!(s.write(b"x"), Err(StreamError::BrokenRing(_))));
    drop(s); // no CLOSE after ABORT
    fp.listen(9).expect("marker");
    t.join().expect("daemon");
}

#[test]
fn an_epoch_change_fails_the_window_streams() {
    let vm = Vm::new(5, &[]);
    let own = raw(vm.own.path());
    let (fp, t) = start(&vm, |mut d| {
        answer_connect(&mut d, 7, 0, Placement::HostCopied);
        expect_marker(&mut d, 5);
    });
    let mut s = fp.connect_fast(9, 1).expect("conn");
    s.write(b"ok").expect("write");
    set_epoch(&own, 2);
    match s.write(b"x") {
        Err(StreamError::EpochChanged { was: 1, now: 2 }) => {}
        other => panic!("{other:?}"),
    }
    assert!(s.poll_ready().hup);
    drop(s);
    fp.listen(5).expect("marker");
    t.join().expect("daemon");
}

#[test]
fn malformed_daemon_messages_are_protocol_errors() {
    for bad in [
        {
            let mut b = ControlMsg::new(Op::Wake).encode();
            b[0] = 0x7f; // unknown op
            b
        },
        {
            let mut b = ControlMsg::new(Op::Wake).encode();
            b[2] = 2; // version
            b
        },
        ControlMsg::new(Op::Kick).encode(),    // a guest-only op
        ControlMsg::new(Op::Welcome).encode(), // after the handshake
        connected(999, 1, 1, Placement::Direct).encode(), // an answer to no request
    ] {
        let vm = Vm::new(5, &[]);
        let (fp, t) = start(&vm, move |mut d| {
            d.expect(Op::Connect);
            d.s.write_all(&bad).expect("write");
        });
        match fp.connect_fast(9, 1) {
            Err(ConnectError::Control(e)) => {
                assert!(e.is_protocol(), "{e}");
                assert_eq!(ConnectError::Control(e).errno(), libc::EPROTO);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            fp.listen(1),
            Err(ConnectError::Control(ControlChannelError::Failed {
                protocol: true,
                ..
            }))
        ));
        t.join().expect("daemon");
    }
}

#[test]
fn a_daemon_that_goes_away_fails_waits() {
    let vm = Vm::new(5, &[]);
    let (fp, t) = start(&vm, |mut d| {
        answer_connect(&mut d, 7, 0, Placement::HostCopied);
        thread::sleep(Duration::from_millis(30));
    });
    let mut s: FastStream<UnixStream> = fp.connect_fast(9, 1).expect("conn");
    let mut buf = [0u8; 4];
    match s.read(&mut buf) {
        Err(StreamError::Control(ControlChannelError::Closed)) => {}
        other => panic!("{other:?}"),
    }
    assert!(matches!(s.read(&mut buf), Err(StreamError::Control(_))));
    t.join().expect("daemon");
}

#[test]
fn readiness_follows_the_rings_and_dispatched_messages() {
    let vm = Vm::new(5, &[]);
    let own = vm.own.path().to_path_buf();
    let (fp, t) = start(&vm, move |mut d| {
        answer_connect(&mut d, 7, 0, Placement::HostCopied);
        answer_connect(&mut d, 8, 1, Placement::HostCopied);
        let w = Arc::new(Window::open_path(&own).expect("map"));
        let mut to_guest = RingTx::new(w, 0, 1).expect("ring");
        to_guest.write(b"data").expect("range");
        d.send(ControlMsg {
            conn: 7,
            ..ControlMsg::new(Op::Wake)
        });
        d.send(ControlMsg {
            conn: 8,
            ..ControlMsg::new(Op::Closed)
        });
        expect_marker(&mut d, 77);
        // conn 8 sends CLOSE when dropped; conn 7 too.
        let mut closed = [d.expect(Op::Close).conn, d.expect(Op::Close).conn];
        closed.sort_unstable();
        assert_eq!(closed, [7, 8]);
    });
    let mut a = fp.connect_fast(9, 1).expect("7");
    let mut b = fp.connect_fast(9, 2).expect("8");
    // Wait for the control socket (the messages may also have been dispatched already, by
    // the read that took CONNECTED), dispatch, and the streams say what they can do.
    let fd = std::os::fd::AsRawFd::as_raw_fd(&fp);
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the call.
    unsafe { libc::poll(&mut pfd, 1, 100) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !b.poll_ready().hup {
        assert!(Instant::now() < deadline, "CLOSED never dispatched");
        fp.dispatch().expect("dispatch");
        thread::sleep(Duration::from_millis(1));
    }
    let ra = a.poll_ready();
    assert!(ra.readable && ra.writable && !ra.hup, "{ra:?}");
    let mut buf = [0u8; 8];
    assert_eq!(a.read(&mut buf).expect("read"), 4);
    assert!(matches!(b.write(b"x"), Err(StreamError::PeerClosed)));
    assert_eq!(StreamError::PeerClosed.errno(), libc::EPIPE);
    fp.listen(77).expect("marker");
    drop((a, b));
    t.join().expect("daemon");
}

#[test]
fn sending_to_a_daemon_that_went_away_is_epipe_not_a_signal() {
    let vm = Vm::new(5, &[]);
    let (fp, t) = start(&vm, drop);
    t.join().expect("daemon");
    match fp.listen(1) {
        Err(ConnectError::Control(e @ ControlChannelError::Io { .. })) => {
            let src = std::error::Error::source(&e).expect("source");
            let io = src.downcast_ref::<std::io::Error>().expect("io");
            assert_eq!(io.raw_os_error(), Some(libc::EPIPE), "{e}");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        fp.listen(2),
        Err(ConnectError::Control(ControlChannelError::Failed {
            protocol: false,
            ..
        }))
    ));
}
