//! The real `sockbypassd` binary reports its counters on SIGUSR1 (and carries on) and once more
//! when SIGTERM stops it: a counters line and a gauges line per VM, a line per poll thread.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Kills the daemon by PID if the test ends early.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn signal(child: &Child, sig: libc::c_int) {
    let pid = libc::pid_t::try_from(child.id()).expect("pid fits");
    // SAFETY: sending a signal to our own child process, whose PID we hold.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "kill({pid}, {sig})");
}

/// Waits until a line containing every one of `needles` arrives; returns it.
fn wait_line(lines: &mpsc::Receiver<String>, needles: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(l) if needles.iter().all(|n| l.contains(n)) => return l,
            Ok(_) => {}
            Err(e) => panic!("no line with {needles:?}: {e}"),
        }
    }
}

#[test]
fn sigusr1_reports_counters_and_sigterm_stops_with_a_final_report() {
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("web.sock");
    let child = Command::new(env!("CARGO_BIN_EXE_sockbypassd"))
        .args([
            "--vm",
            &format!("name=web,cid=3,socket={}", socket.display()),
            "--poll-mode",
            "poll",
            "--log-level",
            "info",
        ])
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start sockbypassd");
    let mut daemon = Daemon(child);
    let stderr = daemon.0.stderr.take().expect("stderr");
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "the socket never appeared");
        std::thread::sleep(Duration::from_millis(20));
    }

    signal(&daemon.0, libc::SIGUSR1);
    let vm = wait_line(&lines, &["VM counters", "web", "kicks_received"]);
    assert!(vm.contains("fwd_packets: 0"), "{vm}");
    let gauges = wait_line(&lines, &["VM gauges", "web", "peer_conns"]);
    assert!(gauges.contains("peer_conns: 0"), "{gauges}");
    assert!(gauges.contains("host_conns: 0"), "{gauges}");
    let poll = wait_line(&lines, &["poll thread counters", "useful_loops", "batch_1"]);
    assert!(
        poll.contains("thread=0") || poll.contains("thread: 0"),
        "{poll}"
    );
    // Still running after the report.
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        daemon.0.try_wait().expect("try_wait").is_none(),
        "SIGUSR1 stopped the daemon"
    );

    signal(&daemon.0, libc::SIGTERM);
    wait_line(&lines, &["VM counters", "web"]);
    wait_line(&lines, &["stopping"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = daemon.0.try_wait().expect("try_wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the daemon still runs 20 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit status {status}");
    assert!(!socket.exists(), "the socket is removed on a clean stop");
}
