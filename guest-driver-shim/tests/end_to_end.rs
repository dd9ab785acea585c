//! End to end with two VMs' windows, two `FastPath`s and a fake daemon. Host-copied: the
//! daemon copies between the rings (checked indices, through the library's own rings on its
//! own mappings) and wakes sleepers; `host_sleeping` stays 1 (the daemon's `event` mode,
//! §13.5), so every byte moves because of a KICK. Direct: both guests map the pair window and
//! the daemon only forwards each KICK as a WAKE to the peer. Every blocked guest resumes
//! because of a WAKE: a lost wake-up hangs the test (a watchdog fails it).

// Test patterns: truncation is intended.
#![allow(clippy::cast_possible_truncation)]

mod support;

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

use sockbypass_guest::ring::{RingRx, RingTx};
use sockbypass_guest::{FastPath, FastStream, SpinBudget, StreamError, Window};
use sockbypass_wire::fastpath::control::{ControlMsg, Op, Placement};
use sockbypass_wire::fastpath::layout::{header, WindowKind};

use support::*;

/// What each connection carries.
#[derive(Debug, Clone, Copy)]
struct Load {
    pings: u32,
    a_to_b: u64,
    b_to_a: u64,
}

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

fn daemon(
    mut chans: [Daemon; 2],
    a: &std::path::Path,
    b: &std::path::Path,
    n: u32,
    placement: Placement,
) {
    let direct = placement == Placement::Direct;
    for d in &mut chans {
        d.greet();
    }
    let wa = Arc::new(Window::open_path(a).expect("A"));
    let wb = Arc::new(Window::open_path(b).expect("B"));
    for w in [a, b] {
        put_u32(&raw(w), header::HOST_SLEEPING as u64, 1);
    }
    let rx = |w: &Arc<Window>, slot, r| RingRx::new(Arc::clone(w), slot, r).expect("ring");
    let tx = |w: &Arc<Window>, slot, r| RingTx::new(Arc::clone(w), slot, r).expect("ring");
    // B listens; A connects n times; B accepts each. Connection i: A's conn 100 + i in slot
    // i + 2 of A's window, B's conn 200 + i in slot 6 - i of B's (1 MiB: 7 slots); direct:
    // slot i of the pair window for both, and the daemon only forwards KICKs as WAKEs.
    let l = chans[1].expect(Op::Listen);
    let mut copies = Vec::new();
    for i in 0..n {
        let c = chans[0].expect(Op::Connect);
        assert_eq!((c.peer_cid, c.peer_port), (4, l.port));
        let (slot_a, conn_a, slot_b, conn_b) = if direct {
            (i, 100 + i, i, 200 + i)
        } else {
            (i + 2, 100 + i, 6 - i, 200 + i)
        };
        chans[1].send(ControlMsg {
            conn: conn_b,
            slot: slot_b,
            code: placement.raw(),
            peer_cid: 3,
            port: l.port,
            peer_port: 1024 + i,
            ..ControlMsg::new(Op::Incoming)
        });
        assert_eq!(chans[1].expect(Op::Accept).conn, conn_b);
        chans[0].send(ControlMsg {
            req: c.req,
            conn: conn_a,
            slot: slot_a,
            code: placement.raw(),
            peer_cid: 4,
            port: 1024 + i,
            peer_port: l.port,
            ..ControlMsg::new(Op::Connected)
        });
        if direct {
            continue;
        }
        copies.push(Copy {
            from: rx(&wa, slot_a, 0),
            to: tx(&wb, slot_b, 1),
            to_vm: (1, conn_b),
            from_vm: (0, conn_a),
            closed: false,
        });
        copies.push(Copy {
            from: rx(&wb, slot_b, 0),
            to: tx(&wa, slot_a, 1),
            to_vm: (0, conn_a),
            from_vm: (1, conn_b),
            closed: false,
        });
    }
    let peer_of = |vm: usize, conn: u32| (1 - vm, if vm == 0 { conn + 100 } else { conn - 100 });
    let mut buf = vec![0u8; 100_000];
    let mut closed: [Vec<u32>; 2] = [Vec::new(), Vec::new()];
    let mut kicks = 0u32;
    let mut wakes_sent = 0u32;
    let all_closed = |closed: &[Vec<u32>; 2], vm: usize| closed[vm].len() == n as usize;
    while !(all_closed(&closed, 0) && all_closed(&closed, 1)) {
        let mut fds = [0usize, 1].map(|vm| libc::pollfd {
            // A side whose connections are all closed may hang up: not polled any more.
            fd: if all_closed(&closed, vm) {
                -1
            } else {
                chans[vm].s.as_raw_fd()
            },
            events: libc::POLLIN,
            revents: 0,
        });
        // SAFETY: two valid pollfds for the call.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        assert!(rc > 0, "poll");
        for vm in 0..2 {
            if fds[vm].revents == 0 {
                continue;
            }
            let m = chans[vm].recv();
            assert!(!closed[vm].contains(&m.conn), "{m:?} after CLOSE");
            match m.op {
                Op::Kick => {
                    kicks += 1;
                    if direct {
                        // The peer of a direct connection sleeps on the shared ring.
                        let (other, conn) = peer_of(vm, m.conn);
                        if !closed[other].contains(&conn) {
                            wakes_sent += 1;
                            chans[other].send_if_there(ControlMsg {
                                conn,
                                ..ControlMsg::new(Op::Wake)
                            });
                        }
                    }
                }
                Op::Close => {
                    closed[vm].push(m.conn);
                    let (other, conn) = peer_of(vm, m.conn);
                    if !closed[other].contains(&conn) {
                        chans[other].send_if_there(ControlMsg {
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
            if !closed[vm].contains(&conn) {
                wakes_sent += 1;
                chans[vm].send_if_there(ControlMsg {
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

/// B's side of one connection: answers pings, checks A's bytes to the end, replies, closes.
fn serve(mut s: FastStream<UnixStream>, load: Load, seed: u64) {
    assert_eq!(s.info().peer_cid, 3);
    // Ping-pong first: every round trip waits for a wake-up.
    for i in 0..load.pings {
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
            let at = got + k as u64;
            assert_eq!(*byte, pattern(seed, at), "A→B byte {at}");
        }
        got += n as u64;
    }
    assert_eq!(got, load.a_to_b);
    let reply: Vec<u8> = (0..load.b_to_a).map(|i| pattern(seed + 1, i)).collect();
    for chunk in reply.chunks(30_001) {
        s.write_all(chunk).expect("B write");
    }
    s.close().expect("B close");
}

/// A's side of one connection: pings, sends, half-closes, checks B's reply, closes.
fn client(mut s: FastStream<UnixStream>, load: Load, seed: u64, placement: Placement) {
    assert_eq!(s.info().placement, placement);
    for i in 0..load.pings {
        assert_eq!(s.write(&[i as u8]).expect("ping"), 1);
        let mut one = [0u8; 1];
        assert_eq!(s.read(&mut one).expect("pong"), 1);
        assert_eq!(one[0], !(i as u8));
    }
    let data: Vec<u8> = (0..load.a_to_b).map(|i| pattern(seed, i)).collect();
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
            let at = got + k as u64;
            assert_eq!(*byte, pattern(seed + 1, at), "B→A byte {at}");
        }
        got += n as u64;
    }
    assert_eq!(got, load.b_to_a);
    s.close().expect("A close");
}

/// `n` connections from A (CID 3) to B (CID 4), each in its own thread on both sides
/// (streams of one FastPath blocking at once), through the fake daemon.
fn run(n: u32, load: Load, placement: Placement) {
    let fa = window_file(WindowKind::Own, 3, 0, MIB, 1);
    let fb = window_file(WindowKind::Own, 4, 0, MIB, 1);
    let fp = window_file(WindowKind::Pair, 3, 4, MIB, 1);
    let (ga, da) = UnixStream::pair().expect("pair");
    let (gb, db) = UnixStream::pair().expect("pair");
    let (pa, pb) = (fa.path().to_path_buf(), fb.path().to_path_buf());
    let d =
        thread::spawn(move || daemon([Daemon { s: da }, Daemon { s: db }], &pa, &pb, n, placement));
    let pair = || Window::open_path(fp.path()).expect("pair");
    let wa = vec![Window::open_path(fa.path()).expect("A"), pair()];
    let wb = vec![Window::open_path(fb.path()).expect("B"), pair()];

    let (done, finished) = mpsc::channel();
    let done_b = done.clone();
    let b = thread::spawn(move || {
        let mut fp = FastPath::new(wb, gb).expect("B handshake");
        fp.set_spin_budget(SpinBudget::iterations(50));
        fp.listen(5000).expect("listen");
        let streams: Vec<_> = (0..n).map(|_| fp.accept().expect("accept")).collect();
        let workers: Vec<_> = streams
            .into_iter()
            .map(|s| {
                let seed = u64::from(s.info().peer_port);
                thread::spawn(move || serve(s, load, seed))
            })
            .collect();
        for w in workers {
            w.join().expect("B worker");
        }
        let _ = done_b.send("B");
    });
    let a = thread::spawn(move || {
        let mut fp = FastPath::new(wa, ga).expect("A handshake");
        fp.set_spin_budget(SpinBudget::iterations(50));
        let streams: Vec<_> = (0..n)
            .map(|_| fp.connect_fast(4, 5000).expect("connect"))
            .collect();
        let workers: Vec<_> = streams
            .into_iter()
            .map(|s| {
                let seed = u64::from(s.info().port);
                thread::spawn(move || client(s, load, seed, placement))
            })
            .collect();
        for w in workers {
            w.join().expect("A worker");
        }
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

#[test]
fn one_stream_crosses_two_windows_through_a_copying_daemon_both_ways() {
    run(
        1,
        Load {
            pings: 3000,
            a_to_b: 2 * MIB + 777,
            b_to_a: MIB + 333,
        },
        Placement::HostCopied,
    );
}

#[test]
fn concurrent_streams_of_one_fastpath_block_and_wake_in_their_own_threads() {
    run(
        3,
        Load {
            pings: 1000,
            a_to_b: MIB / 2 + 11,
            b_to_a: MIB / 3 + 7,
        },
        Placement::HostCopied,
    );
}

#[test]
fn direct_streams_share_the_pair_window_and_wake_through_forwarded_kicks() {
    run(
        3,
        Load {
            pings: 2000,
            a_to_b: MIB + 5,
            b_to_a: MIB / 2 + 3,
        },
        Placement::Direct,
    );
}
