//! The driver against a loopback device: streams in every layout, credit, refusals, closing,
//! raw packets, events.

use std::time::{Duration, Instant};

use sockbypass_wire::consts::{
    EVENT_TRANSPORT_RESET, HEADER_SIZE, OP_CREDIT_REQUEST, OP_RW, SHUTDOWN_BOTH, SHUTDOWN_SEND,
};
use sockbypass_wire::{Op, PacketHeader};

use super::*;
use crate::error::DriverError;
use crate::guest_memory::GuestRam;
use crate::stream::{StreamId, StreamState};
use crate::test_device::LoopbackSwitch;
use crate::tx::TxLayout;

const T: Duration = Duration::from_secs(10);
const A: u64 = 3;
const B: u64 = 4;

struct Pair {
    a: VsockDriver,
    b: VsockDriver,
    sw: LoopbackSwitch,
}

fn pair_with(cfg_a: DriverConfig, cfg_b: DriverConfig, event_idx: bool) -> Pair {
    let ram_a = GuestRam::new(8 << 20).expect("ram a");
    let ram_b = GuestRam::new(8 << 20).expect("ram b");
    let mut a = VsockDriver::new(&ram_a, A, event_idx, cfg_a).expect("driver a");
    let mut b = VsockDriver::new(&ram_b, B, event_idx, cfg_b).expect("driver b");
    let sw = LoopbackSwitch::start(&[&a, &b]);
    a.start().expect("start a");
    b.start().expect("start b");
    Pair { a, b, sw }
}

fn pair() -> Pair {
    pair_with(DriverConfig::default(), DriverConfig::default(), true)
}

/// Pumps both drivers until `cond` holds; panics after the timeout.
fn drive(p: &mut Pair, what: &str, mut cond: impl FnMut(&mut Pair) -> bool) {
    let deadline = Instant::now() + T;
    while !cond(p) {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        p.a.pump(Duration::from_millis(2)).expect("pump a");
        p.b.pump(Duration::from_millis(2)).expect("pump b");
    }
}

/// Connects A to a listening port of B; returns (A's id, B's id).
fn connect(p: &mut Pair, port: u32) -> (StreamId, StreamId) {
    p.b.listen(port).expect("listen");
    let ida = p.a.connect(B, port).expect("connect");
    let mut idb = None;
    drive(p, "the connection", |p| {
        if idb.is_none() {
            idb = p.b.accept(port).expect("accept");
        }
        idb.is_some() && p.a.state(ida).expect("state") == StreamState::Connected
    });
    (ida, idb.expect("accepted"))
}

fn pattern(n: usize, seed: u32) -> Vec<u8> {
    (0..n as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 13) as u8)
        .collect()
}

/// A sends `data` to B, B echoes it back, in two threads with the blocking helpers.
fn echo(p: &mut Pair, ida: StreamId, idb: StreamId, data: &[u8]) {
    let (a, b) = (&mut p.a, &mut p.b);
    std::thread::scope(|s| {
        let echoer = s.spawn(move || {
            let got = b.recv_exact(idb, data.len(), T).expect("b receives");
            b.send_all(idb, &got, T).expect("b echoes");
            b.flush_tx(T).expect("b flushes");
        });
        let receiver = s.spawn(move || {
            a.send_all(ida, data, T).expect("a sends");
            a.recv_exact(ida, data.len(), T).expect("a gets the echo")
        });
        echoer.join().expect("echo thread");
        let back = receiver.join().expect("a thread");
        assert!(back == data, "echo differs");
    });
}

#[test]
fn connect_send_and_echo_in_every_layout() {
    let layouts = [
        TxLayout::Single,
        TxLayout::Split { payload_descs: 1 },
        TxLayout::Split { payload_descs: 3 },
        TxLayout::Indirect { payload_descs: 2 },
    ];
    for (i, layout) in layouts.iter().enumerate() {
        for rx_layout in [RxLayout::Single, RxLayout::Split] {
            for event_idx in [true, false] {
                let cfg = DriverConfig {
                    tx_layout: layout.clone(),
                    rx_layout,
                    max_payload: 8192,
                    ..DriverConfig::default()
                };
                let mut p = pair_with(cfg.clone(), cfg, event_idx);
                let (ida, idb) = connect(&mut p, 1000 + i as u32);
                let data = pattern(300 * 1024, i as u32);
                echo(&mut p, ida, idb, &data);
                let sw = p.sw.stats();
                assert_eq!(sw.bad_chains, 0, "{layout:?}");
                assert_eq!(sw.bad_rx_buffers, 0, "{layout:?}");
                // Every full RW packet went out in the layout asked for.
                let want = match layout {
                    TxLayout::Single => 1,
                    TxLayout::Split { payload_descs } => 1 + payload_descs,
                    TxLayout::Indirect { payload_descs } => 1 + payload_descs,
                    TxLayout::Custom { .. } => unreachable!(),
                };
                for ((_, h), n) in sw.tx_headers.iter().zip(&sw.tx_chain_lens) {
                    if h.op_raw() == OP_RW && h.len() == 8192 {
                        assert_eq!(*n, want, "{layout:?}");
                    }
                }
                for d in [&p.a, &p.b] {
                    let s = d.stats();
                    assert_eq!(s.rx_malformed, 0);
                    assert_eq!(s.rx_used_len_mismatch, 0);
                    assert_eq!(s.rx_unknown_stream, 0);
                }
                let ia = p.a.stream_info(ida).expect("info");
                let ib = p.b.stream_info(idb).expect("info");
                assert_eq!(ia.counters.bytes_sent, data.len() as u64);
                assert_eq!(ia.counters.bytes_received, data.len() as u64);
                assert_eq!(ib.counters.bytes_received, data.len() as u64);
                assert_eq!(ia.counters.credit_violations, 0);
                assert_eq!(ib.counters.credit_violations, 0);
                assert_eq!(ia.counters.max_packet_received, 4096);
            }
        }
    }
}

#[test]
fn sender_never_exceeds_the_peer_credit() {
    let small = DriverConfig {
        buf_alloc: 8192,
        credit_update_threshold: Some(2048),
        ..DriverConfig::default()
    };
    let mut p = pair_with(DriverConfig::default(), small, true);
    let (ida, idb) = connect(&mut p, 7);
    assert_eq!(p.a.stream_info(ida).expect("info").peer_buf_alloc, 8192);
    let data = pattern(64 * 1024, 1);
    // Exactly the advertised window goes out, then nothing until B reads.
    assert_eq!(p.a.send(ida, &data).expect("send"), 8192);
    assert_eq!(p.a.send(ida, &data[8192..]).expect("send"), 0);
    drive(&mut p, "B to buffer the window", |p| {
        p.b.buffered(idb).expect("buffered") == 8192
    });
    assert_eq!(p.a.send(ida, &data[8192..]).expect("send"), 0);
    // Reading less than the threshold announces nothing.
    let mut got = Vec::new();
    p.b.recv_max(idb, &mut got, 1000).expect("recv");
    assert_eq!(
        p.b.stream_info(idb)
            .expect("info")
            .counters
            .credit_updates_sent,
        0
    );
    // Crossing it sends a CREDIT_UPDATE that opens exactly what was consumed.
    p.b.recv_max(idb, &mut got, 2000).expect("recv");
    assert_eq!(
        p.b.stream_info(idb)
            .expect("info")
            .counters
            .credit_updates_sent,
        1
    );
    drive(&mut p, "the credit update", |p| {
        p.a.stream_info(ida).expect("info").credit == 3000
    });
    assert_eq!(p.a.send(ida, &data[8192..]).expect("send"), 3000);
    // The rest, concurrently; B checks the window was never overrun.
    let (a, b) = (&mut p.a, &mut p.b);
    let sent = 8192 + 3000;
    let rest_out = &data[sent..];
    std::thread::scope(|s| {
        s.spawn(move || a.send_all(ida, rest_out, T).expect("send rest"));
        let rest = b
            .recv_exact(idb, data.len() - got.len(), T)
            .expect("recv rest");
        got.extend_from_slice(&rest);
    });
    assert!(got == data);
    let ib = p.b.stream_info(idb).expect("info");
    assert_eq!(ib.counters.credit_violations, 0);
    // Each update opens at most the 8 KiB window again: at least 7 were needed for 64 KiB.
    assert!(ib.counters.credit_updates_sent >= 7);
    assert_eq!(ib.rx_buffered, 0);
}

#[test]
fn credit_request_is_answered_with_an_update() {
    let mut p = pair();
    let (ida, idb) = connect(&mut p, 8);
    p.a.request_credit(ida).expect("request");
    drive(&mut p, "the answer", |p| {
        p.a.stream_info(ida)
            .expect("info")
            .counters
            .credit_updates_received
            == 1
    });
    let ib = p.b.stream_info(idb).expect("info");
    assert_eq!(ib.counters.credit_requests_received, 1);
    assert_eq!(ib.counters.credit_updates_sent, 1);
    assert!(p
        .sw
        .stats()
        .tx_headers
        .iter()
        .any(|(src, h)| *src == A && h.op_raw() == OP_CREDIT_REQUEST));
}

#[test]
fn refused_connections_end_in_rst() {
    let mut p = pair();
    // B is not listening: B answers RST.
    let id = p.a.connect(B, 9).expect("connect");
    drive(&mut p, "the refusal", |p| {
        p.a.state(id).expect("state") == StreamState::Reset
    });
    assert_eq!(p.b.stats().rst_sent, 1);
    assert_eq!(p.a.stats().rst_received, 1);
    // Closing a stream that is still connecting resets it.
    let id = p.a.connect(B, 9).expect("connect");
    p.a.close(id).expect("close");
    assert_eq!(p.a.state(id).expect("state"), StreamState::Closed);
    assert_eq!(p.a.stats().rst_sent, 1);
    // Nobody has CID 77: the switch answers RST; connect_blocking reports it.
    let (a, b) = (&mut p.a, &mut p.b);
    let err = a.connect_blocking(77, 1, T).expect_err("refused");
    assert!(matches!(err, DriverError::Refused { cid: 77, port: 1 }));
    assert_eq!(b.stats().rx_packets, 1);
}

#[test]
fn close_and_shutdown_sequences() {
    // Linux-like B: a full SHUTDOWN is answered with RST.
    let mut p = pair();
    let (ida, idb) = connect(&mut p, 10);
    p.a.send_all(ida, b"last words", T).expect("send");
    p.a.close(ida).expect("close");
    assert_eq!(p.a.state(ida).expect("state"), StreamState::Closing);
    drive(&mut p, "the close", |p| {
        p.a.state(ida).expect("state") == StreamState::Closed
    });
    let ib = p.b.stream_info(idb).expect("info");
    assert_eq!(ib.state, StreamState::Closed);
    assert_eq!(ib.peer_shutdown, SHUTDOWN_BOTH);
    // Data that arrived before the close is still readable.
    assert_eq!(p.b.recv_to_end(idb, T).expect("rest"), b"last words");
    assert!(matches!(
        p.a.send(ida, b"x"),
        Err(DriverError::BadState { .. })
    ));

    // Without auto-RST: half-close, data the other way, then an explicit reset.
    let no_rst = DriverConfig {
        auto_rst_on_peer_shutdown: false,
        ..DriverConfig::default()
    };
    let mut p = pair_with(DriverConfig::default(), no_rst, true);
    let (ida, idb) = connect(&mut p, 11);
    p.a.send_all(ida, b"request", T).expect("send");
    p.a.shutdown(ida, SHUTDOWN_SEND).expect("shutdown");
    let mut got = Vec::new();
    drive(&mut p, "the half close", |p| {
        p.b.recv(idb, &mut got).expect("recv");
        p.b.state(idb).expect("state") == StreamState::PeerShutdown(SHUTDOWN_SEND)
    });
    p.b.recv(idb, &mut got).expect("recv");
    assert_eq!(got, b"request");
    assert_eq!(p.b.recv_to_end(idb, T).expect("end"), b"");
    p.b.send_all(idb, b"reply", T).expect("reply");
    drive(&mut p, "the reply", |p| p.a.buffered(ida).expect("n") == 5);
    p.a.close(ida).expect("close");
    drive(&mut p, "B to see the full shutdown", |p| {
        p.b.stream_info(idb).expect("info").peer_shutdown == SHUTDOWN_BOTH
    });
    assert_eq!(p.a.state(ida).expect("state"), StreamState::Closing);
    p.b.reset_stream(idb).expect("rst");
    drive(&mut p, "A to finish closing", |p| {
        p.a.state(ida).expect("state") == StreamState::Closed
    });
    assert_eq!(p.b.state(idb).expect("state"), StreamState::Closed);
}

#[test]
fn packets_for_unknown_streams_get_rst_and_raw_packets_are_recorded() {
    let cfg = DriverConfig {
        record_payloads: true,
        ..DriverConfig::default()
    };
    let mut p = pair_with(DriverConfig::default(), cfg, true);
    // An RW for no connection, with the header cut over two descriptors.
    let mut hdr = PacketHeader::stream(Op::Rw, A, 5000, B, 6000);
    hdr.set_len(3).set_credit(100, 0);
    p.a.send_raw(
        &hdr,
        b"abc",
        &TxLayout::Custom {
            sizes: vec![20, 24, 3],
            indirect: false,
        },
    )
    .expect("raw");
    drive(&mut p, "the RST", |p| {
        p.a.received_raw().iter().any(|r| r.op() == Some(Op::Rst))
    });
    let rst =
        p.a.wait_for_packet(|r| r.op() == Some(Op::Rst), T)
            .expect("RST back");
    assert_eq!(rst.header.src_port(), 6000);
    assert_eq!(rst.header.dst_port(), 5000);
    assert_eq!(rst.used_len, HEADER_SIZE as u32);
    let seen = p.b.received_raw().front().cloned().expect("recorded");
    assert_eq!(seen.header, hdr);
    assert_eq!(seen.payload, b"abc");
    assert!(!seen.malformed);
    assert_eq!(p.b.stats().rx_unknown_stream, 1);
    // An unknown op, and a chain shorter than its header's len: the device rejects both.
    let mut bad = PacketHeader::stream(Op::Rw, A, 5000, B, 6000);
    bad.set_op_raw(99);
    p.a.send_raw(&bad, &[], &TxLayout::Single).expect("raw");
    let mut liar = PacketHeader::stream(Op::Rw, A, 1, B, 2);
    liar.set_len(100);
    p.a.send_raw(&liar, b"short", &TxLayout::Single)
        .expect("raw");
    p.a.flush_tx(T).expect("flush");
    assert_eq!(p.sw.stats().bad_chains, 2);
    assert_eq!(p.b.stats().rst_sent, 1);
    assert_eq!(p.b.take_received_raw().len(), 1);
    assert!(p.b.received_raw().is_empty());
}

#[test]
fn transport_reset_event_resets_every_stream() {
    let mut p = pair();
    let (ida, _) = connect(&mut p, 12);
    p.sw.inject_event(A, EVENT_TRANSPORT_RESET);
    let events = p.a.wait_for_events(T).expect("event");
    assert_eq!(events, vec![EVENT_TRANSPORT_RESET]);
    assert_eq!(p.a.state(ida).expect("state"), StreamState::Reset);
    assert_eq!(p.a.stats().transport_resets, 1);
    // The event buffer was reposted: a second event arrives too.
    p.sw.inject_event(A, EVENT_TRANSPORT_RESET);
    assert_eq!(p.a.wait_for_events(T).expect("event").len(), 1);
    // Listeners survive; new connections work.
    let (ida, idb) = connect(&mut p, 13);
    echo(&mut p, ida, idb, b"still alive");
}

#[test]
fn pump_times_out_quietly_and_memory_is_returned() {
    let ram = GuestRam::new(4 << 20).expect("ram");
    {
        let mut d = VsockDriver::new(&ram, A, true, DriverConfig::default()).expect("driver");
        d.start().expect("start");
        assert!(ram.allocated_bytes() > 256 * 4096);
        let t = Instant::now();
        assert_eq!(d.pump(Duration::from_millis(30)).expect("pump"), 0);
        assert!(t.elapsed() >= Duration::from_millis(30));
        let id = d.connect(B, 1).expect("connect");
        let err = d
            .wait_state(id, StreamState::is_established, Duration::from_millis(20))
            .expect_err("nobody answers");
        assert!(matches!(err, DriverError::Timeout { .. }));
        // The REQUEST is still in the TX queue, its buffer allocated.
        assert_eq!(d.tx_in_flight(), 1);
        d.reset().expect("reset");
        assert_eq!(d.tx_in_flight(), 0);
        assert_eq!(d.state(id).expect("state"), StreamState::Reset);
    }
    assert_eq!(ram.allocated_bytes(), 0);
}

#[test]
fn rx_buffers_are_posted_on_demand_when_refill_is_off() {
    let none = DriverConfig {
        rx_buffers: Some(0),
        ..DriverConfig::default()
    };
    let mut p = pair_with(DriverConfig::default(), none, true);
    assert_eq!(p.b.rx_posted(), 0);
    p.b.set_rx_refill(false);
    p.b.post_rx_buffers(2).expect("post");
    assert_eq!(p.b.rx_posted(), 2);
    // The REQUEST uses one buffer, which is not given back.
    let (_, idb) = connect(&mut p, 30);
    assert_eq!(p.b.rx_posted(), 1);
    assert!(p.b.state(idb).expect("state").is_established());
    // Refill on again: used buffers go back.
    p.b.set_rx_refill(true);
    p.a.request_credit(p.a.stream_ids()[0])
        .expect("credit request");
    drive(&mut p, "the credit request", |p| {
        p.b.stats().rx_packets == 2
    });
    assert_eq!(p.b.rx_posted(), 1);
}

#[test]
fn ports_and_listeners() {
    let mut p = pair();
    p.b.listen(20).expect("listen");
    assert!(matches!(p.b.listen(20), Err(DriverError::PortInUse(20))));
    assert!(matches!(p.b.accept(21), Err(DriverError::NotListening(21))));
    let id1 = p.a.connect_from(5555, B, 20).expect("connect");
    assert!(matches!(
        p.a.connect_from(5555, B, 20),
        Err(DriverError::PortInUse(5555))
    ));
    let id2 = p.a.connect(B, 20).expect("ephemeral");
    let info = p.a.stream_info(id2).expect("info");
    assert_eq!(info.local_port, 1024);
    drive(&mut p, "both connections", |p| {
        p.a.state(id1).expect("s").is_established() && p.a.state(id2).expect("s").is_established()
    });
    let first = p.b.accept(20).expect("accept").expect("one");
    assert_eq!(p.b.stream_info(first).expect("info").peer_port, 5555);
    assert!(p.b.accept(20).expect("accept").is_some());
    assert!(p.b.accept(20).expect("accept").is_none());
    p.b.unlisten(20).expect("unlisten");
    p.a.forget(id1).expect("forget");
    assert!(matches!(p.a.state(id1), Err(DriverError::UnknownStream(_))));
}
