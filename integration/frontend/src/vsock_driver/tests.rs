//! The driver against a device the test plays itself ([`RawDevice`]): what the driver sends
//! is read back as it left (headers, payloads, descriptor counts), and what it receives is
//! written by the test, so each test fixes both sides of the wire. Streams between two drivers
//! through the real `sockbypassd` are in `tests/driver_streams.rs`.

use std::time::{Duration, Instant};

use sockbypass_wire::consts::{EVENT_TRANSPORT_RESET, HEADER_SIZE};
use sockbypass_wire::{Op, PacketHeader};

use super::*;
use crate::error::DriverError;
use crate::guest_memory::GuestRam;
use crate::stream::{StreamId, StreamState};
use crate::test_device::{RawDevice, Sent};
use crate::tx::TxLayout;

const T: Duration = Duration::from_secs(10);
const A: u64 = 3;
const B: u64 = 4;

/// A started driver for `cid` on its own guest RAM, and the device side of its rings.
fn on_raw_device(cid: u64, cfg: DriverConfig, event_idx: bool) -> (VsockDriver, RawDevice) {
    let ram = GuestRam::new(8 << 20).expect("ram");
    let mut d = VsockDriver::new(&ram, cid, event_idx, cfg).expect("driver");
    let dev = RawDevice::attach(&d);
    d.start().expect("start");
    (d, dev)
}

/// What the driver sent since the last call; every chain must be well-formed.
fn sent(dev: &mut RawDevice) -> Vec<Sent> {
    dev.take_tx()
        .into_iter()
        .map(|r| r.expect("a chain the wire crate accepts"))
        .collect()
}

/// Connects `d` to port `port` of CID B: the test answers the REQUEST with a RESPONSE that
/// grants `buf_alloc` bytes.
fn connect_raw(d: &mut VsockDriver, dev: &mut RawDevice, port: u32, buf_alloc: u32) -> StreamId {
    let id = d.connect(B, port).expect("connect");
    let out = sent(dev);
    let req = out
        .iter()
        .find(|s| s.header.op() == Some(Op::Request) && s.header.dst_port() == port)
        .unwrap_or_else(|| panic!("a REQUEST to port {port} among {out:?}"));
    assert_eq!((req.header.src_cid(), req.header.dst_cid()), (A, B));
    let mut resp = req.header.reply(Op::Response);
    resp.set_credit(buf_alloc, 0);
    dev.deliver(&resp, &[]);
    d.wait_state(id, StreamState::is_established, T)
        .expect("connected");
    id
}

fn pattern(n: usize, seed: u32) -> Vec<u8> {
    (0..n as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 13) as u8)
        .collect()
}

#[test]
fn full_rw_packets_go_out_in_the_layout_asked_for() {
    for (i, layout) in TxLayout::each_kind().iter().enumerate() {
        for event_idx in [true, false] {
            let cfg = DriverConfig {
                tx_layout: layout.clone(),
                max_payload: 8192,
                ..DriverConfig::default()
            };
            let (mut a, mut dev) = on_raw_device(A, cfg, event_idx);
            let id = connect_raw(&mut a, &mut dev, 1000 + i as u32, 1 << 20);
            let data = pattern(3 * 8192 + 100, i as u32);
            assert_eq!(a.send(id, &data).expect("send"), data.len());
            let want = match layout {
                TxLayout::Single => 1,
                TxLayout::Split { payload_descs } => 1 + payload_descs,
                TxLayout::Indirect { payload_descs } => 1 + payload_descs,
                TxLayout::Custom { .. } => unreachable!(),
            };
            let rw: Vec<Sent> = sent(&mut dev)
                .into_iter()
                .filter(|s| s.header.op() == Some(Op::Rw))
                .collect();
            let lens: Vec<u32> = rw.iter().map(|s| s.header.len()).collect();
            assert_eq!(lens, [8192, 8192, 8192, 100], "{layout:?}");
            for s in &rw[..3] {
                assert_eq!(s.descs, want, "{layout:?}, event_idx {event_idx}");
            }
            let bytes: Vec<u8> = rw.iter().flat_map(|s| s.payload.clone()).collect();
            assert!(bytes == data, "{layout:?}: the payloads are the data");
            a.flush_tx(T).expect("every chain came back");
        }
    }
}

#[test]
fn packets_for_unknown_streams_get_rst_and_raw_packets_are_recorded() {
    let cfg = DriverConfig {
        record_payloads: true,
        ..DriverConfig::default()
    };
    let (mut a, mut dev_a) = on_raw_device(A, DriverConfig::default(), true);
    let (mut b, mut dev_b) = on_raw_device(B, cfg, true);
    // An RW for no connection, with the header cut over two descriptors: it leaves whole.
    let mut hdr = PacketHeader::stream(Op::Rw, A, 5000, B, 6000);
    hdr.set_len(3).set_credit(100, 0);
    a.send_raw(
        &hdr,
        b"abc",
        &TxLayout::Custom {
            sizes: vec![20, 24, 3],
            indirect: false,
        },
    )
    .expect("raw");
    let out = sent(&mut dev_a);
    let want = Sent {
        header: hdr,
        payload: b"abc".to_vec(),
        descs: 3,
    };
    assert_eq!(out, [want]);
    // B records it as it arrived and answers RST.
    dev_b.deliver(&hdr, b"abc");
    b.wait_until(
        T,
        "B's RST",
        |b| Ok((b.stats().rst_sent == 1).then_some(())),
    )
    .expect("RST sent");
    let seen = b.received_raw().front().cloned().expect("recorded");
    assert_eq!(seen.header, hdr);
    assert_eq!(seen.payload, b"abc");
    assert!(!seen.malformed);
    assert_eq!(b.stats().rx_unknown_stream, 1);
    let rst = sent(&mut dev_b);
    assert_eq!(rst.len(), 1, "{rst:?}");
    assert_eq!(rst[0].header.op(), Some(Op::Rst));
    assert_eq!(rst[0].header.src_port(), 6000);
    assert_eq!(rst[0].header.dst_port(), 5000);
    // A receives the RST, a header alone.
    dev_a.deliver(&rst[0].header, &[]);
    let rst = a
        .wait_for_packet(|r| r.op() == Some(Op::Rst), T)
        .expect("RST back");
    assert_eq!(rst.header.src_port(), 6000);
    assert_eq!(rst.header.dst_port(), 5000);
    assert_eq!(rst.used_len, HEADER_SIZE as u32);
    // An unknown op, and a chain shorter than its header's len: the device rejects both.
    let mut bad = PacketHeader::stream(Op::Rw, A, 5000, B, 6000);
    bad.set_op_raw(99);
    a.send_raw(&bad, &[], &TxLayout::Single).expect("raw");
    let mut liar = PacketHeader::stream(Op::Rw, A, 1, B, 2);
    liar.set_len(100);
    a.send_raw(&liar, b"short", &TxLayout::Single).expect("raw");
    assert_eq!(dev_a.take_tx(), [Err(()), Err(())]);
    a.flush_tx(T).expect("flush");
    assert_eq!(b.stats().rst_sent, 1);
    assert_eq!(b.take_received_raw().len(), 1);
    assert!(b.received_raw().is_empty());
}

#[test]
fn transport_reset_event_resets_every_stream() {
    let (mut a, mut dev) = on_raw_device(A, DriverConfig::default(), true);
    a.listen(14).expect("listen");
    let ida = connect_raw(&mut a, &mut dev, 12, 64 * 1024);
    dev.event(EVENT_TRANSPORT_RESET);
    let events = a.wait_for_events(T).expect("event");
    assert_eq!(events, vec![EVENT_TRANSPORT_RESET]);
    assert_eq!(a.state(ida).expect("state"), StreamState::Reset);
    assert_eq!(a.stats().transport_resets, 1);
    // The event buffer was reposted: a second event arrives too.
    dev.event(EVENT_TRANSPORT_RESET);
    assert_eq!(a.wait_for_events(T).expect("event").len(), 1);
    // Listeners survive: a REQUEST to port 14 is accepted and answered.
    let mut req = PacketHeader::stream(Op::Request, B, 7000, A, 14);
    req.set_credit(64 * 1024, 0);
    dev.deliver(&req, &[]);
    a.accept_blocking(14, T).expect("accepted after the reset");
    let out = sent(&mut dev);
    assert!(
        out.iter()
            .any(|s| s.header.op() == Some(Op::Response) && s.header.dst_port() == 7000),
        "a RESPONSE to B:7000 among {out:?}"
    );
    // New connections work.
    let id = connect_raw(&mut a, &mut dev, 13, 64 * 1024);
    assert_eq!(a.send(id, b"still alive").expect("send"), 11);
    let out = sent(&mut dev);
    assert!(
        out.iter()
            .any(|s| s.header.op() == Some(Op::Rw) && s.payload == b"still alive"),
        "the data among {out:?}"
    );
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
