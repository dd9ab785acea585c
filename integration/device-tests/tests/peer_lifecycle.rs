//! The life of VM-to-VM connections (SPEC.md §3.2 SHUTDOWN, §4.1 when entries are freed, §8.3
//! lifecycle, §8.4 event queue, §10 RST cases): half-close, entries freed after both shutdowns, a
//! peer that disconnects or resets its device mid-stream (RST within one second, state freed,
//! reattach works), and TRANSPORT_RESET only when rings already in use are restored.

use std::time::{Duration, Instant};

use harness::peers::{assert_same_bytes, connect_peers, drive, send_and_expect};
use harness::transfer::{run, Job};
use harness::{random_bytes, wait_until, Harness, VmSpec};
use sockbypass_frontend::{DriverConfig, StreamId, StreamState, TestVm};
use sockbypass_wire::consts::{
    EVENT_TRANSPORT_RESET, RX_QUEUE, SHUTDOWN_BOTH, SHUTDOWN_SEND, TX_QUEUE,
};
use sockbypass_wire::Op;

const T: Duration = Duration::from_secs(20);
const KIB: usize = 1024;
/// The longest a peer may wait for the RST after its partner went away.
const RST_DEADLINE: Duration = Duration::from_secs(1);

fn vms(names: &[(&'static str, u64)]) -> Harness {
    let specs: Vec<VmSpec> = names.iter().map(|(n, c)| VmSpec::new(n, *c)).collect();
    Harness::start(&specs)
}

/// `a` and `b` exchange `n` bytes each way on a fresh connection to `port` of `b`.
fn exchange(a: &mut TestVm, b: &mut TestVm, port: u32, n: usize) {
    let (ida, idb) = connect_peers(a, b, port, T);
    let (up, down) = (random_bytes(n, 1), random_bytes(n, 2));
    let mut ja = [Job::new(ida, up.clone(), n, 3)];
    let mut jb = [Job::new(idb, down.clone(), n, 4)];
    std::thread::scope(|s| {
        s.spawn(|| run(a.driver_mut(), &mut ja, T, "a"));
        s.spawn(|| run(b.driver_mut(), &mut jb, T, "b"));
    });
    assert_same_bytes(&jb[0].got, &up, "a → b");
    assert_same_bytes(&ja[0].got, &down, "b → a");
}

/// Streams from `a` to `b` on (`ida`, `idb`) until `b` has read `n` bytes.
fn stream_until(a: &mut TestVm, b: &mut TestVm, ida: StreamId, idb: StreamId, n: usize) {
    let data = random_bytes(4 * n, 9);
    let mut ja = Job::new(ida, data, 0, 1);
    let mut jb = Job::new(idb, Vec::new(), 4 * n, 2);
    drive(&mut [a, b], T, "the stream to get going", |vms| {
        ja.step(vms[0].driver_mut());
        jb.step(vms[1].driver_mut());
        jb.got.len() >= n
    });
}

/// Waits for the RST of (`id`) at `vm`, and checks it arrived within [`RST_DEADLINE`] of `since`.
fn assert_reset_in_time(vm: &mut TestVm, id: StreamId, since: Instant) {
    vm.driver_mut()
        .wait_state(id, |s| s == StreamState::Reset, T)
        .expect("the peer's connection is reset");
    let elapsed = since.elapsed();
    assert!(elapsed < RST_DEADLINE, "the RST came after {elapsed:?}");
}

#[test]
fn half_close_one_side_stops_sending_and_still_receives() {
    let h = vms(&[("a", 3), ("b", 4)]);
    let (mut a, mut b) = (h.vm("a"), h.vm("b"));
    let (ida, idb) = connect_peers(&mut a, &mut b, 5000, T);
    let a_port = a.driver().stream_info(ida).expect("info").local_port;
    a.driver_mut().send_all(ida, b"request", T).expect("send");
    a.driver_mut()
        .shutdown(ida, SHUTDOWN_SEND)
        .expect("shutdown");
    // b reads to the end of a's data, and sees the half-close with its flags intact.
    let got = b
        .driver_mut()
        .recv_to_end(idb, T)
        .expect("b reads to the end");
    assert_eq!(got, b"request");
    assert_eq!(
        b.driver().state(idb).expect("state"),
        StreamState::PeerShutdown(SHUTDOWN_SEND)
    );
    let sd = b
        .driver()
        .received_raw()
        .iter()
        .find(|p| p.op() == Some(Op::Shutdown))
        .cloned()
        .expect("b received the SHUTDOWN");
    assert_eq!(sd.header.flags(), SHUTDOWN_SEND);
    assert_eq!((sd.header.src_cid(), sd.header.src_port()), (3, a_port));

    // b still sends, a still receives: more than one credit window.
    let reply = random_bytes(300 * KIB, 5);
    let mut ja = [Job::new(ida, Vec::new(), reply.len(), 1)];
    let mut jb = [Job::new(idb, reply.clone(), 0, 2)];
    std::thread::scope(|s| {
        s.spawn(|| run(a.driver_mut(), &mut ja, T, "a"));
        s.spawn(|| run(b.driver_mut(), &mut jb, T, "b"));
    });
    assert_same_bytes(&ja[0].got, &reply, "b → a after a's half-close");
    assert_eq!(h.gauges("a").peer_conns, 1, "half-closed is still open");

    // b closes too; a answers with RST, which frees the entry.
    b.driver_mut().close(idb).expect("close");
    drive(&mut [&mut a, &mut b], T, "the close", |vms| {
        vms[1].driver().state(idb).expect("state") == StreamState::Closed
    });
    h.wait_peer_entries_freed("a", "b", T);
    assert_eq!(h.counters("a").fwd_bytes, 7);
    assert_eq!(h.counters("b").fwd_bytes, reply.len() as u64);
}

#[test]
fn both_shutdowns_without_rst_free_the_entry_within_ten_seconds() {
    let h = vms(&[("a", 3), ("b", 4)]);
    let mut a = h.vm("a");
    let mut b = h.vm_with(
        "b",
        DriverConfig {
            auto_rst_on_peer_shutdown: false,
            ..DriverConfig::default()
        },
    );
    let (ida, idb) = connect_peers(&mut a, &mut b, 5000, T);
    a.driver_mut()
        .close(ida)
        .expect("close: SHUTDOWN with both flags");
    b.driver_mut()
        .wait_until(T, "the full shutdown", |d| {
            Ok((d.stream_info(idb)?.peer_shutdown == SHUTDOWN_BOTH).then_some(()))
        })
        .expect("b sees both flags");
    // Nobody sends RST: the switch frees the entry on its own (within 10 s).
    h.wait_peer_entries_freed("a", "b", Duration::from_secs(15));
}

#[test]
fn a_vm_that_disconnects_mid_stream_resets_its_peer_within_one_second() {
    let h = vms(&[("a", 3), ("b", 4), ("c", 5)]);
    let (mut a, mut b, mut c) = (h.vm("a"), h.vm("b"), h.vm("c"));
    let (ab_a, ab_b) = connect_peers(&mut a, &mut b, 5000, T);
    let (cb_c, cb_b) = connect_peers(&mut c, &mut b, 5001, T);
    let a_port = a.driver().stream_info(ab_a).expect("info").local_port;
    stream_until(&mut a, &mut b, ab_a, ab_b, 512 * KIB);

    a.disconnect();
    assert_reset_in_time(&mut b, ab_b, Instant::now());
    let rst = b
        .driver()
        .received_raw()
        .iter()
        .rev()
        .find(|p| p.op() == Some(Op::Rst))
        .cloned()
        .expect("an RST");
    assert_eq!(
        (
            rst.header.src_cid(),
            rst.header.src_port(),
            rst.header.dst_port()
        ),
        (3, a_port, 5000),
        "the RST names the dead connection"
    );
    assert!(
        wait_until(T, || {
            let (ga, gb) = (h.gauges("a"), h.gauges("b"));
            ga.peer_conns == 0
                && gb.peer_conns == 1
                && ga.held_chains == 0
                && gb.inbound_queued == 0
        }),
        "a's state freed: a {:?}, b {:?}",
        h.gauges("a"),
        h.gauges("b")
    );
    // c and b carry on.
    send_and_expect(&mut c, cb_c, &mut b, cb_b, b"still here", T);
    send_and_expect(&mut b, cb_b, &mut c, cb_c, b"me too", T);
    // a comes back and connects again.
    a.reconnect().expect("a reattaches");
    exchange(&mut a, &mut b, 5002, 64 * KIB);
}

#[test]
fn a_receiver_that_resets_its_device_resets_its_sender_within_one_second() {
    let h = vms(&[("a", 3), ("b", 4)]);
    let mut a = h.vm("a");
    // Few RX buffers at b, so a's chains are held by the switch when b stops reading.
    let mut b = h.vm_with(
        "b",
        DriverConfig {
            rx_buffers: Some(4),
            ..DriverConfig::default()
        },
    );
    let (ida, idb) = connect_peers(&mut a, &mut b, 5000, T);
    stream_until(&mut a, &mut b, ida, idb, 64 * KIB);
    // a fills b's window while b does not read.
    let data = random_bytes(256 * KIB, 3);
    let mut off = 0;
    // Polled: nothing signals a's driver when the switch starts holding its chains.
    let held = wait_until(T, || {
        let d = a.driver_mut();
        off += d.send(ida, &data[off..]).expect("send");
        d.poll().expect("poll");
        h.gauges("a").held_chains > 0
    });
    assert!(held, "a's chains held: {:?}", h.gauges("a"));

    b.guest_reset().expect("b resets its device");
    assert_reset_in_time(&mut a, ida, Instant::now());
    a.driver_mut()
        .flush_tx(T)
        .expect("every chain a gave the switch came back");
    assert!(
        wait_until(T, || {
            let (ga, gb) = (h.gauges("a"), h.gauges("b"));
            ga.peer_conns == 0
                && gb.peer_conns == 0
                && ga.held_chains == 0
                && gb.inbound_queued == 0
        }),
        "state freed: a {:?}, b {:?}",
        h.gauges("a"),
        h.gauges("b")
    );
    // b's listener survives the reset; a connects again once b is attached.
    h.wait_attached("b");
    exchange(&mut a, &mut b, 5000, 64 * KIB);
}

#[test]
fn restoring_rings_in_use_sends_transport_reset() {
    let h = vms(&[("a", 3), ("b", 4)]);
    let (mut a, mut b) = (h.vm("a"), h.vm("b"));
    let (ida, idb) = connect_peers(&mut a, &mut b, 5000, T);
    send_and_expect(&mut a, ida, &mut b, idb, b"before", T);
    a.driver_mut().flush_tx(T).expect("flush");

    // The backend "restarts" under a driver that keeps running: same rings, bases = used index.
    let bases = a
        .reconnect_keep_rings()
        .expect("reattach with the same rings");
    assert!(
        bases[RX_QUEUE] > 0 && bases[TX_QUEUE] > 0,
        "the rings were in use: {bases:?}"
    );
    let events = a.driver_mut().wait_for_events(T).expect("an event");
    assert_eq!(events, vec![EVENT_TRANSPORT_RESET]);
    assert_eq!(a.driver().stats().transport_resets, 1);
    assert_eq!(a.driver().state(ida).expect("state"), StreamState::Reset);
    assert_eq!(h.counters("a").events_sent, 1);
    b.driver_mut()
        .wait_state(idb, |s| s == StreamState::Reset, T)
        .expect("b's side of the old connection is reset");
    // The driver goes on, on the same rings.
    exchange(&mut a, &mut b, 5001, 64 * KIB);
    assert_eq!(a.driver().stats().transport_resets, 1, "only one");
}

#[test]
fn fresh_attaches_get_no_transport_reset() {
    let h = vms(&[("a", 3), ("b", 4)]);
    let (mut a, mut b) = (h.vm("a"), h.vm("b"));
    let check = |a: &mut TestVm, b: &mut TestVm, port: u32, when: &str| {
        exchange(a, b, port, 4 * KIB);
        assert_eq!(a.driver_mut().take_events(), Vec::<u32>::new(), "{when}");
        assert_eq!(a.driver().stats().transport_resets, 0, "{when}");
        assert_eq!(h.counters("a").events_sent, 0, "{when}");
    };
    check(&mut a, &mut b, 5000, "first attach");
    a.reconnect().expect("reconnect");
    check(&mut a, &mut b, 5001, "after reconnect");
    a.guest_reset().expect("guest reset");
    check(&mut a, &mut b, 5002, "after guest reset");
    a.disconnect();
    assert!(wait_until(T, || !h.is_attached("a")), "a detached");
    a.reconnect().expect("reconnect after a detach");
    check(&mut a, &mut b, 5003, "after detach and reconnect");
}
