//! End to end through the host-copied placement: two VMs' own windows, two `FastPath`s and a
//! fake daemon that copies between the rings (checked indices, through the library's own
//! rings on its own mappings) and wakes sleepers. `host_sleeping` stays 1 (the daemon's
//! `event` mode, §13.5), so every byte moves because of a KICK and every blocked guest
//! resumes because of a WAKE: a lost wake-up hangs the test (a watchdog fails it).

// Test patterns: truncation is intended.
#![allow(clippy::cast_possible_truncation)]

mod support;

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

use sockbypass_guest::ring::{RingRx, RingTx};
use sockbypass_guest::{FastPath, SpinBudget, StreamError, Window};
use sockbypass_wire::fastpath::control::{ControlMsg, Op, Placement};
use sockbypass_wire::fastpath::layout::{header, WindowKind};

use support::*;

const A_TO_B: u64 = 2 * MIB + 777;
const B_TO_A: u64 = MIB + 333;
const PINGS: u32 = 3000;

fn pattern(seed: u64, i: u64) -> u8 {
    (i.wrapping_mul(0x9E37_79B9).wrapping_add(seed) >> 7) as u8
}

/// One direction the daemon copies: from a sender's TX ring into a receiver's RX ring.
struct Copy {
    from: RingRx,
    to: RingTx,
    /// (index of the receiving VM's channel, its conn id); the sender's likewise.
    to_vm: (usize, u32),
    from_vm: (usize, u32),
    closed: bool,
}

impl Copy {
    /// Moves what fits; true if anything moved. WAKEs go into `wakes`.
    fn pass(&mut self, buf: &mut [u8], wakes: &mut Vec<(usize, u32)>) -> bool {
        let n = self
            .from
            .readable()
            .expect("sender's head in range")
            .min(self.to.space().expect("receiver's tail in range"))
            .min(buf.len() as u64) as usize;
        let mut moved = false;
        if n > 0 {
            let got = self.from.read(&mut buf[..n]).expect("read");
            assert_eq!(got, n);
            assert_eq!(self.to.write(&buf[..n]).expect("write"), n);
            moved = true;
            if self.to.consumer_sleeping() {
                wakes.push(self.to_vm);
            }
            if self.from.producer_sleeping() {
                wakes.push(self.from_vm);
            }
        }
        if !self.closed && self.from.at_end().expect("range") {
            self.closed = true;
            self.to.close();
            moved = true;
            if self.to.consumer_sleeping() {
                wakes.push(self.to_vm);
            }
        }
        moved
    }
}

fn daemon(mut chans: [Daemon; 2], a: &std::path::Path, b: &std::path::Path) {
    for d in &mut chans {
        d.greet();
    }
    let wa = Arc::new(Window::open_path(a).expect("A"));
    let wb = Arc::new(Window::open_path(b).expect("B"));
    for w in [a, b] {
        put_u32(&raw(w), header::HOST_SLEEPING as u64, 1);
    }
    // B listens; A connects; B accepts.
    let l = chans[1].expect(Op::Listen);
    let c = chans[0].expect(Op::Connect);
    assert_eq!((c.peer_cid, c.peer_port), (4, l.port));
    let (slot_a, conn_a, slot_b, conn_b) = (2u32, 100u32, 5u32, 200u32);
    chans[1].send(ControlMsg {
        conn: conn_b,
        slot: slot_b,
        code: Placement::HostCopied.raw(),
        peer_cid: 3,
        port: l.port,
        peer_port: 1024,
        ..ControlMsg::new(Op::Incoming)
    });
    assert_eq!(chans[1].expect(Op::Accept).conn, conn_b);
    chans[0].send(ControlMsg {
        req: c.req,
        conn: conn_a,
        slot: slot_a,
        code: Placement::HostCopied.raw(),
        peer_cid: 4,
        port: 1024,
        peer_port: l.port,
        ..ControlMsg::new(Op::Connected)
    });
    let ring = |w: &Arc<Window>, slot, r| (Arc::clone(w), slot, r);
    let rx = |(w, s, r): (Arc<Window>, u32, u8)| RingRx::new(w, s, r).expect("ring");
    let tx = |(w, s, r): (Arc<Window>, u32, u8)| RingTx::new(w, s, r).expect("ring");
    let mut copies = [
        Copy {
            from: rx(ring(&wa, slot_a, 0)),
            to: tx(ring(&wb, slot_b, 1)),
            to_vm: (1, conn_b),
            from_vm: (0, conn_a),
            closed: false,
        },
        Copy {
            from: rx(ring(&wb, slot_b, 0)),
            to: tx(ring(&wa, slot_a, 1)),
            to_vm: (0, conn_a),
            from_vm: (1, conn_b),
            closed: false,
        },
    ];
    let mut buf = vec![0u8; 100_000];
    let mut closes = [false; 2];
    let mut kicks = 0u32;
    let mut wakes_sent = 0u32;
    while closes != [true, true] {
        let mut fds = [0usize, 1].map(|i| libc::pollfd {
            // A side that sent CLOSE may hang up: not polled any more.
            fd: if closes[i] {
                -1
            } else {
                chans[i].s.as_raw_fd()
            },
            events: libc::POLLIN,
            revents: 0,
        });
        // SAFETY: two valid pollfds for the call.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        assert!(rc > 0, "poll");
        for i in 0..2 {
            if fds[i].revents == 0 {
                continue;
            }
            let m = chans[i].recv();
            match m.op {
                Op::Kick => kicks += 1,
                Op::Close => {
                    closes[i] = true;
                    let other = 1 - i;
                    if !closes[other] {
                        let conn = if other == 0 { conn_a } else { conn_b };
                        chans[other].send(ControlMsg {
                            conn,
                            ..ControlMsg::new(Op::Closed)
                        });
                    }
                }
                op => panic!("daemon got {op:?}"),
            }
        }
        let mut wakes = Vec::new();
        loop {
            let mut moved = false;
            for c in &mut copies {
                moved |= c.pass(&mut buf, &mut wakes);
            }
            if !moved {
                break;
            }
        }
        wakes.sort_unstable();
        wakes.dedup();
        for (vm, conn) in wakes {
            if !closes[vm] {
                wakes_sent += 1;
                chans[vm].send(ControlMsg {
                    conn,
                    ..ControlMsg::new(Op::Wake)
                });
            }
        }
    }
    assert!(
        kicks > 0 && wakes_sent > 0,
        "kicks {kicks}, wakes {wakes_sent}"
    );
}

#[test]
fn streams_cross_two_windows_through_a_copying_daemon_both_ways() {
    let fa = window_file(WindowKind::Own, 3, 0, MIB, 1);
    let fb = window_file(WindowKind::Own, 4, 0, MIB, 1);
    let (ga, da) = UnixStream::pair().expect("pair");
    let (gb, db) = UnixStream::pair().expect("pair");
    let (pa, pb) = (fa.path().to_path_buf(), fb.path().to_path_buf());
    let d = thread::spawn(move || daemon([Daemon { s: da }, Daemon { s: db }], &pa, &pb));
    let wa = Window::open_path(fa.path()).expect("A");
    let wb = Window::open_path(fb.path()).expect("B");

    let (done, finished) = mpsc::channel();
    let done_b = done.clone();
    let b = thread::spawn(move || {
        let mut fp = FastPath::new(vec![wb], gb).expect("B handshake");
        fp.set_spin_budget(SpinBudget::iterations(50));
        fp.listen(5000).expect("listen");
        let mut s = fp.accept().expect("accept");
        assert_eq!(s.info().peer_cid, 3);
        // Ping-pong first: every round trip waits for a wake-up.
        for i in 0..PINGS {
            let mut one = [0u8; 1];
            assert_eq!(s.read(&mut one).expect("ping"), 1);
            assert_eq!(one[0], i as u8);
            assert_eq!(s.write(&[!one[0]]).expect("pong"), 1);
        }
        let mut buf = vec![0u8; 50_000];
        let mut got = 0u64;
        loop {
            let n = s
                .read(&mut buf[..(got % 50_000 + 1) as usize])
                .expect("B read");
            if n == 0 {
                break;
            }
            for (k, byte) in buf[..n].iter().enumerate() {
                assert_eq!(
                    *byte,
                    pattern(1, got + k as u64),
                    "A→B byte {}",
                    got + k as u64
                );
            }
            got += n as u64;
        }
        assert_eq!(got, A_TO_B);
        let reply: Vec<u8> = (0..B_TO_A).map(|i| pattern(2, i)).collect();
        for chunk in reply.chunks(30_001) {
            s.write_all(chunk).expect("B write");
        }
        s.close().expect("B close");
        let _ = done_b.send("B");
    });
    let a = thread::spawn(move || {
        let mut fp = FastPath::new(vec![wa], ga).expect("A handshake");
        fp.set_spin_budget(SpinBudget::iterations(50));
        let mut s = fp.connect_fast(4, 5000).expect("connect");
        assert_eq!(s.info().placement, Placement::HostCopied);
        for i in 0..PINGS {
            assert_eq!(s.write(&[i as u8]).expect("ping"), 1);
            let mut one = [0u8; 1];
            assert_eq!(s.read(&mut one).expect("pong"), 1);
            assert_eq!(one[0], !(i as u8));
        }
        let data: Vec<u8> = (0..A_TO_B).map(|i| pattern(1, i)).collect();
        for chunk in data.chunks(12_345) {
            s.write_all(chunk).expect("A write");
        }
        s.shutdown(std::net::Shutdown::Write).expect("shutdown");
        assert!(matches!(s.write(b"x"), Err(StreamError::WriteShutdown)));
        let mut buf = vec![0u8; 40_000];
        let mut got = 0u64;
        loop {
            let n = s.read(&mut buf).expect("A read");
            if n == 0 {
                break;
            }
            for (k, byte) in buf[..n].iter().enumerate() {
                assert_eq!(
                    *byte,
                    pattern(2, got + k as u64),
                    "B→A byte {}",
                    got + k as u64
                );
            }
            got += n as u64;
        }
        assert_eq!(got, B_TO_A);
        s.close().expect("A close");
        let _ = done.send("A");
    });
    for _ in 0..2 {
        finished
            .recv_timeout(Duration::from_secs(60))
            .expect("both sides finish (a lost wake-up hangs here)");
    }
    a.join().expect("A");
    b.join().expect("B");
    d.join().expect("daemon");
}
