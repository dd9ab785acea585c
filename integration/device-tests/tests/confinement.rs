//! The in-process daemon of every device test runs confined: each thread it starts (poll,
//! server, host I/O) and each thread those start (vhost-user handler and vring workers) is under
//! the seccomp filter, while the test's own threads are not. So the whole suite exercises the
//! daemon with the filter on, and a system call outside the allowlist kills the test process.

use std::time::Duration;

use harness::{wait_until, Harness, VmSpec};
use sockbypassd::config::PollMode;

/// Name prefixes of the daemon's threads (`vhu-` and `vring_worker` are vhost-user-backend's).
const DAEMON_THREADS: [&str; 6] = [
    "vm-",
    "sb-poll-",
    "host-io",
    "vhu-",
    "vring_worker",
    "sb-control",
];

/// `(name, Seccomp)` of every thread of this process; `Seccomp:` is 0 without a filter, 2 with.
fn threads() -> Vec<(String, u32)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .flatten()
    {
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
            continue; // the thread ended meanwhile
        };
        let field = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .map(|v| v.trim().to_owned())
        };
        if let (Some(name), Some(mode)) = (field("Name:"), field("Seccomp:")) {
            out.push((name, mode.parse().expect("Seccomp: is a number")));
        }
    }
    out
}

fn is_daemon_thread(name: &str) -> bool {
    DAEMON_THREADS.iter().any(|p| name.starts_with(p))
}

#[test]
fn every_daemon_thread_is_confined_and_the_tests_threads_are_not() {
    let h = Harness::start(&[VmSpec::new("a", 3), VmSpec::new("b", 4)]);
    let _a = h.vm("a");
    let _b = h.vm("b");
    // Both frontends are attached, so each VM has its vhost-user handler and vring worker; poll
    // threads exist except in event mode.
    let event_mode = harness::test_poll_config().mode == PollMode::Event;
    let kinds_present = |t: &[(String, u32)]| {
        DAEMON_THREADS
            .iter()
            .filter(|p| !(event_mode && **p == "sb-poll-"))
            .all(|p| t.iter().any(|(n, _)| n.starts_with(p)))
    };
    assert!(
        wait_until(Duration::from_secs(10), || kinds_present(&threads())),
        "daemon threads missing: {:?}",
        threads()
    );
    let all = threads();
    let (daemon, ours): (Vec<_>, Vec<_>) = all.iter().partition(|(n, _)| is_daemon_thread(n));
    assert!(
        daemon.iter().all(|(_, mode)| *mode == 2),
        "daemon threads without the filter: {daemon:?}"
    );
    assert!(
        ours.iter().all(|(_, mode)| *mode == 0),
        "test threads under a filter: {ours:?}"
    );
    let me = std::fs::read_to_string("/proc/thread-self/status").expect("own status");
    assert!(me.lines().any(|l| l == "Seccomp:\t0"), "{me}");
}
