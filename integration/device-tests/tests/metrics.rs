//! `/metrics` of an in-process daemon (`metrics_listen`) while the test frontend makes traffic:
//! two scrapes over real HTTP, before and after, show the counters and gauges of the VM that
//! moved, and nothing moved for the VM that did not. The daemon runs under the test seccomp mode
//! (`kill` unless `SOCKBYPASS_TEST_SECCOMP` says otherwise), so the metrics thread is confined.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::Duration;

use harness::{accept_within, harness_config, test_poll_config, Harness, VmSpec};
use sockbypass_frontend::{StreamState, TestVm, VmOptions};
use sockbypass_wire::consts::HOST_CID;

const T: Duration = Duration::from_secs(20);

/// The body of `GET /metrics` at `addr`, after checking the status and content type.
fn scrape(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).expect("connect to /metrics");
    s.set_read_timeout(Some(T)).expect("read timeout");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n")
        .expect("request");
    let mut answer = String::new();
    s.read_to_string(&mut answer).expect("answer");
    let (head, body) = answer.split_once("\r\n\r\n").expect("head and body");
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        head.contains("Content-Type: application/openmetrics-text; version=1.0.0"),
        "{head}"
    );
    assert!(body.ends_with("# EOF\n"), "{body}");
    body.to_owned()
}

/// The value of the series written exactly `series` (name and labels) in `body`.
fn value(body: &str, series: &str) -> u64 {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no series {series} in:\n{body}"))
        .parse()
        .expect("an integer value")
}

/// Series `name` of VM `vm` (CID `cid`), with `extra` labels after `vm` and `cid`.
fn vm_series(name: &str, vm: &str, cid: u64, extra: &str) -> String {
    format!("{name}{{vm=\"{vm}\",cid=\"{cid}\"{extra}}}")
}

#[test]
fn counters_move_between_two_scrapes_for_the_vm_that_sent() {
    let (mut config, dir) = harness_config(
        &[VmSpec::new("a", 3), VmSpec::new("b", 4)],
        test_poll_config(),
    );
    config.metrics_listen = Some("127.0.0.1:0".parse().expect("addr"));
    let h = Harness::start_config((config, dir));
    let addr = h
        .daemon
        .as_ref()
        .and_then(|d| d.metrics_addr())
        .expect("the metrics address");
    let a = |name: &str| vm_series(name, "a", 3, "");
    let b = |name: &str| vm_series(name, "b", 4, "");

    let before = scrape(addr);
    assert_eq!(value(&before, &a("sockbypass_vm_attached")), 0);
    assert_eq!(value(&before, &a("sockbypass_vm_tx_packets_total")), 0);

    let listener = h.host_listener("a", 5000);
    let mut vm = TestVm::connect(h.socket("a"), VmOptions::default()).expect("frontend");
    h.wait_attached("a");
    let host = thread::spawn(move || {
        let mut s = accept_within(&listener, T, "the host program");
        let mut got = vec![0u8; 4096];
        s.read_exact(&mut got).expect("host reads 4 KiB");
        s
    });
    let id = vm
        .driver_mut()
        .connect_blocking(HOST_CID, 5000, T)
        .expect("connect to host port 5000");
    vm.driver_mut()
        .send_all(id, &[7u8; 4096], T)
        .expect("guest sends 4 KiB");
    let host_stream = host.join().expect("host thread");
    // A connection to a CID nobody has: refused with an RST, counted as a drop.
    let lost = vm.driver_mut().connect(99, 1).expect("REQUEST to CID 99");
    let st = vm
        .driver_mut()
        .wait_state(lost, |s| s != StreamState::Connecting, T)
        .expect("an answer");
    assert_eq!(st, StreamState::Reset);

    let after = scrape(addr);
    // What the switch counted is what the scrape shows.
    let counters = h.counters("a");
    assert!(counters.tx_packets > 0);
    assert!(
        value(&after, &a("sockbypass_vm_tx_packets_total"))
            > value(&before, &a("sockbypass_vm_tx_packets_total")),
        "tx_packets of `a` did not move:\n{after}"
    );
    assert!(value(&after, &a("sockbypass_vm_tx_bytes_total")) >= 4096);
    assert!(value(&after, &a("sockbypass_vm_rx_packets_total")) > 0);
    assert_eq!(value(&after, &a("sockbypass_vm_attached")), 1);
    assert_eq!(
        value(&after, &a("sockbypass_vm_host_conns_opened_total")),
        1
    );
    assert_eq!(value(&after, &a("sockbypass_vm_host_conns")), 1);
    assert_eq!(value(&after, &a("sockbypass_vm_rst_sent_total")), 1);
    assert_eq!(
        value(
            &after,
            &vm_series(
                "sockbypass_vm_drops_total",
                "a",
                3,
                ",reason=\"peer_unreachable\""
            )
        ),
        1
    );
    // `b` had no guest: nothing moved.
    for name in [
        "sockbypass_vm_tx_packets_total",
        "sockbypass_vm_rx_packets_total",
        "sockbypass_vm_rst_sent_total",
        "sockbypass_vm_attached",
    ] {
        assert_eq!(value(&after, &b(name)), 0, "{name} of b");
    }
    // The poll threads moved the chains (there are none in event mode).
    if after.contains("sockbypass_poll_packets_total{thread=\"0\"}") {
        assert!(
            value(&after, "sockbypass_poll_packets_total{thread=\"0\"}")
                > value(&before, "sockbypass_poll_packets_total{thread=\"0\"}")
        );
    }
    drop(host_stream);
}
