//! How a sleeping poll thread is woken: an eventfd it sleeps on, written only while it sleeps.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// The wake-up line of one poll thread.
#[derive(Debug)]
pub struct Waker {
    fd: EventFd,
    sleeping: AtomicBool,
    /// Wake-ups delivered to the sleeping thread.
    pub wakeups: AtomicU64,
}

impl Waker {
    /// A waker for a thread that is awake.
    pub fn new() -> std::io::Result<Waker> {
        Ok(Waker {
            fd: EventFd::new(EFD_NONBLOCK)?,
            sleeping: AtomicBool::new(false),
            wakeups: AtomicU64::new(0),
        })
    }

    /// The eventfd the thread sleeps on.
    pub fn fd(&self) -> &EventFd {
        &self.fd
    }

    /// Wakes the thread if it sleeps (cheap when it spins: one atomic load).
    pub fn wake(&self) {
        if self.sleeping.load(Ordering::SeqCst) {
            let _ = self.fd.write(1);
        }
    }

    /// Called by the thread before it re-checks for work and sleeps. Any `wake` after this
    /// writes the eventfd, so a kick between the check and the sleep is not lost.
    pub fn going_to_sleep(&self) {
        self.sleeping.store(true, Ordering::SeqCst);
    }

    /// Called by the thread when it wakes (or decides not to sleep after all).
    pub fn awake(&self) {
        self.sleeping.store(false, Ordering::SeqCst);
        if self.fd.read().is_ok() {
            self.wakeups.fetch_add(1, Ordering::Relaxed);
        }
    }
}
