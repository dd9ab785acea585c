//! Frontends that disconnect, reconnect and reset (SPEC.md §8.3): the daemon keeps serving, and
//! other VMs are not disturbed.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::thread;
use std::time::{Duration, Instant};

use harness::{
    accept_within, host_connect, ping_host, random_bytes, sha256, wait_until, Harness, VmSpec,
};
use sockbypass_frontend::{TestVm, VmOptions};
use sockbypass_wire::consts::HOST_CID;
use sockbypassd::host::endpoint::CONNECT_TIMEOUT;

const T: Duration = Duration::from_secs(20);

#[test]
fn second_vm_is_unaffected_while_the_first_reconnects() {
    let h = Harness::start(&[VmSpec::new("a", 3), VmSpec::new("b", 4)]);
    // VM b streams 4 MiB to a host program, in steps, while VM a comes and goes.
    let listener = h.host_listener("b", 5000);
    let data = random_bytes(4 * 1024 * 1024, 11);
    let expected = sha256(&data);
    let host = thread::spawn(move || {
        let mut s = accept_within(&listener, T, "b's host program");
        let mut got = Vec::new();
        s.read_to_end(&mut got).expect("read to end");
        got
    });
    let mut b = TestVm::connect(h.socket("b"), VmOptions::default()).expect("vm b");
    h.wait_attached("b");
    let id = b
        .driver_mut()
        .connect_blocking(HOST_CID, 5000, T)
        .expect("b connects");

    let mut a = TestVm::connect(h.socket("a"), VmOptions::default()).expect("vm a");
    h.wait_attached("a");
    let a_listener = h.host_listener("a", 6000);
    for (round, chunk) in data.chunks(512 * 1024).enumerate() {
        b.driver_mut()
            .send_all(id, chunk, T)
            .expect("b keeps sending");
        if round % 2 == 0 {
            a.disconnect();
            assert!(wait_until(T, || !h.is_attached("a")), "a detached");
            a.reconnect().expect("a reconnects on the same socket");
        } else {
            a.guest_reset().expect("a resets its device");
        }
        // a works after each reattach.
        ping_host(&mut a, &a_listener, 6000, T, "a after reattaching");
    }
    b.driver_mut().close_blocking(id, T).expect("b closes");
    let got = host.join().expect("host");
    assert_eq!(got.len(), data.len());
    assert_eq!(sha256(&got), expected, "b's stream stayed byte-exact");
    assert_eq!(h.counters("b").malformed_total(), 0);
}

#[test]
fn host_streams_end_when_the_guest_goes_away() {
    let h = Harness::start(&[VmSpec::new("a", 3)]);
    let mut a = TestVm::connect(h.socket("a"), VmOptions::default()).expect("vm");
    h.wait_attached("a");
    a.driver_mut().listen(7000).expect("listen");
    let uds = h.uds("a");
    let host = thread::spawn(move || {
        let (mut s, _) = host_connect(&uds, 7000, T).expect("CONNECT 7000, OK <host_port>");
        let mut rest = Vec::new();
        // After the OK line, the end of the stream when the VM disappears. A stream that does
        // not end fails here after `T`, with what it got so far.
        match s.read_to_end(&mut rest) {
            Ok(_) => rest,
            Err(e) => panic!("the host stream did not end: {e} after {rest:?}"),
        }
    });
    let _id = a.driver_mut().accept_blocking(7000, T).expect("accept");
    // The device has taken the RESPONSE (and written OK) once its TX chain came back; a VM
    // that vanished before that would, rightly, leave the host with no OK at all.
    a.driver_mut().flush_tx(T).expect("the RESPONSE was taken");
    a.disconnect();
    let rest = host.join().expect("host");
    assert!(
        rest.is_empty(),
        "host got the OK line and nothing else before the end: {:?}",
        String::from_utf8_lossy(&rest)
    );
    // While no guest is attached, a CONNECT is closed at once instead of hanging: well before
    // the time a guest would get to answer it.
    assert!(wait_until(T, || !h.is_attached("a")));
    let mut s = UnixStream::connect(h.uds("a")).expect("uds");
    s.set_read_timeout(Some(T)).expect("timeout");
    let started = Instant::now();
    // The daemon may close before the line is written (then writing fails with EPIPE) or
    // before reading it (then reading fails with ECONNRESET); either way the stream ends.
    let _ = s.write_all(b"CONNECT 7000\n");
    let mut rest = Vec::new();
    match s.read_to_end(&mut rest) {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        Err(e) => panic!("a CONNECT without a guest was not closed: {e}"),
    }
    let took = started.elapsed();
    assert!(rest.is_empty(), "no OK without a guest: {rest:?}");
    assert!(
        took < CONNECT_TIMEOUT,
        "closed at once, not after {took:?} (a guest gets {CONNECT_TIMEOUT:?} to answer)"
    );
}
