//! Timeouts for fast-path streams, which have no SO_RCVTIMEO / SO_SNDTIMEO.
//!
//! A blocking fast-path read or write (or connect) is *armed* for its duration: it stores a
//! deadline. One watchdog thread per process (started by the first armed call) looks at the
//! deadline every [`TICK`]; if a call is still armed past it, the command has stalled: the
//! watchdog prints the command's failure line (`SBRESULT {"ok":false,...}`, errno EAGAIN for
//! I/O as a socket's timeout gives, ETIMEDOUT for a connect) and exits with status 1.
//!
//! Every call re-arms, so the timeout bounds a stall (no progress), not the whole command,
//! as SO_RCVTIMEO does. The clients use one connection at a time per thread, and fast-path
//! streams only from one thread, so one deadline per process suffices. A stall therefore
//! ends the whole command, also for `many` (where a socket's timeout fails one connection).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Once, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::report;

/// How often the watchdog looks.
const TICK: Duration = Duration::from_millis(20);

static BASE: OnceLock<Instant> = OnceLock::new();
/// Deadline in ns since BASE; 0: nothing armed.
static DEADLINE: AtomicU64 = AtomicU64::new(0);
/// What is armed: the operation and the errno to report.
static WHAT: Mutex<(&str, i32)> = Mutex::new(("", 0));
/// The command's mode and address, for the failure line.
static WHO: OnceLock<(String, Option<String>)> = OnceLock::new();
static START: Once = Once::new();

fn now_ns() -> u64 {
    let base = *BASE.get_or_init(Instant::now);
    u64::try_from(base.elapsed().as_nanos()).unwrap_or(u64::MAX - 1) + 1
}

/// Names the command for the failure line (call once, before anything is armed).
pub fn identify(mode: &str, addr: Option<&str>) {
    let _ = WHO.set((mode.to_owned(), addr.map(str::to_owned)));
}

/// An armed call; disarms when dropped.
#[derive(Debug)]
pub struct Armed(());

impl Drop for Armed {
    fn drop(&mut self) {
        DEADLINE.store(0, Ordering::Release);
    }
}

/// Arms `op` for `timeout` (`None`: no timeout, nothing armed); `errno` is reported if it
/// expires.
pub fn arm(op: &'static str, errno: i32, timeout: Option<Duration>) -> Option<Armed> {
    let t = timeout?;
    START.call_once(|| {
        // Without the thread there is no timeout; the call itself still works.
        if let Err(e) = thread::Builder::new().name("watchdog".into()).spawn(watch) {
            eprintln!("sbtool: cannot start the fast-path timeout watchdog: {e}");
        }
    });
    if let Ok(mut w) = WHAT.lock() {
        *w = (op, errno);
    }
    let ns = u64::try_from(t.as_nanos()).unwrap_or(u64::MAX / 2);
    DEADLINE.store(now_ns().saturating_add(ns), Ordering::Release);
    Some(Armed(()))
}

/// The error reported for an expired `op`.
pub fn expired(op: &str, errno: i32) -> Error {
    Error::Io {
        op: format!("{op} (fast path)"),
        source: std::io::Error::from_raw_os_error(errno),
    }
}

fn watch() {
    loop {
        thread::sleep(TICK);
        let d = DEADLINE.load(Ordering::Acquire);
        if d == 0 || now_ns() <= d {
            continue;
        }
        let (op, errno) = WHAT.lock().map_or(("fast-path call", libc::EAGAIN), |w| *w);
        let (mode, addr) = WHO.get().cloned().unwrap_or_default();
        report::emit(&report::failure(
            &mode,
            addr.as_deref(),
            &expired(op, errno),
        ));
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unarmed_without_timeout_and_message_like_a_socket_timeout() {
        assert!(arm("read", libc::EAGAIN, None).is_none());
        let e = expired("read", libc::EAGAIN);
        assert_eq!(e.errno(), Some(libc::EAGAIN));
        assert!(e.to_string().contains("no progress within the I/O timeout"));
        assert!(e.to_string().starts_with("read (fast path)"));
    }
}
