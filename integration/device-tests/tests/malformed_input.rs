//! Each kind of malformed guest input (SPEC.md §9): the chain comes back with used length 0, the
//! drop is counted under its reason, and the daemon goes on serving this VM and the others.
//!
//! VM `a` sends the bad input; VM `b` is attached the whole time, and the bad packets are
//! addressed to it where they carry a header, so anything that slipped through would reach it.
//! Afterwards `b` must have received nothing, and `a` and `b` must still reach each other.

use std::io::{Read, Write};
use std::thread;
use std::time::Duration;

use harness::peers::{connect_peers, send_and_expect};
use harness::{accept_within, Harness, VmSpec};
use sockbypass_frontend::{Buffer, RawDescriptor, TestVm, VmOptions};
use sockbypass_wire::consts::HOST_CID;
use sockbypass_wire::{Op, PacketHeader};
use sockbypassd::metrics::VmCountersSnapshot;
use vm_memory::{ByteValued, GuestAddress};

const T: Duration = Duration::from_secs(10);

/// Flag values of a split-queue descriptor.
const F_NEXT: u16 = 1;
/// CIDs of the sender of bad input and of the VM beside it.
const A_CID: u64 = 3;
const B_CID: u64 = 4;

struct Setup {
    h: Harness,
    /// Sends the bad input.
    vm: TestVm,
    /// Attached beside it; must see nothing.
    b: TestVm,
}

fn setup() -> Setup {
    let h = Harness::start(&[VmSpec::new("a", A_CID), VmSpec::new("b", B_CID)]);
    let vm = h.vm("a");
    let b = h.vm("b");
    Setup { h, vm, b }
}

/// Writes `bytes` into fresh guest memory and returns its address.
fn guest_bytes(vm: &TestVm, bytes: &[u8]) -> GuestAddress {
    let r = vm.ram().alloc(bytes.len().max(1) as u64, 8).expect("alloc");
    vm.ram().write(r.addr, bytes).expect("write");
    r.addr
}

/// A header from `a` to `b` with the given raw op, type and length.
fn header(op: u16, type_: u16, len: u32) -> Vec<u8> {
    let mut h = PacketHeader::stream(Op::Request, A_CID, 1234, B_CID, 5000);
    h.set_op_raw(op).set_type(type_).set_len(len);
    h.as_slice().to_vec()
}

/// Posts `head` (already in the available ring), kicks, and waits for the device to return it.
fn expect_returned_with_zero(vm: &mut TestVm, head: u16) {
    let q = vm.driver_mut().tx_queue_mut();
    q.kick().expect("kick");
    let end = std::time::Instant::now() + T;
    loop {
        if let Some(used) = q.pop_used().expect("used ring") {
            assert_eq!(
                used.id,
                u32::from(head),
                "the malformed chain itself comes back"
            );
            assert_eq!(used.len, 0, "with used length 0");
            return;
        }
        assert!(
            std::time::Instant::now() < end,
            "chain {head} never came back"
        );
        let _ = q.wait_call(Duration::from_millis(20));
    }
}

/// The daemon still serves VM `a` (to the host) after the bad input; `b` saw none of it, and
/// `a` and `b` still reach each other.
fn still_serves(s: &mut Setup) {
    assert_host_echo(&s.h, &mut s.vm, "a");
    assert_saw_nothing(&s.h, &mut s.b, "b");
    let (ia, ib) = connect_peers(&mut s.vm, &mut s.b, 6000, T);
    send_and_expect(&mut s.vm, ia, &mut s.b, ib, b"a to b", T);
    send_and_expect(&mut s.b, ib, &mut s.vm, ia, b"b to a", T);
}

/// VM `name` connects to a host echo program and gets its bytes back.
fn assert_host_echo(h: &Harness, vm: &mut TestVm, name: &str) {
    let port = 9000 + (h.counters(name).tx_packets % 1000) as u32;
    let listener = h.host_listener(name, port);
    let echo = thread::spawn(move || {
        let mut c = accept_within(&listener, T, "the echo program");
        let mut b = [0u8; 5];
        c.read_exact(&mut b).expect("read");
        c.write_all(&b).expect("echo");
    });
    let d = vm.driver_mut();
    let id = d
        .connect_blocking(HOST_CID, port, T)
        .expect("connect after bad input");
    d.send_all(id, b"alive", T).expect("send");
    assert_eq!(d.recv_exact(id, 5, T).expect("echo"), b"alive");
    echo.join().expect("echo thread");
}

/// VM `name` (attached, its driver running) received no packet and sent nothing malformed.
fn assert_saw_nothing(h: &Harness, vm: &mut TestVm, name: &str) {
    vm.driver_mut().poll().expect("poll");
    let k = h.counters(name);
    assert_eq!(
        (k.rx_packets, k.malformed_total()),
        (0, 0),
        "{name} saw nothing: {k:?}"
    );
    assert!(
        vm.driver().received_raw().is_empty(),
        "{name}'s guest got packets: {:?}",
        vm.driver().received_raw()
    );
}

fn check(chain: &[Buffer], counter: fn(&VmCountersSnapshot) -> u64) {
    let mut s = setup();
    let before = counter(&s.h.counters("a"));
    let head =
        s.vm.driver_mut()
            .tx_queue_mut()
            .add_chain(chain)
            .expect("add chain");
    expect_returned_with_zero(&mut s.vm, head);
    assert_eq!(
        counter(&s.h.counters("a")),
        before + 1,
        "counted under its reason"
    );
    still_serves(&mut s);
}

#[test]
fn chain_shorter_than_the_header() {
    check(&[Buffer::readable(GuestAddress(0x1000), 20)], |c| {
        c.drop_short_chain
    });
}

#[test]
fn zero_length_chain() {
    check(&[Buffer::readable(GuestAddress(0x1000), 0)], |c| {
        c.drop_short_chain
    });
}

#[test]
fn len_larger_than_the_chain() {
    let mut s = setup();
    let a = guest_bytes(&s.vm, &header(5, 1, 100));
    let before = s.h.counters("a").drop_len_over_chain;
    let head =
        s.vm.driver_mut()
            .tx_queue_mut()
            .add_chain(&[Buffer::readable(a, 44)])
            .expect("add");
    expect_returned_with_zero(&mut s.vm, head);
    assert_eq!(s.h.counters("a").drop_len_over_chain, before + 1);
    still_serves(&mut s);
}

#[test]
fn len_over_the_maximum_payload() {
    let mut s = setup();
    let len = 70_000u32;
    let mut bytes = header(5, 1, len);
    bytes.resize(44 + len as usize, 0xab);
    let a = guest_bytes(&s.vm, &bytes);
    let head =
        s.vm.driver_mut()
            .tx_queue_mut()
            .add_chain(&[Buffer::readable(a, 44 + len)])
            .expect("add");
    expect_returned_with_zero(&mut s.vm, head);
    assert_eq!(s.h.counters("a").drop_len_over_max, 1);
    still_serves(&mut s);
}

#[test]
fn address_outside_guest_memory() {
    check(&[Buffer::readable(GuestAddress(1 << 40), 44)], |c| {
        c.drop_outside_memory
    });
}

#[test]
fn write_only_descriptor_in_tx() {
    let mut s = setup();
    let a = guest_bytes(&s.vm, &header(1, 1, 0));
    let head =
        s.vm.driver_mut()
            .tx_queue_mut()
            .add_chain(&[Buffer::writable(a, 44)])
            .expect("add");
    expect_returned_with_zero(&mut s.vm, head);
    assert_eq!(s.h.counters("a").drop_flag_mismatch, 1);
    still_serves(&mut s);
}

#[test]
fn unknown_op_and_invalid_op() {
    let mut s = setup();
    for op in [0u16, 8, 99] {
        let a = guest_bytes(&s.vm, &header(op, 1, 0));
        let head =
            s.vm.driver_mut()
                .tx_queue_mut()
                .add_chain(&[Buffer::readable(a, 44)])
                .expect("add");
        expect_returned_with_zero(&mut s.vm, head);
    }
    assert_eq!(s.h.counters("a").drop_unknown_op, 3);
    still_serves(&mut s);
}

#[test]
fn unknown_socket_type() {
    let mut s = setup();
    let a = guest_bytes(&s.vm, &header(1, 2, 0));
    let head =
        s.vm.driver_mut()
            .tx_queue_mut()
            .add_chain(&[Buffer::readable(a, 44)])
            .expect("add");
    expect_returned_with_zero(&mut s.vm, head);
    assert_eq!(s.h.counters("a").drop_unknown_type, 1);
    still_serves(&mut s);
}

#[test]
fn descriptor_loop_ends_and_is_returned() {
    let mut s = setup();
    let a = guest_bytes(&s.vm, &header(1, 1, 0));
    let q = s.vm.driver_mut().tx_queue_mut();
    let idx = q.reserve_descriptors(1).expect("descriptor")[0];
    q.write_descriptor(
        idx,
        RawDescriptor {
            addr: a.0,
            len: 44,
            flags: F_NEXT,
            next: idx,
        },
    )
    .expect("loop descriptor");
    q.publish_head(idx).expect("publish");
    expect_returned_with_zero(&mut s.vm, idx);
    assert_eq!(s.h.counters("a").drop_bad_chain, 1);
    still_serves(&mut s);
}

#[test]
fn spoofed_source_cid_is_dropped_and_counted() {
    let mut s = setup();
    // A REQUEST from a that claims to come from b, to b.
    let mut h = PacketHeader::stream(Op::Request, B_CID, 1234, B_CID, 5000);
    h.set_credit(65536, 0);
    s.b.driver_mut().listen(5000).expect("listen");
    let a = guest_bytes(&s.vm, h.as_slice());
    let head =
        s.vm.driver_mut()
            .tx_queue_mut()
            .add_chain(&[Buffer::readable(a, 44)])
            .expect("add");
    expect_returned_with_zero(&mut s.vm, head);
    assert_eq!(s.h.counters("a").drop_spoofed_src, 1);
    assert_eq!(s.h.counters("a").rst_sent, 0, "not answered");
    assert_eq!(s.b.driver_mut().accept(5000).expect("accept"), None);
    still_serves(&mut s);
}

#[test]
fn a_bad_rx_chain_is_returned_and_counted() {
    let h = Harness::start(&[VmSpec::new("a", A_CID), VmSpec::new("b", B_CID)]);
    let mut b = h.vm("b");
    let mut opts = VmOptions::default();
    opts.driver.rx_buffers = Some(0);
    let mut vm = TestVm::connect(h.socket("a"), opts).expect("frontend");
    h.wait_attached("a");
    // A read-only "RX buffer": unusable for the device.
    let a = guest_bytes(&vm, &[0u8; 64]);
    let head = {
        let q = vm.driver_mut().rx_queue_mut();
        let head = q.add_chain(&[Buffer::readable(a, 64)]).expect("add");
        q.kick().expect("kick");
        head
    };
    // The device takes RX buffers only when it owes the guest something: make it owe an RST.
    vm.driver_mut().connect(HOST_CID, 4242).expect("REQUEST");
    let _ = vm.driver_mut().tx_queue_mut().kick();
    let q = vm.driver_mut().rx_queue_mut();
    let end = std::time::Instant::now() + T;
    let used = loop {
        if let Some(u) = q.pop_used().expect("used ring") {
            break u;
        }
        assert!(
            std::time::Instant::now() < end,
            "bad RX chain never came back"
        );
        let _ = q.wait_call(Duration::from_millis(20));
    };
    assert_eq!((used.id, used.len), (u32::from(head), 0));
    assert_eq!(h.counters("a").rx_bad_chain, 1);
    // b, attached beside it, saw nothing and still works.
    assert_saw_nothing(&h, &mut b, "b");
    assert_host_echo(&h, &mut b, "b");
}
