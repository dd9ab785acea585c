//! A poll thread that panics stops the real `sockbypassd` with a non-zero status and a line that
//! names the thread and the panic, instead of leaving its VMs silently stalled.
//!
//! No guest input can make a poll thread panic, so the test uses a fail point: this file is
//! built only with `--features failpoints` (`ci/test.sh` runs it so), and `FAILPOINTS` arms
//! the point at the top of the poll loop.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn a_panicking_poll_thread_stops_the_daemon_loudly() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_sockbypassd"))
        .args([
            "--vm",
            &format!("name=web,cid=3,socket={}/web.sock", dir.path().display()),
            "--poll-mode",
            "poll",
        ])
        .env("FAILPOINTS", "poll-thread-loop=panic(rings on fire)")
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start sockbypassd");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("sockbypassd did not stop after its poll thread panicked");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let out = child.wait_with_output().expect("stderr");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(status.code(), Some(1), "{status}: {stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert_eq!(
        last, "sockbypassd: thread `sb-poll-0` panicked: rings on fire",
        "stderr: {stderr}"
    );
}
