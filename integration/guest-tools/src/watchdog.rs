//! Timeouts for fast-path streams, which have no SO_RCVTIMEO / SO_SNDTIMEO.
//!
//! A blocking fast-path read or write is *armed* with `--io-timeout-ms` for its duration;
//! opening the library and connecting through it with `--connect-timeout-ms`. Arming stores
//! the current tick of the one watchdog thread per process (started by the first armed call),
//! which counts a tick every [`TICK`]; if a call is still armed past its limit, the command
//! has stalled: the watchdog prints the command's failure line (`SBRESULT {"ok":false,...}`,
//! errno EAGAIN for I/O as a socket's timeout gives, ETIMEDOUT for open and connect) and
//! exits with status 1. Timeouts fire up to about two ticks late, never early.
//!
//! Every call re-arms, so the timeout bounds a stall (no progress), not the whole command,
//! as SO_RCVTIMEO does. The clients use one connection at a time per thread, and fast-path
//! streams only from one thread, so one deadline per process suffices. A stall therefore
//! ends the whole command, also for `many` (where a socket's timeout fails one connection).

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Once, OnceLock};
use std::thread;
use std::time::Duration;

use crate::error::Error;
use crate::report;

/// How often the watchdog looks; also the resolution of the timeouts.
const TICK: Duration = Duration::from_millis(20);

/// Watchdog ticks so far (it counts them, so arming reads no clock: in TCG guests a clock
/// read may be a slow emulated one, and `rtt` arms twice per round trip).
static TICKS: AtomicU64 = AtomicU64::new(1);
/// The tick at which the current call was armed; 0: nothing armed.
static ARMED_AT: AtomicU64 = AtomicU64::new(0);
/// Ticks the current call may take.
static LIMIT: AtomicU64 = AtomicU64::new(u64::MAX);
/// What is armed, an index into [`OPS`].
static OP: AtomicU8 = AtomicU8::new(0);
/// The command's mode and address, for the failure line.
static WHO: OnceLock<(String, Option<String>)> = OnceLock::new();
static START: Once = Once::new();

/// What can be armed: the operation and the errno reported when it expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    /// A read (EAGAIN, as SO_RCVTIMEO gives).
    Read = 0,
    /// A write (EAGAIN, as SO_SNDTIMEO gives).
    Write = 1,
    /// The library's connect (ETIMEDOUT).
    Connect = 2,
    /// Opening the library: control connection and handshake (ETIMEDOUT).
    Open = 3,
}

const OPS: [(&str, i32); 4] = [
    ("read", libc::EAGAIN),
    ("write", libc::EAGAIN),
    ("connect", libc::ETIMEDOUT),
    ("open", libc::ETIMEDOUT),
];

/// Names the command for the failure line (call once, before anything is armed).
pub fn identify(mode: &str, addr: Option<&str>) {
    let _ = WHO.set((mode.to_owned(), addr.map(str::to_owned)));
}

/// An armed call; disarms when dropped.
#[derive(Debug)]
pub struct Armed(());

impl Drop for Armed {
    fn drop(&mut self) {
        ARMED_AT.store(0, Ordering::Release);
    }
}

/// Arms `op` for `timeout` (`None`: no timeout, nothing armed).
pub fn arm(op: Op, timeout: Option<Duration>) -> Option<Armed> {
    let t = timeout?;
    START.call_once(|| {
        // Without the thread there is no timeout; the call itself still works.
        if let Err(e) = thread::Builder::new().name("watchdog".into()).spawn(watch) {
            eprintln!("sbtool: cannot start the fast-path timeout watchdog: {e}");
        }
    });
    // Rounded up, plus one for the tick already under way: never early.
    let ticks = t.as_nanos().div_ceil(TICK.as_nanos()) + 1;
    LIMIT.store(u64::try_from(ticks).unwrap_or(u64::MAX), Ordering::Relaxed);
    OP.store(op as u8, Ordering::Relaxed);
    ARMED_AT.store(TICKS.load(Ordering::Relaxed), Ordering::Release);
    Some(Armed(()))
}

/// The error reported for an expired `op`.
pub fn expired(op: Op) -> Error {
    let (name, errno) = OPS[op as usize];
    Error::Io {
        op: format!("{name} (fast path)"),
        source: std::io::Error::from_raw_os_error(errno),
    }
}

fn watch() {
    loop {
        // A late wake-up only makes the timeout later, never earlier.
        thread::sleep(TICK);
        let now = TICKS.fetch_add(1, Ordering::Relaxed) + 1;
        let at = ARMED_AT.load(Ordering::Acquire);
        if at == 0 || now.saturating_sub(at) <= LIMIT.load(Ordering::Relaxed) {
            continue;
        }
        let op = match OP.load(Ordering::Relaxed) {
            0 => Op::Read,
            1 => Op::Write,
            2 => Op::Connect,
            _ => Op::Open,
        };
        let (mode, addr) = WHO.get().cloned().unwrap_or_default();
        report::emit(&report::failure(&mode, addr.as_deref(), &expired(op)));
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unarmed_without_timeout_and_messages_like_a_socket_timeout() {
        assert!(arm(Op::Read, None).is_none());
        let e = expired(Op::Read);
        assert_eq!(e.errno(), Some(libc::EAGAIN));
        assert!(e.to_string().contains("no progress within the I/O timeout"));
        assert!(e.to_string().starts_with("read (fast path)"));
        assert_eq!(expired(Op::Write).errno(), Some(libc::EAGAIN));
        assert_eq!(expired(Op::Connect).errno(), Some(libc::ETIMEDOUT));
        assert_eq!(expired(Op::Open).errno(), Some(libc::ETIMEDOUT));
    }

    const CHILD: &str = "SBTOOL_WATCHDOG_TEST_CHILD";
    const NAME: &str = "watchdog::tests::a_stall_prints_the_failure_line_and_exits_1";

    /// Runs itself again (this test only) as a child that stalls in an armed read.
    #[test]
    fn a_stall_prints_the_failure_line_and_exits_1() {
        if std::env::var_os(CHILD).is_some() {
            identify("rtt", Some("vsock:3:5000"));
            // Progress re-arms: this call is not the one that expires.
            drop(arm(Op::Write, Some(Duration::from_millis(100))));
            let _armed = arm(Op::Read, Some(Duration::from_millis(100)));
            thread::sleep(Duration::from_secs(20));
            return;
        }
        let exe = std::env::current_exe().expect("the test binary");
        let started = std::time::Instant::now();
        let out = std::process::Command::new(exe)
            .args(["--exact", NAME, "--nocapture", "--test-threads=1"])
            .env(CHILD, "1")
            .output()
            .expect("run the child");
        let took = started.elapsed();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{stdout}");
        assert!(
            took < Duration::from_secs(15),
            "the watchdog fired: {took:?}"
        );
        // The test harness writes its own text before it on the same line.
        let line = stdout
            .lines()
            .find_map(|l| l.split_once(report::PREFIX).map(|(_, json)| json))
            .unwrap_or_else(|| panic!("a result line: {stdout}"));
        let v: serde_json::Value = serde_json::from_str(line).expect("json");
        assert_eq!(v["ok"], false, "{v}");
        assert_eq!(v["mode"], "rtt", "{v}");
        assert_eq!(v["addr"], "vsock:3:5000", "{v}");
        assert_eq!(v["errno"], libc::EAGAIN, "{v}");
        assert!(
            v["error"]
                .as_str()
                .is_some_and(|e| e.starts_with("read (fast path)")),
            "{v}"
        );
    }
}
