//! The fast-path thread (SPEC.md §13.5): one thread owns the [`Service`]; it takes new control
//! connections, reads control messages, and runs the copier, following the poll engine's mode:
//!
//! - `poll`: it never sleeps (`host_sleeping` stays 0, so guests never `KICK`); between passes
//!   that move nothing it yields the core;
//! - `adaptive`: it spins while bytes move; after the poll budget with nothing moving it naps
//!   ([`NAP`] between passes, `host_sleeping` still 0, so guests send no `KICK`) for up to
//!   [`NAP_FOR`]; after that it stores `host_sleeping = 1` in every window, fences, makes one
//!   more pass, and sleeps until a control message (a `KICK`), a new control connection or the
//!   stop eventfd;
//! - `event`: `host_sleeping` stays 1 and it sleeps after every pass.
//!
//! On a 2-core host with two spinning guests, a spinning copier waits for the scheduler tick
//! (brief, issue 12); `adaptive` is the default for that reason. Its naps answer a guest within
//! about [`NAP`] plus the timer slack (50 µs by default) without a `KICK`, which would cost a
//! guest a vsock message (hundreds of µs under TCG); a `KICK` is needed only after
//! [`NAP_FOR`] of quiet.

use std::io;
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::{ControlOperation, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::intake::{Intake, IntakeQueue};
use super::service::{Service, INTAKE_TOKEN, STOP_TOKEN};
use crate::config::PollMode;
use crate::failure::Failure;
use crate::seccomp::ThreadFilter;

/// How long a sleeping thread waits at most when answers wait for a full socket.
const FLUSH_RETRY: Duration = Duration::from_millis(10);
/// Adaptive mode: the nap between passes once the poll budget passed with nothing moving.
pub const NAP: Duration = Duration::from_micros(20);
/// Adaptive mode: how long it naps before it sleeps until a `KICK`.
pub const NAP_FOR: Duration = Duration::from_millis(50);

/// The running fast-path thread.
#[derive(Debug)]
pub struct FastPathThread {
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl FastPathThread {
    /// Starts the thread over `service`, taking new control connections from `intake`.
    pub fn start(
        service: Service,
        intake: Arc<Intake>,
        queue: IntakeQueue,
        mode: PollMode,
        budget: Duration,
        filter: &ThreadFilter,
        failure: Arc<Failure>,
    ) -> io::Result<FastPathThread> {
        let stop = EventFd::new(EFD_NONBLOCK)?;
        let watch = |fd: &EventFd, token| {
            service.epoll().ctl(
                ControlOperation::Add,
                std::os::fd::AsRawFd::as_raw_fd(fd),
                EpollEvent::new(EventSet::IN, token),
            )
        };
        watch(intake.wake_fd(), INTAKE_TOKEN)?;
        watch(&stop, STOP_TOKEN)?;
        let filter = filter.clone();
        let mut run = Runner {
            service,
            intake,
            queue,
            mode,
            budget,
        };
        let thread = std::thread::Builder::new()
            .name("sb-fastpath".into())
            .spawn(move || {
                filter.confine_current_thread();
                failure.guard("sb-fastpath", || run.run());
            })?;
        tracing::info!(?mode, "fast-path thread started");
        Ok(FastPathThread {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops and joins the thread.
    pub fn stop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for FastPathThread {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Runner {
    service: Service,
    intake: Arc<Intake>,
    queue: IntakeQueue,
    mode: PollMode,
    budget: Duration,
}

impl Runner {
    fn run(&mut self) {
        let mut events = vec![EpollEvent::default(); 64];
        let mut idle_since = Instant::now();
        let mut sleep = false;
        self.service.set_host_sleeping(self.mode == PollMode::Event);
        loop {
            let timeout = match (sleep, self.service.has_unflushed()) {
                (false, _) => 0,
                (true, false) => -1,
                (true, true) => i32::try_from(FLUSH_RETRY.as_millis()).unwrap_or(10),
            };
            let n = match self.service.epoll().wait(timeout, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
                Err(e) => {
                    tracing::error!(error = %e, "fast-path event loop failed");
                    std::thread::sleep(FLUSH_RETRY);
                    0
                }
            };
            if sleep && self.mode == PollMode::Adaptive {
                self.service.set_host_sleeping(false);
            }
            let mut moved = n > 0;
            for ev in &events[..n] {
                match ev.data() {
                    STOP_TOKEN => return,
                    INTAKE_TOKEN => self.take_new(),
                    token => self.service.on_readable(token),
                }
            }
            self.service.reap();
            moved |= self.service.copy_pass();
            self.service.reap();
            self.service.flush_all();
            self.service.reap();
            if moved {
                idle_since = Instant::now();
            }
            sleep = match self.mode {
                PollMode::Event => true,
                PollMode::Poll => {
                    if !moved {
                        std::thread::yield_now();
                    }
                    false
                }
                PollMode::Adaptive => {
                    let idle = idle_since.elapsed();
                    if idle >= self.budget && idle < self.budget + NAP_FOR {
                        std::thread::sleep(NAP);
                        false
                    } else {
                        idle >= self.budget && self.prepare_to_sleep()
                    }
                }
            };
        }
    }

    /// `host_sleeping = 1`, a fence, and one more look (§13.5): whether to sleep now.
    fn prepare_to_sleep(&mut self) -> bool {
        self.service.set_host_sleeping(true);
        fence(Ordering::SeqCst);
        if self.service.copy_pass() {
            self.service.set_host_sleeping(false);
            self.service.reap();
            return false;
        }
        true
    }

    fn take_new(&mut self) {
        let new = self.queue.drain();
        self.intake.taken(new.len());
        for c in new {
            self.service.add_control(c);
        }
    }
}
