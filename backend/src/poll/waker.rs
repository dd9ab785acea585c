//! How a sleeping poll thread is woken: an eventfd it sleeps on, written only while it sleeps.
//!
//! The handshake between a kick and a thread going to sleep is a store-then-load on each side
//! (Dekker's pattern):
//!
//! | kicker (vhost-user worker) | sleeper (poll thread) |
//! |---|---|
//! | store `kicked` | store `sleeping` |
//! | SeqCst fence | SeqCst fence |
//! | load `sleeping`: if set, write the eventfd | load every `kicked` (and re-check the rings): if none, sleep |
//!
//! With a SeqCst fence between the store and the load on both sides, at least one side sees
//! the other's store: either the kicker writes the eventfd, or the sleeper finds the kick and
//! stays awake. Release/acquire alone does not order a store before a later load, and a kick
//! could be lost. [`handshake`] holds the two halves, generic over the atomics so that the
//! `loom` model checker runs the same code (`tests::loom_no_kick_is_lost`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::switch::PollOwner;

/// The two halves of the handshake, over any atomics that implement [`handshake::Atomics`].
pub mod handshake {
    /// The operations the handshake needs: a boolean flag and a sequentially consistent fence.
    pub trait Atomics {
        /// A boolean shared between threads.
        type Flag;
        /// Stores `v` into `flag` (relaxed: the fence orders it).
        fn store(flag: &Self::Flag, v: bool);
        /// Loads `flag` (relaxed: the fence orders it).
        fn load(flag: &Self::Flag) -> bool;
        /// A sequentially consistent fence.
        fn fence();
    }

    /// The kicker's half: flags the work, then tells whether the thread sleeps (and so must
    /// be woken through the eventfd).
    pub fn flag_work<A: Atomics>(work: &A::Flag, sleeping: &A::Flag) -> bool {
        A::store(work, true);
        A::fence();
        A::load(sleeping)
    }

    /// The sleeper's half, before it looks for work one last time: from here on every kick
    /// either wakes it or is seen by that look.
    pub fn announce_sleep<A: Atomics>(sleeping: &A::Flag) {
        A::store(sleeping, true);
        A::fence();
    }

    /// The standard library's atomics.
    #[derive(Debug)]
    pub struct Std;

    impl Atomics for Std {
        type Flag = std::sync::atomic::AtomicBool;
        fn store(flag: &Self::Flag, v: bool) {
            flag.store(v, std::sync::atomic::Ordering::Relaxed);
        }
        fn load(flag: &Self::Flag) -> bool {
            flag.load(std::sync::atomic::Ordering::Relaxed)
        }
        fn fence() {
            std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        }
    }
}

use handshake::Std;

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

    /// Sets `work` (a VM's kicked flag) and wakes the thread if it sleeps (cheap when it
    /// spins: a fence and one load).
    pub fn kick(&self, work: &AtomicBool) {
        if handshake::flag_work::<Std>(work, &self.sleeping) {
            let _ = self.fd.write(1);
        }
    }

    /// Called by the thread before it re-checks for work and sleeps. Any `kick` after this
    /// writes the eventfd or is seen by the re-check, so no kick is lost.
    pub fn going_to_sleep(&self) {
        handshake::announce_sleep::<Std>(&self.sleeping);
    }

    /// Called by the thread when it wakes (or decides not to sleep after all).
    pub fn awake(&self) {
        self.sleeping.store(false, Ordering::Relaxed);
        if self.fd.read().is_ok() {
            self.wakeups.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl PollOwner for Waker {
    fn kick(&self, kicked: &AtomicBool) {
        Waker::kick(self, kicked);
    }
}

#[cfg(test)]
mod tests {
    use super::handshake::{self, Atomics};

    /// loom's atomics, so that the model checker explores every interleaving and every
    /// weak-memory outcome of the real handshake code.
    struct Loom;

    impl Atomics for Loom {
        type Flag = loom::sync::atomic::AtomicBool;
        fn store(flag: &Self::Flag, v: bool) {
            flag.store(v, loom::sync::atomic::Ordering::Relaxed);
        }
        fn load(flag: &Self::Flag) -> bool {
            flag.load(loom::sync::atomic::Ordering::Relaxed)
        }
        fn fence() {
            loom::sync::atomic::fence(loom::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn loom_no_kick_is_lost() {
        loom::model(|| {
            use loom::sync::atomic::AtomicBool;
            use loom::sync::Arc;
            let kicked = Arc::new(AtomicBool::new(false));
            let sleeping = Arc::new(AtomicBool::new(false));
            let (k, s) = (kicked.clone(), sleeping.clone());
            let kicker = loom::thread::spawn(move || handshake::flag_work::<Loom>(&k, &s));
            handshake::announce_sleep::<Loom>(&sleeping);
            let sleeps = !Loom::load(&kicked);
            let woken = kicker.join().expect("kicker");
            assert!(
                !sleeps || woken,
                "the poll thread went to sleep and the kick did not wake it"
            );
        });
    }
}
