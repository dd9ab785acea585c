//! Under systemd (`Type=notify`, `deploy/systemd/sockbypassd.service`), the real `sockbypassd`
//! tells `$NOTIFY_SOCKET` `READY=1` once its sockets are bound, and `RELOADING=1` (with
//! `MONOTONIC_USEC`) then `READY=1` around a reload (`SIGHUP`). The test plays systemd's end: a
//! Unix datagram socket.

// Only `Daemon` is used here: the daemon needs `NOTIFY_SOCKET` in its environment.
#[allow(dead_code)]
mod support;

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::Daemon;

/// The next datagram, as text; panics after 20 s.
fn next(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).expect("a notification within 20 s");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn ready_once_the_sockets_are_bound_and_reloading_then_ready_on_sighup() {
    let dir = tempfile::tempdir().expect("temp dir");
    let notify = dir.path().join("notify.sock");
    let systemd = UnixDatagram::bind(&notify).expect("bind the notify socket");
    systemd
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let socket = dir.path().join("web.sock");
    let child = Command::new(env!("CARGO_BIN_EXE_sockbypassd"))
        .args([
            "--vm",
            &format!("name=web,cid=3,socket={}", socket.display()),
        ])
        .env("NOTIFY_SOCKET", &notify)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start sockbypassd");
    let daemon = Daemon(child);
    let ready = next(&systemd);
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    assert!(
        socket.exists(),
        "READY=1 came before the VM's socket was bound"
    );

    let pid = libc::pid_t::try_from(daemon.0.id()).expect("pid fits");
    // SAFETY: sending SIGHUP to our own child process, whose PID we hold.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    let reloading = next(&systemd);
    assert!(
        reloading.lines().any(|l| l == "RELOADING=1"),
        "{reloading:?}"
    );
    assert!(
        reloading.lines().any(|l| l
            .strip_prefix("MONOTONIC_USEC=")
            .is_some_and(|v| v.parse::<u64>().is_ok())),
        "{reloading:?}"
    );
    let ready = next(&systemd);
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
}
