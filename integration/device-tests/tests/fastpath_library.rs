//! The guest library (`guest-driver-shim`) against the real daemon: each side's control channel
//! goes over its test VM's vsock device to CID 2 ([`GuestBridge`]), and its windows are the
//! daemon's window files, mapped by the library as a guest maps its BARs. Both placements carry
//! 8 MiB byte-exact each way, and the daemon's counters show where the bytes went.

use std::os::unix::net::UnixStream;
use std::thread;

use harness::guest_bridge::GuestBridge;
use harness::{harness_config, random_bytes, sha256, test_poll_config, Harness, VmSpec};
use sockbypass_frontend::{TestVm, VmOptions};
use sockbypass_guest::{ConnectError, FastPath, Window};
use sockbypass_wire::fastpath::control::{Placement, Reason};
use sockbypassd::config::PairConfig;

const MIB: u64 = 1 << 20;
const DATA: usize = 8 << 20;

fn bridge(h: &Harness, name: &str) -> GuestBridge {
    let vm = TestVm::connect(h.socket(name), VmOptions::default()).expect("frontend");
    h.wait_attached(name);
    GuestBridge::start(vm)
}

/// The library of VM `name`, over its own window and `pairs` (pair window files).
fn library(h: &Harness, b: &GuestBridge, name: &str, pairs: &[&str]) -> FastPath<UnixStream> {
    let mut windows = vec![Window::open_path(h.window(name)).expect("own window")];
    for p in pairs {
        windows.push(Window::open_path(h.dir.path().join(p)).expect("pair window"));
    }
    let control = b.open_control().expect("control connection");
    FastPath::new(windows, control).expect("library")
}

/// b echoes one connection on port 7000; a sends `DATA` bytes and reads them back.
fn echo_8_mib(fa: FastPath<UnixStream>, fb: FastPath<UnixStream>, placement: Placement) {
    fb.listen(7000).expect("listen");
    let server = thread::spawn(move || {
        let mut s = fb.accept().expect("accept");
        assert_eq!(s.info().placement, placement);
        let mut buf = vec![0u8; 100_000];
        loop {
            let n = s.read(&mut buf).expect("server read");
            if n == 0 {
                break;
            }
            s.write_all(&buf[..n]).expect("server write");
        }
        s.close().expect("server close");
    });
    let mut c = fa.connect_fast(4, 7000).expect("fast-path connect");
    assert_eq!(c.info().placement, placement);
    let data = random_bytes(DATA, 11);
    let mut back = Vec::with_capacity(DATA);
    let mut buf = vec![0u8; 70_000];
    let mut sent = 0;
    while back.len() < DATA {
        if sent < DATA {
            c.set_nonblocking(true);
            let end = (sent + 50_000).min(DATA);
            match c.write(&data[sent..end]) {
                Ok(n) => sent += n,
                Err(e) if e.errno() == libc::EAGAIN => {}
                Err(e) => panic!("client write: {e}"),
            }
        }
        c.set_nonblocking(sent < DATA);
        match c.read(&mut buf) {
            Ok(0) => panic!("end of stream after {} bytes", back.len()),
            Ok(n) => back.extend_from_slice(&buf[..n]),
            Err(e) if e.errno() == libc::EAGAIN => {}
            Err(e) => panic!("client read: {e}"),
        }
    }
    assert!(sha256(&back) == sha256(&data), "8 MiB echoed byte-exact");
    c.shutdown(std::net::Shutdown::Write).expect("shutdown");
    c.set_nonblocking(false);
    assert_eq!(c.read(&mut buf).expect("end of stream"), 0);
    c.close().expect("close");
    server.join().expect("server");
}

#[test]
fn host_copied_8_mib_echo_through_the_library() {
    let h = Harness::start(&[
        VmSpec::new("a", 3).fastpath(MIB),
        VmSpec::new("b", 4).fastpath(MIB),
    ]);
    let (ba, bb) = (bridge(&h, "a"), bridge(&h, "b"));
    echo_8_mib(
        library(&h, &ba, "a", &[]),
        library(&h, &bb, "b", &[]),
        Placement::HostCopied,
    );
    let (a, b) = (h.fastpath_counters("a"), h.fastpath_counters("b"));
    let d = DATA as u64;
    assert_eq!((a.fastpath_tx_bytes, b.fastpath_rx_bytes), (d, d));
    assert_eq!((b.fastpath_tx_bytes, a.fastpath_rx_bytes), (d, d));
    assert!(
        h.counters("a").fwd_bytes < 4096,
        "only control messages went as vsock packets"
    );
}

#[test]
fn direct_pair_8_mib_echo_with_no_host_copy() {
    let specs = [
        VmSpec::new("a", 3).fastpath(MIB),
        VmSpec::new("b", 4).fastpath(MIB),
    ];
    let (mut config, dir) = harness_config(&specs, test_poll_config());
    config.pairs.push(PairConfig {
        vms: ["a".into(), "b".into()],
        size: MIB,
    });
    let h = Harness::start_config((config, dir));
    let (ba, bb) = (bridge(&h, "a"), bridge(&h, "b"));
    let pair = ["a+b.window"];
    echo_8_mib(
        library(&h, &ba, "a", &pair),
        library(&h, &bb, "b", &pair),
        Placement::Direct,
    );
    let (a, b) = (h.fastpath_counters("a"), h.fastpath_counters("b"));
    assert_eq!(
        a.fastpath_tx_bytes + b.fastpath_tx_bytes,
        0,
        "the host copied nothing"
    );
    assert_eq!((a.fastpath_conns, b.fastpath_conns), (1, 1));
}

#[test]
fn the_library_falls_back_where_vsock_would_work_and_refuses_where_policy_says_no() {
    let h = Harness::start(&[
        VmSpec::new("a", 3).fastpath(MIB),
        VmSpec::new("b", 4).fastpath(MIB),
        VmSpec::new("c", 5).fastpath(MIB).groups(&["other"]),
    ]);
    let (ba, bb) = (bridge(&h, "a"), bridge(&h, "b"));
    let fa = library(&h, &ba, "a", &[]);
    let fb = library(&h, &bb, "b", &[]);
    assert!(matches!(
        fa.connect_fast(4, 7000),
        Err(ConnectError::Fallback(Reason::NoListener))
    ));
    assert!(matches!(
        fa.connect_fast(5, 7000),
        Err(ConnectError::Refused(Reason::Policy))
    ));
    fb.listen(7000).expect("listen");
    let fb2 = library(&h, &bb, "b", &[]);
    match fb2.listen(7000) {
        Err(e @ ConnectError::Refused(Reason::PortInUse)) => {
            assert_eq!(e.errno(), libc::EADDRINUSE)
        }
        other => panic!("a second listener on the port: {other:?}"),
    }
}
