//! The real `sockbypassd` binary confines itself with its seccomp filter: every thread of the
//! process runs under it (the control thread, `sb-control`, under its own variant), a system call outside the allowlist kills the daemon with SIGSYS in the
//! default mode, and `--seccomp log` and `--seccomp off` let the daemon live.
//!
//! The forbidden call is made by the binary itself when `SOCKBYPASSD_TEST_FORBIDDEN_SYSCALL=1`
//! (`sockbypassd::seccomp::TEST_FORBIDDEN_CALL_ENV`): once its main thread is confined it opens
//! an `AF_INET` socket, which the filter forbids.

use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sockbypassd::seccomp::TEST_FORBIDDEN_CALL_ENV;

const DEADLINE: Duration = Duration::from_secs(20);

/// The daemon as a child process, killed by PID if the test ends early, with its stderr lines.
struct Daemon {
    child: Child,
    lines: mpsc::Receiver<String>,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Daemon {
    /// Starts the binary with one VM, `extra` arguments, and the forbidden call if `forbidden`.
    fn start(extra: &[&str], forbidden: bool) -> Daemon {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("web.sock");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sockbypassd"));
        cmd.args([
            "--vm",
            &format!("name=web,cid=3,socket={}", socket.display()),
        ])
        .args(["--log-level", "info"])
        .args(extra)
        .env_remove("RUST_LOG")
        .env_remove(TEST_FORBIDDEN_CALL_ENV)
        // A core dump of the killed daemon, if the system writes one here, goes with the
        // temporary directory.
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        if forbidden {
            cmd.env(TEST_FORBIDDEN_CALL_ENV, "1");
        }
        let mut child = cmd.spawn().expect("start sockbypassd");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("daemon: {line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Daemon {
            child,
            lines,
            socket,
            _dir: dir,
        }
    }

    /// Waits until a stderr line contains `needle`; panics at the deadline or if stderr ends.
    fn wait_line(&self, needle: &str) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.contains(needle) => return l,
                Ok(_) => {}
                Err(e) => panic!("no line with {needle:?}: {e}"),
            }
        }
    }

    /// Waits for the process to end; panics at the deadline.
    fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "the daemon is still running");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops it with SIGTERM and checks that it exits cleanly.
    fn stop(mut self) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits");
        // SAFETY: sending SIGTERM to our own child, whose PID we hold and have not reaped.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let status = self.wait_exit();
        assert!(status.success(), "exit status after SIGTERM: {status}");
        assert!(!self.socket.exists(), "socket left after a clean stop");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `Seccomp:` of every thread of process `pid` (0 none, 2 filter), with the thread's name.
fn thread_seccomp(pid: u32) -> Vec<(String, u32)> {
    let tasks = PathBuf::from(format!("/proc/{pid}/task"));
    let Ok(entries) = std::fs::read_dir(&tasks) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| field_of(&e.path().join("status")))
        .collect()
}

/// `(Name, Seccomp)` of one `/proc/.../status` file.
fn field_of(status: &Path) -> Option<(String, u32)> {
    let text = std::fs::read_to_string(status).ok()?;
    let value = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| v.trim().to_owned())
    };
    Some((value("Name:")?, value("Seccomp:")?.parse().ok()?))
}

/// The control thread, confined by its own variant of the filter (see `sockbypassd::runtime`).
const CONTROL: &str = "sb-control";

/// Waits until every thread of `pid` shows seccomp mode `mode`; returns their names.
fn wait_all_threads(pid: u32, mode: u32) -> Vec<String> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let threads = thread_seccomp(pid);
        if !threads.is_empty() && threads.iter().all(|(_, m)| *m == mode) {
            return threads.into_iter().map(|(n, _)| n).collect();
        }
        assert!(
            Instant::now() < deadline,
            "threads of {pid} not all in seccomp mode {mode}: {threads:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn by_default_every_thread_is_confined_and_a_forbidden_call_kills_with_sigsys() {
    // Without the forbidden call: every thread, the main one included, runs under the filter,
    // and the daemon stops cleanly under it.
    let daemon = Daemon::start(&[], false);
    daemon.wait_line("serving");
    let names = wait_all_threads(daemon.child.id(), 2);
    for expected in ["sockbypassd", "sb-poll-0", "vm-web", "host-io", CONTROL] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} in {names:?}"
        );
    }
    daemon.stop();

    // With it: killed by the kernel, before it can log that the call went through.
    let mut daemon = Daemon::start(&[], true);
    let status = daemon.wait_exit();
    assert_eq!(
        status.signal(),
        Some(libc::SIGSYS),
        "exit status {status}, expected death by SIGSYS"
    );
    let lines: Vec<String> = daemon.lines.try_iter().collect();
    assert!(
        lines.iter().any(|l| l.contains("seccomp filter ready")),
        "{lines:?}"
    );
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("made the forbidden test call")),
        "{lines:?}"
    );
}

#[test]
fn explicit_kill_mode_kills_with_sigsys() {
    let mut daemon = Daemon::start(&["--seccomp", "kill"], true);
    let status = daemon.wait_exit();
    assert_eq!(status.signal(), Some(libc::SIGSYS), "exit status {status}");
}

#[test]
fn log_and_off_let_the_forbidden_call_through() {
    // `log` installs the filter (every thread shows it) but only logs; `off` installs none.
    for (mode, seccomp) in [("log", 2), ("off", 0)] {
        let daemon = Daemon::start(&["--seccomp", mode], true);
        let line = daemon.wait_line("made the forbidden test call");
        assert!(line.contains("ok=true"), "--seccomp {mode}: {line}");
        wait_all_threads(daemon.child.id(), seccomp);
        // Alive after the call, and stops cleanly.
        daemon.stop();
    }
}
