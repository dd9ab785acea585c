//! A daemon thread that panics ends the daemon, loudly.
//!
//! The switch's state is built to survive a panic (poisoned locks are recovered), but a panicked
//! poll thread, host I/O thread or vring worker leaves its VMs without anyone to serve them: the
//! guests would see a device that silently stopped. So every long-lived thread runs its body
//! through [`Failure::guard`]; the first panic is recorded with the thread's name and message,
//! and when the daemon runs as a process ([`crate::daemon::run`]) the main thread is woken to
//! stop every thread and exit with a non-zero status that names the cause.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// The first fatal failure of a daemon, shared by its threads.
#[derive(Debug, Default)]
pub struct Failure {
    message: Mutex<Option<String>>,
    /// Raise SIGTERM on the process when a failure is recorded (set by `daemon::run`, whose
    /// main thread waits for that signal; never set for a daemon inside a test process).
    wake_main: AtomicBool,
}

impl Failure {
    /// A shared failure slot.
    pub fn new() -> Arc<Failure> {
        Arc::new(Failure::default())
    }

    /// From now on a recorded failure raises SIGTERM, which the main thread waits for.
    pub fn wake_main_thread_on_failure(&self) {
        self.wake_main.store(true, Ordering::SeqCst);
    }

    /// Runs `body`; if it panics, records the panic as the daemon's failure (the first one
    /// wins) and returns `None`.
    pub fn guard<R>(&self, thread: &str, body: impl FnOnce() -> R) -> Option<R> {
        match catch_unwind(AssertUnwindSafe(body)) {
            Ok(r) => Some(r),
            Err(payload) => {
                self.record(format!(
                    "thread `{thread}` panicked: {}",
                    panic_text(&*payload)
                ));
                None
            }
        }
    }

    /// Records `message` as the daemon's failure unless one is recorded already.
    pub fn record(&self, message: String) {
        {
            let mut slot = self.message.lock().unwrap_or_else(|p| p.into_inner());
            if slot.is_some() {
                return;
            }
            tracing::error!(failure = %message, "the daemon cannot go on: stopping");
            *slot = Some(message);
        }
        if self.wake_main.load(Ordering::SeqCst) {
            // SAFETY: kill(2) on our own process id with a valid signal number has no memory
            // effects; SIGTERM is blocked in every thread, so it waits for the main thread's
            // sigwait instead of killing the process.
            unsafe {
                libc::kill(libc::getpid(), libc::SIGTERM);
            }
        }
    }

    /// The recorded failure, if any.
    pub fn message(&self) -> Option<String> {
        self.message
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// The text of a panic payload (`panic!` gives a `&str` or a `String`).
fn panic_text(payload: &(dyn Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_panic_is_recorded_with_its_thread() {
        let f = Failure::new();
        assert_eq!(f.guard("calm", || 7), Some(7));
        assert_eq!(f.message(), None);
        let r: Option<()> = f.guard("sb-poll-0", || panic!("ring on fire"));
        assert_eq!(r, None);
        let _: Option<()> = f.guard("later", || panic!("{}", String::from("second")));
        assert_eq!(
            f.message().as_deref(),
            Some("thread `sb-poll-0` panicked: ring on fire")
        );
    }
}
