//! Runs the real `sbtool` binary over TCP on 127.0.0.1: a server on a free port (port 0, read
//! back from its result line) and every client mode against it. AF_VSOCK needs a vsock
//! device, so vsock is only checked to fail cleanly (one SBRESULT error line, no panic).

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

const SBTOOL: &str = env!("CARGO_BIN_EXE_sbtool");
/// No client here should take nearly this long; past it the client is killed.
const CLIENT_LIMIT: Duration = Duration::from_secs(60);

/// A running `sbtool serve`, killed (by its PID, through `Child`) when dropped, also when a
/// test fails.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start() -> Server {
        let mut child = Command::new(SBTOOL)
            .args(["serve", "--tcp-port", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn sbtool serve");
        let stdout = child.stdout.take().expect("piped stdout");
        // Guard first, so that the child is killed even if the line never comes.
        let mut server = Server { child, port: 0 };
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            // Keep draining so the server never blocks on a full pipe.
            for _ in lines {}
        });
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("sbtool serve prints its result line");
        let v = parse_result(&line).expect("the serve line is an SBRESULT");
        assert_eq!(v["mode"], "serve", "{v}");
        assert!(v["vsock_port"].is_null(), "{v}");
        server.port = v["tcp_port"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .filter(|&p| p != 0)
            .expect("a bound TCP port");
        server
    }

    fn addr(&self) -> String {
        format!("tcp:127.0.0.1:{}", self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn parse_result(line: &str) -> Option<Value> {
    serde_json::from_str(line.strip_prefix("SBRESULT ")?).ok()
}

/// What a client run left behind.
struct Run {
    code: Option<i32>,
    result: Value,
    stdout: String,
    stderr: String,
}

impl std::fmt::Debug for Run {
    /// Everything, for assertion messages.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\nstdout: {}stderr: {}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `sbtool ARGS` to completion (killed after CLIENT_LIMIT) and parses its one result line.
fn sbtool(args: &[&str]) -> Run {
    let mut child = Command::new(SBTOOL)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sbtool");
    let drain = |r: Option<Box<dyn Read + Send>>| {
        thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut r) = r {
                let _ = r.read_to_string(&mut s);
            }
            s
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for sbtool") {
            break s;
        }
        if started.elapsed() > CLIENT_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("sbtool {args:?} did not finish within {CLIENT_LIMIT:?}");
        }
        thread::sleep(Duration::from_millis(10));
    };
    let stdout = out.join().expect("stdout reader");
    let stderr = err.join().expect("stderr reader");
    let results: Vec<Value> = stdout.lines().filter_map(parse_result).collect();
    assert_eq!(
        results.len(),
        1,
        "exactly one SBRESULT line from sbtool {args:?}:\n{stdout}\nstderr:\n{stderr}"
    );
    assert_eq!(
        stdout.lines().count(),
        1,
        "nothing but the result on stdout: {stdout}"
    );
    assert!(!stderr.contains("panicked"), "sbtool panicked: {stderr}");
    Run {
        code: status.code(),
        result: results.into_iter().next().unwrap_or_default(),
        stdout,
        stderr,
    }
}

fn assert_ok(r: &Run, mode: &str) {
    assert_eq!(r.result["mode"], mode, "{r:?}");
    assert_eq!(r.result["ok"], true, "{r:?}");
    assert_eq!(r.code, Some(0), "{r:?}");
}

/// A port on 127.0.0.1 that nothing listens on (bound, then released).
fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

#[test]
fn rtt_round_trips() {
    let s = Server::start();
    let r = sbtool(&[
        "rtt",
        &s.addr(),
        "--size",
        "64",
        "--count",
        "500",
        "--warmup",
        "20",
    ]);
    assert_ok(&r, "rtt");
    let v = &r.result;
    assert_eq!(v["addr"], s.addr());
    assert_eq!(v["size"], 64);
    assert_eq!(v["count"], 500);
    let f = |k: &str| {
        v[k].as_f64()
            .unwrap_or_else(|| panic!("{k} is a number: {v}"))
    };
    let (min, p50, p99, max, mean) = (
        f("min_us"),
        f("p50_us"),
        f("p99_us"),
        f("max_us"),
        f("mean_us"),
    );
    assert!(min > 0.0 && min <= p50 && p50 <= p99 && p99 <= max, "{v}");
    assert!(min <= mean && mean <= max, "{v}");
    assert_eq!(v["path"], "tcp", "{v}");
    assert!(
        v.get("fallback_reason").is_none(),
        "only with --fastpath: {v}"
    );
    // A large message takes many segments each way.
    let r = sbtool(&["rtt", &s.addr(), "--size", "200000", "--count", "5"]);
    assert_ok(&r, "rtt");
}

#[test]
fn bulk_is_verified_by_the_receiver() {
    let s = Server::start();
    let r = sbtool(&["bulk", &s.addr(), "--seconds", "1"]);
    assert_ok(&r, "bulk");
    let v = &r.result;
    assert_eq!(v["verified"], true, "{v}");
    assert_eq!(v["path"], "tcp", "{v}");
    assert_eq!(v["bytes"], v["receiver_bytes"], "{v}");
    assert!(v["bytes"].as_u64().is_some_and(|b| b > 0), "{v}");
    assert!(v["gbps"].as_f64().is_some_and(|g| g > 0.0), "{v}");
    let secs = v["seconds"].as_f64().unwrap_or(0.0);
    assert!((1.0..30.0).contains(&secs), "about a second: {v}");
    // An odd write size: the checksum must not depend on how the stream was cut.
    let r = sbtool(&[
        "bulk",
        &s.addr(),
        "--seconds",
        "0.2",
        "--write-size",
        "1001",
    ]);
    assert_ok(&r, "bulk");
}

#[test]
fn verify_echoes_byte_for_byte() {
    let s = Server::start();
    let r = sbtool(&["verify", &s.addr(), "--bytes", "1048576"]);
    assert_ok(&r, "verify");
    assert_eq!(r.result["bytes"], 1_048_576);
    assert_eq!(r.result["received"], 1_048_576);
    assert!(r.result["mismatch_at"].is_null(), "{:?}", r);
    assert_eq!(r.result["path"], "tcp", "{r:?}");
    let r = sbtool(&["verify", &s.addr(), "--bytes", "100003", "--seed", "42"]);
    assert_ok(&r, "verify");
    let r = sbtool(&["verify", &s.addr(), "--bytes", "0"]);
    assert_ok(&r, "verify");
}

#[test]
fn many_connections_at_once() {
    let s = Server::start();
    let r = sbtool(&["many", &s.addr(), "--conns", "16"]);
    assert_ok(&r, "many");
    assert_eq!(r.result["conns"], 16);
    assert_eq!(r.result["connected"], 16);
    assert_eq!(r.result["failed"], serde_json::json!([]));
    assert_eq!(r.result["path"], "tcp", "{r:?}");
    assert_eq!(r.result["paths"], serde_json::json!({"tcp": 16}), "{r:?}");
}

#[test]
fn fastpath_with_a_tcp_address_or_an_unsupported_mode_is_a_usage_error() {
    for args in [
        &["rtt", "tcp:127.0.0.1:1", "--fastpath"][..],
        &["bulk", "tcp:127.0.0.1:1", "--fastpath"][..],
        &["verify", "tcp:127.0.0.1:1", "--fastpath"][..],
        &["many", "tcp:127.0.0.1:1", "--fastpath"][..],
        &["serve", "--tcp-port", "0", "--fastpath"][..],
        &["stream", "vsock:3:1", "--fastpath"][..],
        &["soak", "vsock:3:1", "--fastpath"][..],
    ] {
        let r = sbtool(args);
        assert_eq!(r.code, Some(2), "{r:?}");
        assert_eq!(r.result["ok"], false, "{r:?}");
        assert!(r.result["errno"].is_null(), "{r:?}");
        assert!(
            r.result["error"]
                .as_str()
                .is_some_and(|e| e.contains("fastpath")),
            "{r:?}"
        );
        assert_eq!(r.stderr.lines().count(), 1, "a one-line message: {r:?}");
    }
}

#[test]
fn fastpath_without_a_window_fails_cleanly() {
    // No ivshmem window here (and maybe no vsock): one result line, exit status 1, an errno.
    for args in [
        &[
            "rtt",
            "vsock:3:1",
            "--fastpath",
            "--connect-timeout-ms",
            "2000",
        ][..],
        &["many", "vsock:3:1", "--fastpath", "--conns", "2"][..],
        &["serve", "--vsock-port", "45999", "--fastpath"][..],
    ] {
        let r = sbtool(args);
        assert_eq!(r.code, Some(1), "{r:?}");
        assert_eq!(r.result["ok"], false, "{r:?}");
        assert!(r.result["errno"].is_i64(), "an errno: {r:?}");
        assert!(r.result["error"].is_string(), "{r:?}");
    }
}

#[test]
fn connect_succeeds_and_a_closed_port_is_refused_fast() {
    let s = Server::start();
    let r = sbtool(&["connect", &s.addr()]);
    assert_ok(&r, "connect");
    assert!(
        r.result["errno"].is_null() && r.result["error"].is_null(),
        "{r:?}"
    );
    // The server shrugs off a connection closed before its service byte: still serving.
    let r = sbtool(&["rtt", &s.addr(), "--count", "10", "--warmup", "0"]);
    assert_ok(&r, "rtt");

    let addr = format!("tcp:127.0.0.1:{}", closed_port());
    let r = sbtool(&["connect", &addr, "--timeout-ms", "5000"]);
    assert_eq!(r.code, Some(1), "{r:?}");
    assert_eq!(r.result["ok"], false, "{r:?}");
    assert_eq!(r.result["errno"], 111, "ECONNREFUSED: {r:?}");
    let ms = r.result["elapsed_ms"].as_f64().unwrap_or(f64::MAX);
    assert!(ms < 1000.0, "refused at once: {r:?}");

    // Data modes report the same failure as an error line.
    for mode in ["rtt", "bulk", "verify", "many"] {
        let r = sbtool(&[mode, &addr]);
        assert_eq!(r.code, Some(1), "{r:?}");
        assert_eq!(r.result["mode"], mode, "{r:?}");
        assert_eq!(r.result["ok"], false, "{r:?}");
        assert_eq!(r.result["errno"], 111, "{r:?}");
    }
}

#[test]
fn vsock_and_bad_addresses_fail_cleanly() {
    // Without a vsock device the kernel says ENODEV, EAFNOSUPPORT, ETIMEDOUT, ...: any errno
    // will do, as long as it is one result line and exit status 1.
    for args in [
        &["connect", "vsock:3:1", "--timeout-ms", "2000"][..],
        &["rtt", "vsock:3:1", "--connect-timeout-ms", "2000"][..],
    ] {
        let r = sbtool(args);
        assert_eq!(r.code, Some(1), "{r:?}");
        assert_eq!(r.result["ok"], false, "{r:?}");
        assert!(r.result["errno"].is_i64(), "an errno: {r:?}");
        assert!(r.result["error"].is_string(), "{r:?}");
    }
    for bad in [
        "vsock:3",
        "tcp:host:1",
        "udp:1.2.3.4:5",
        "tcp:1.2.3.4:70000",
    ] {
        let r = sbtool(&["verify", bad]);
        assert_eq!(r.code, Some(1), "{r:?}");
        assert_eq!(r.result["ok"], false, "{r:?}");
        assert!(r.result["errno"].is_null(), "{r:?}");
        assert!(
            r.result["error"]
                .as_str()
                .is_some_and(|e| e.contains("invalid address")),
            "{r:?}"
        );
    }
}

/// A one-connection TCP peer on a free port, run by `serve` on a thread.
fn fake_peer(serve: impl FnOnce(std::net::TcpStream) + Send + 'static) -> String {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    let addr = format!("tcp:{}", l.local_addr().expect("local addr"));
    thread::spawn(move || {
        if let Ok((c, _)) = l.accept() {
            serve(c);
        }
    });
    addr
}

#[test]
fn a_corrupted_echo_is_caught_at_the_right_offset() {
    use std::io::Write;
    // A plain echo (it echoes the service byte too, like `socat EXEC:cat`) that flips one
    // bit of stream byte 1 + 5000, i.e. data offset 5000.
    let addr = fake_peer(|mut c| {
        let (mut buf, mut at) = (vec![0u8; 65536], 0usize);
        while let Ok(n) = c.read(&mut buf) {
            if n == 0 {
                break;
            }
            if (at..at + n).contains(&5001) {
                buf[5001 - at] ^= 0x10;
            }
            at += n;
            if c.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    });
    let r = sbtool(&["verify", &addr, "--bytes", "100000"]);
    assert_eq!(r.code, Some(1), "{r:?}");
    assert_eq!(r.result["ok"], false, "{r:?}");
    assert_eq!(r.result["mismatch_at"], 5000, "{r:?}");
}

#[test]
fn a_sink_that_miscounts_fails_bulk() {
    use std::io::Write;
    let addr = fake_peer(|mut c| {
        let mut buf = vec![0u8; 65536];
        let mut total = 0u64;
        while let Ok(n) = c.read(&mut buf) {
            if n == 0 {
                break;
            }
            total += n as u64;
        }
        // One byte short (the service byte is not data), checksum zero.
        let mut reply = [0u8; 16];
        reply[..8].copy_from_slice(&(total - 2).to_le_bytes());
        let _ = c.write_all(&reply);
    });
    let r = sbtool(&["bulk", &addr, "--seconds", "0.2"]);
    assert_eq!(r.code, Some(1), "{r:?}");
    assert_eq!(r.result["verified"], false, "{r:?}");
    assert_eq!(r.result["ok"], false, "{r:?}");
}

#[test]
fn a_server_killed_mid_stream_is_a_clean_error() {
    let s = Server::start();
    let addr = s.addr();
    let client = thread::spawn(move || sbtool(&["bulk", &addr, "--seconds", "30"]));
    thread::sleep(Duration::from_millis(500));
    let killed = Instant::now();
    drop(s);
    let r = client.join().expect("client thread");
    assert!(
        killed.elapsed() < Duration::from_secs(10),
        "the client noticed at once: {r:?}"
    );
    assert_eq!(r.code, Some(1), "{r:?}");
    assert_eq!(r.result["mode"], "bulk", "{r:?}");
    assert_eq!(r.result["ok"], false, "{r:?}");
    let errno = r.result["errno"].as_i64();
    assert!(
        matches!(errno, Some(104 | 32)),
        "ECONNRESET or EPIPE: {r:?}"
    );
}

#[test]
fn a_stream_runs_verified_until_its_time_is_up() {
    let s = Server::start();
    let r = sbtool(&[
        "stream",
        &s.addr(),
        "--seconds",
        "0.5",
        "--flowing-after",
        "1",
    ]);
    assert_ok(&r, "stream");
    assert_eq!(r.result["ended"], "done", "{r:?}");
    let sent = r.result["sent"].as_u64().unwrap_or(0);
    assert!(sent > 0, "{r:?}");
    assert_eq!(r.result["verified"].as_u64(), Some(sent), "{r:?}");
    assert!(r.stderr.contains("SB-STREAM-FLOWING"), "{r:?}");
}

#[test]
fn a_stream_whose_server_dies_ends_with_a_reset() {
    let s = Server::start();
    let mut child = Command::new(SBTOOL)
        .args(["stream", &s.addr(), "--flowing-after", "65536"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sbtool stream");
    // Kill the server once the client says its stream flows.
    let stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("SB-STREAM-FLOWING") {
                let _ = tx.send(());
            }
        }
    });
    let flowing = rx.recv_timeout(CLIENT_LIMIT);
    drop(s);
    let killed = Instant::now();
    let deadline = killed + CLIENT_LIMIT;
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait for sbtool") {
            break Some(st);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(5));
    };
    assert!(flowing.is_ok(), "the stream flowed");
    let status = status.expect("the stream ended after its server died");
    let mut out = String::new();
    child
        .stdout
        .take()
        .expect("piped stdout")
        .read_to_string(&mut out)
        .expect("read stdout");
    let r = out.lines().find_map(parse_result).expect("a result line");
    assert_eq!(r["ended"], "reset", "{r}");
    assert_eq!(r["ok"], true, "a reset is the expected end here: {r}");
    assert_eq!(status.code(), Some(0), "{r}");
    assert!(r["verified"].as_u64().unwrap_or(0) >= 65536, "{r}");
    assert!(r["mismatch_at"].is_null(), "{r}");
    assert!(
        killed.elapsed() < Duration::from_secs(5),
        "noticed at once: {r}"
    );
}

#[test]
fn a_corrupted_stream_is_a_mismatch() {
    use std::io::Write;
    // An echo that flips one bit of data offset 70000 (stream byte 70001).
    let addr = fake_peer(|mut c| {
        let (mut buf, mut at) = (vec![0u8; 65536], 0usize);
        while let Ok(n) = c.read(&mut buf) {
            if n == 0 {
                break;
            }
            if (at..at + n).contains(&70_001) {
                buf[70_001 - at] ^= 0x01;
            }
            at += n;
            if c.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    });
    let r = sbtool(&["stream", &addr, "--seconds", "2"]);
    assert_eq!(r.code, Some(1), "{r:?}");
    assert_eq!(r.result["ended"], "mismatch", "{r:?}");
    assert_eq!(r.result["mismatch_at"], 70_000, "{r:?}");
}

#[test]
fn soak_keeps_connections_busy_and_verifies_every_byte() {
    let s = Server::start();
    let r = sbtool(&[
        "soak",
        &s.addr(),
        &s.addr(),
        "--conns",
        "24",
        "--seconds",
        "2",
        "--bulk-every",
        "3",
        "--bulk-max",
        "200000",
    ]);
    assert_ok(&r, "soak");
    let n = |k: &str| r.result[k].as_u64().unwrap_or(0);
    assert!(n("opened") >= 24, "{r:?}");
    assert_eq!(n("completed"), n("opened"), "{r:?}");
    assert_eq!(n("failed"), 0, "{r:?}");
    assert!(
        n("max_open") >= 24,
        "all slots held a connection at once: {r:?}"
    );
    assert!(n("messages") > 0 && n("bulk_sessions") > 0, "{r:?}");
    assert!(n("bytes_verified") > 0, "{r:?}");
}

#[test]
fn soak_catches_a_corrupted_echo() {
    use std::io::Write;
    // Echoes, with every 1000th byte flipped.
    let addr = fake_peer(|mut c| {
        let (mut buf, mut at) = (vec![0u8; 65536], 0usize);
        while let Ok(n) = c.read(&mut buf) {
            if n == 0 {
                break;
            }
            for (i, b) in buf[..n].iter_mut().enumerate() {
                if (at + i) % 1000 == 999 {
                    *b ^= 0x80;
                }
            }
            at += n;
            if c.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    });
    let r = sbtool(&[
        "soak",
        &addr,
        "--conns",
        "1",
        "--seconds",
        "1",
        "--bulk-every",
        "0",
    ]);
    assert_eq!(r.code, Some(1), "{r:?}");
    assert_eq!(r.result["ok"], false, "{r:?}");
    assert!(r.result["failed"].as_u64().unwrap_or(0) >= 1, "{r:?}");
    assert!(
        r.result["errors"][0]
            .as_str()
            .is_some_and(|e| e.contains("echo differs")),
        "{r:?}"
    );
}
