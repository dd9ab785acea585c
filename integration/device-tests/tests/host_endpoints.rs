//! Guest↔host streams through the host endpoints (SPEC.md §6), with the test frontend playing
//! QEMU and the guest driver. No QEMU needed.

use std::io::{Read, Write};
use std::thread;
use std::time::{Duration, Instant};

use harness::{
    accept_within, host_connect, random_bytes, random_chunks, sha256, wait_until, Harness, VmSpec,
};
use sockbypass_frontend::{StreamState, TestVm, VmOptions};
use sockbypass_wire::consts::HOST_CID;
use sockbypass_wire::Op;
use sockbypassd::host::connection::HOST_BUF_ALLOC;

const T: Duration = Duration::from_secs(20);
const MIB: usize = 1024 * 1024;

/// Sends `data` from the guest in random-size writes.
fn guest_send(vm: &mut TestVm, id: sockbypass_frontend::StreamId, data: &[u8], seed: u64) {
    let mut off = 0;
    for n in random_chunks(data.len(), 70_000, seed) {
        vm.driver_mut()
            .send_all(id, &data[off..off + n], T)
            .expect("guest send");
        off += n;
    }
}

/// Writes `data` to a host stream in random-size writes.
fn host_send(s: &mut impl Write, data: &[u8], seed: u64) {
    let mut off = 0;
    for n in random_chunks(data.len(), 50_000, seed) {
        s.write_all(&data[off..off + n]).expect("host write");
        off += n;
    }
}

#[test]
fn guest_connects_to_host_listener_and_1mib_each_way_is_byte_exact() {
    let h = Harness::start(&[VmSpec::new("a", 3)]);
    let listener = h.host_listener("a", 5000);
    let to_host = random_bytes(MIB, 1);
    let to_guest = random_bytes(MIB, 2);
    let (exp_host, to_guest2) = (sha256(&to_host), to_guest.clone());
    let host = thread::spawn(move || {
        let mut s = accept_within(&listener, T, "the host program");
        let mut got = vec![0u8; MIB];
        s.read_exact(&mut got).expect("host reads 1 MiB");
        host_send(&mut s, &to_guest2, 3);
        sha256(&got)
    });

    let mut vm = TestVm::connect(h.socket("a"), VmOptions::default()).expect("frontend");
    h.wait_attached("a");
    assert_eq!(vm.guest_cid(), 3, "guest_cid comes from GET_CONFIG");
    let id = vm
        .driver_mut()
        .connect_blocking(HOST_CID, 5000, T)
        .expect("connect to host port 5000");
    guest_send(&mut vm, id, &to_host, 4);
    let back = vm.driver_mut().recv_exact(id, MIB, T).expect("1 MiB back");
    assert_eq!(
        host.join().expect("host thread"),
        exp_host,
        "host got every byte in order"
    );
    assert_eq!(
        sha256(&back),
        sha256(&to_guest),
        "guest got every byte in order"
    );
    let c = h.counters("a");
    assert_eq!(c.malformed_total(), 0);
    assert!(c.tx_bytes >= MIB as u64 && c.rx_bytes >= MIB as u64);
}

#[test]
fn host_connects_with_connect_line_and_1mib_each_way_is_byte_exact() {
    let h = Harness::start(&[VmSpec::new("a", 3)]);
    let mut vm = TestVm::connect(h.socket("a"), VmOptions::default()).expect("frontend");
    h.wait_attached("a");
    vm.driver_mut().listen(6000).expect("listen");
    let to_guest = random_bytes(MIB, 5);
    let to_host = random_bytes(MIB, 6);
    let uds = h.uds("a");
    let to_guest2 = to_guest.clone();
    let host = thread::spawn(move || {
        let (mut s, port) = host_connect(&uds, 6000, T).expect("CONNECT 6000, OK <host_port>");
        host_send(&mut s, &to_guest2, 7);
        let mut got = vec![0u8; MIB];
        s.read_exact(&mut got).expect("host reads 1 MiB");
        (port, sha256(&got))
    });
    let id = vm.driver_mut().accept_blocking(6000, T).expect("accept");
    let got = vm
        .driver_mut()
        .recv_exact(id, MIB, T)
        .expect("1 MiB from host");
    guest_send(&mut vm, id, &to_host, 8);
    let (port, host_sum) = host.join().expect("host thread");
    assert_eq!(sha256(&got), sha256(&to_guest));
    assert_eq!(host_sum, sha256(&to_host));
    let info = vm.driver().stream_info(id).expect("stream info");
    assert_eq!(
        info.peer_port, port,
        "OK <host_port> names the stream's host port"
    );
}

#[test]
fn connect_to_a_port_nobody_listens_on_gets_rst() {
    let h = Harness::start(&[VmSpec::new("a", 3)]);
    let mut vm = TestVm::connect(h.socket("a"), VmOptions::default()).expect("frontend");
    h.wait_attached("a");
    let id = vm
        .driver_mut()
        .connect(HOST_CID, 7777)
        .expect("send REQUEST");
    let st = vm
        .driver_mut()
        .wait_state(id, |s| s != StreamState::Connecting, T)
        .expect("an answer");
    assert_eq!(st, StreamState::Reset);
    assert_eq!(h.counters("a").rst_sent, 1);
    // A VM without `uds` refuses the same way, and so does an unknown CID.
    let id = vm.driver_mut().connect(99, 1).expect("send REQUEST");
    let st = vm
        .driver_mut()
        .wait_state(id, |s| s != StreamState::Connecting, T)
        .expect("an answer");
    assert_eq!(st, StreamState::Reset);
}

#[test]
fn vm_without_uds_refuses_host_ports() {
    let mut spec = VmSpec::new("a", 3);
    spec.uds = false;
    let h = Harness::start(&[spec]);
    let mut vm = TestVm::connect(h.socket("a"), VmOptions::default()).expect("frontend");
    h.wait_attached("a");
    let id = vm.driver_mut().connect(HOST_CID, 5000).expect("REQUEST");
    let st = vm
        .driver_mut()
        .wait_state(id, |s| s != StreamState::Connecting, T)
        .expect("an answer");
    assert_eq!(st, StreamState::Reset);
}

#[test]
fn host_to_guest_never_exceeds_guest_credit_and_resumes_on_credit_update() {
    const CREDIT: u32 = 16 * 1024;
    let h = Harness::start(&[VmSpec::new("a", 3)]);
    let mut opts = VmOptions::default();
    opts.driver.buf_alloc = CREDIT;
    // The guest announces freed space only when the test says so.
    opts.driver.credit_update_threshold = Some(u32::MAX);
    let mut vm = TestVm::connect(h.socket("a"), opts).expect("frontend");
    h.wait_attached("a");
    vm.driver_mut().listen(6000).expect("listen");
    let uds = h.uds("a");
    let data = random_bytes(100 * 1024, 9);
    let writer_data = data.clone();
    let writer = thread::spawn(move || {
        let (mut s, _) = host_connect(&uds, 6000, T).expect("CONNECT 6000, OK <host_port>");
        s.write_all(&writer_data).expect("host writes 100 KiB");
        s
    });
    let id = vm.driver_mut().accept_blocking(6000, T).expect("accept");
    // With no CREDIT_UPDATE from the guest, the device fills the credit (however long a busy
    // machine takes to)...
    assert!(
        wait_until(T, || {
            let _ = vm.driver_mut().pump(Duration::from_millis(20));
            vm.driver().buffered(id).unwrap_or(0) >= CREDIT as usize
        }),
        "the credit was not filled within {T:?}: {} bytes",
        vm.driver().buffered(id).unwrap_or(0)
    );
    // ...and sends nothing more while the guest announces no freed space.
    let _ = vm.driver_mut().pump(Duration::from_millis(300));
    let buffered = vm.driver().buffered(id).expect("stream");
    assert_eq!(
        buffered, CREDIT as usize,
        "the device fills exactly the credit, no more"
    );
    // Read and announce the freed space: the rest arrives, never past the credit.
    let mut got = Vec::new();
    let deadline = Instant::now() + T;
    while got.len() < data.len() {
        assert!(
            Instant::now() < deadline,
            "only {} of {} bytes arrived within {T:?}",
            got.len(),
            data.len()
        );
        let mut chunk = Vec::new();
        vm.driver_mut().recv(id, &mut chunk).expect("recv");
        got.extend_from_slice(&chunk);
        if chunk.is_empty() {
            vm.driver_mut().credit_update(id).expect("credit update");
            let _ = vm.driver_mut().pump(Duration::from_millis(50));
            assert!(
                vm.driver().buffered(id).unwrap_or(0) <= CREDIT as usize,
                "credit overrun"
            );
        }
    }
    drop(writer.join().expect("writer"));
    assert_eq!(sha256(&got), sha256(&data));
}

#[test]
fn guest_to_host_credit_is_enforced_and_a_violation_resets() {
    let h = Harness::start(&[VmSpec::new("a", 3)]);
    let listener = h.host_listener("a", 5001);
    let mut vm = TestVm::connect(h.socket("a"), VmOptions::default()).expect("frontend");
    h.wait_attached("a");
    let id = vm
        .driver_mut()
        .connect_blocking(HOST_CID, 5001, T)
        .expect("connect");
    let _host = accept_within(&listener, T, "the host program");
    let info = vm.driver().stream_info(id).expect("info");
    assert_eq!(info.peer_buf_alloc, 256 * 1024, "device advertises 256 KiB");
    // Now cheat: a raw RW beyond the granted credit.
    let mut hdr = sockbypass_wire::PacketHeader::stream(Op::Rw, 3, info.local_port, HOST_CID, 5001);
    let big = vec![0u8; 64 * 1024];
    for _ in 0..8 {
        hdr.set_len(64 * 1024);
        vm.driver_mut()
            .send_raw(&hdr, &big, &Default::default())
            .expect("raw send");
    }
    assert!(
        wait_until(T, || {
            let _ = vm.driver_mut().poll();
            h.counters("a").drop_credit_violation > 0
        }),
        "credit violation counted"
    );
    let rst = vm
        .driver_mut()
        .wait_for_packet(
            |p| p.op() == Some(Op::Rst) && p.header.dst_port() == info.local_port,
            T,
        )
        .expect("RST for the violating connection");
    assert_eq!(rst.header.src_cid(), HOST_CID);
}

/// The host program does not read while the guest keeps sending: the host socket fills, then
/// the device's buffer for the connection, and then the guest's credit stops it. The device
/// never holds more than it granted (`HOST_BUF_ALLOC`, SPEC.md §11), holds exactly that once the
/// guest knows the device's latest `fwd_cnt`, and every byte arrives once the host reads.
#[test]
fn a_host_program_that_does_not_read_gets_at_most_the_granted_bytes_buffered() {
    let grant = HOST_BUF_ALLOC as usize;
    let h = Harness::start(&[VmSpec::new("a", 3)]);
    let listener = h.host_listener("a", 5002);
    let mut vm = h.vm("a");
    let id = vm
        .driver_mut()
        .connect_blocking(HOST_CID, 5002, T)
        .expect("connect");
    let mut host = accept_within(&listener, T, "the host program");
    let info = vm.driver().stream_info(id).expect("info");
    assert_eq!(info.peer_buf_alloc, HOST_BUF_ALLOC, "the grant");
    let data = random_bytes(2 * MIB, 12);
    let mut sent = 0;
    let mut peak = 0;
    // Until the guest's credit runs out; then once more, after asking the device for its
    // latest fwd_cnt (it announces freed space only every quarter of the buffer).
    for round in 0..2 {
        if round == 1 {
            let info = vm.driver().stream_info(id).expect("info");
            let before = info.counters.credit_updates_received;
            vm.driver_mut().request_credit(id).expect("CREDIT_REQUEST");
            vm.driver_mut()
                .wait_until(T, "a CREDIT_UPDATE", |d| {
                    let info = d.stream_info(id)?;
                    Ok((info.counters.credit_updates_received > before).then_some(()))
                })
                .expect("the device answers with its fwd_cnt");
        }
        let deadline = Instant::now() + T;
        loop {
            let d = vm.driver_mut();
            sent += d.send(id, &data[sent..]).expect("send");
            d.pump(Duration::from_millis(2)).expect("pump");
            let buffered = h.gauges("a").host_buffered_bytes;
            peak = peak.max(buffered);
            assert!(
                buffered <= grant,
                "the device buffers {buffered} bytes, over the {grant} it granted"
            );
            if d.stream_info(id).expect("info").credit == 0 && d.tx_in_flight() == 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: the guest's credit never ran out (sent {sent}, buffered {buffered})"
            );
        }
    }
    assert!(
        sent < data.len(),
        "credit stopped the guest before it sent everything"
    );
    assert_eq!(
        h.gauges("a").host_buffered_bytes,
        grant,
        "with the host socket full, the device holds exactly its grant (sent {sent})"
    );
    assert_eq!(peak, grant);

    // The host reads: every byte arrives in order, and the guest sends the rest as the
    // device's buffer drains and credit comes back.
    let want = data.clone();
    let reader = thread::spawn(move || {
        let mut got = vec![0u8; want.len()];
        host.read_exact(&mut got)
            .expect("the host reads everything");
        sha256(&got)
    });
    vm.driver_mut()
        .send_all(id, &data[sent..], T)
        .expect("the rest goes once the host reads");
    assert_eq!(reader.join().expect("reader"), sha256(&data), "byte-exact");
    assert!(
        wait_until(T, || h.gauges("a").host_buffered_bytes == 0),
        "the device's buffer drained: {:?}",
        h.gauges("a")
    );
    assert_eq!(h.counters("a").drop_credit_violation, 0);
}
