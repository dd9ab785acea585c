//! Poll threads. Thread *k* of *N* owns the VMs whose switch index is *k* mod *N* (looked up
//! each pass, as VMs are added and removed at run time). Each loop walks the
//! owned VMs' TX queues with kicks left off, and serves the VMs that kicked (RX buffers posted,
//! an event buffer, or a TX kick while the thread slept). Adaptive threads that found nothing
//! for the budget re-enable kicks, re-check every ring, and sleep on their [`Waker`] until the
//! vhost-user worker of a VM forwards a kick (`Switch::on_kick`).

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::waker::Waker;
use crate::config::{PollConfig, PollMode};
use crate::seccomp::ThreadFilter;
use crate::switch::{PollOwner, Switch};
use sockbypass_wire::consts::RX_QUEUE as RX;

macro_rules! poll_counters {
    ($($(#[$m:meta])* $field:ident),* $(,)?) => {
        /// Counters of one poll thread.
        #[derive(Debug, Default)]
        pub struct PollCounters { $($(#[$m])* pub $field: AtomicU64,)* }

        /// A copy of [`PollCounters`] at one moment.
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
        pub struct PollCountersSnapshot { $($(#[$m])* pub $field: u64,)* }

        impl PollCounters {
            /// Reads every counter.
            pub fn snapshot(&self) -> PollCountersSnapshot {
                PollCountersSnapshot { $($field: self.$field.load(Ordering::Relaxed),)* }
            }
        }

        impl PollCountersSnapshot {
            /// Every counter as (name, value), in declaration order.
            pub fn pairs(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($field), self.$field),)*]
            }
        }
    };
}

poll_counters!(
    /// Loops over the owned VMs.
    loops,
    /// Loops that moved at least one chain.
    useful_loops,
    /// Chains moved (TX chains taken plus RX packets written by kicked fills).
    packets,
    /// Times the thread slept (adaptive mode).
    sleeps,
    /// Times a sleeping thread was woken by a kick.
    wakeups,
    /// Useful loops that moved 1 chain (the packets-per-batch histogram, by powers of two).
    batch_1,
    /// Useful loops that moved 2-3 chains.
    batch_2_3,
    /// Useful loops that moved 4-7 chains.
    batch_4_7,
    /// Useful loops that moved 8-15 chains.
    batch_8_15,
    /// Useful loops that moved 16-31 chains.
    batch_16_31,
    /// Useful loops that moved 32-63 chains.
    batch_32_63,
    /// Useful loops that moved 64-127 chains.
    batch_64_127,
    /// Useful loops that moved 128 chains or more.
    batch_128_up,
);

/// Lower bounds of the packets-per-batch buckets, in the order of
/// [`PollCountersSnapshot::batch_histogram`].
pub const BATCH_BUCKETS: [u64; 8] = [1, 2, 4, 8, 16, 32, 64, 128];

impl PollCounters {
    /// Counts one useful loop that moved `chains` chains in the batch histogram.
    fn record_batch(&self, chains: u64) {
        let bucket = match chains {
            0 => return,
            1 => &self.batch_1,
            2..=3 => &self.batch_2_3,
            4..=7 => &self.batch_4_7,
            8..=15 => &self.batch_8_15,
            16..=31 => &self.batch_16_31,
            32..=63 => &self.batch_32_63,
            64..=127 => &self.batch_64_127,
            _ => &self.batch_128_up,
        };
        bucket.fetch_add(1, Ordering::Relaxed);
    }
}

impl PollCountersSnapshot {
    /// The packets-per-batch histogram: loops that moved 1, 2-3, 4-7 ... 128+ chains (bucket
    /// bounds in [`BATCH_BUCKETS`]).
    pub fn batch_histogram(&self) -> [u64; 8] {
        [
            self.batch_1,
            self.batch_2_3,
            self.batch_4_7,
            self.batch_8_15,
            self.batch_16_31,
            self.batch_32_63,
            self.batch_64_127,
            self.batch_128_up,
        ]
    }
}

/// The running poll threads; none in event mode.
#[derive(Debug)]
pub struct PollEngine {
    stop: Arc<AtomicBool>,
    wakers: Vec<Arc<Waker>>,
    counters: Vec<Arc<PollCounters>>,
    threads: Vec<JoinHandle<()>>,
}

impl PollEngine {
    /// Starts the poll threads of `config` over the VMs of `switch`, each confined by `filter`.
    pub fn start(
        switch: &Arc<Switch>,
        config: &PollConfig,
        filter: &ThreadFilter,
    ) -> io::Result<PollEngine> {
        let mut engine = PollEngine {
            stop: Arc::new(AtomicBool::new(false)),
            wakers: Vec::new(),
            counters: Vec::new(),
            threads: Vec::new(),
        };
        if config.mode == PollMode::Event {
            return Ok(engine);
        }
        // VMs come and go at run time, so every configured thread starts, even for no VM.
        let n = (config.threads as usize).max(1);
        for _ in 0..n {
            engine.wakers.push(Arc::new(Waker::new()?));
            engine.counters.push(Arc::new(PollCounters::default()));
        }
        switch.set_poll_owners(
            engine
                .wakers
                .iter()
                .map(|w| w.clone() as Arc<dyn PollOwner>)
                .collect(),
        );
        for k in 0..n {
            let cpu = config
                .cpus
                .as_ref()
                .and_then(|c| c.get(k % c.len()).copied());
            let ctx = ThreadCtx {
                switch: switch.clone(),
                share: (k, n),
                mode: config.mode,
                budget: Duration::from_micros(config.budget_us),
                waker: engine.wakers[k].clone(),
                counters: engine.counters[k].clone(),
                stop: engine.stop.clone(),
            };
            let name = format!("sb-poll-{k}");
            let failure = switch.failure().clone();
            let filter = filter.clone();
            let handle = std::thread::Builder::new()
                .name(name.clone())
                .spawn(move || {
                    if let Some(cpu) = cpu {
                        // A failure is logged, not fatal: the thread runs unpinned.
                        if let Err(e) = crate::affinity::pin_current_thread(cpu) {
                            tracing::warn!(cpu, error = %e, "cannot pin poll thread");
                        }
                    }
                    filter.confine_current_thread();
                    failure.guard(&name, || ctx.run());
                })?;
            engine.threads.push(handle);
        }
        tracing::info!(mode = ?config.mode, threads = n, budget_us = config.budget_us, "poll engine started");
        Ok(engine)
    }

    /// The counters of every poll thread, shared (they go on counting).
    pub fn counter_handles(&self) -> Vec<Arc<PollCounters>> {
        self.counters.clone()
    }

    /// Counters of every poll thread.
    pub fn counters(&self) -> Vec<PollCountersSnapshot> {
        self.counters.iter().map(|c| c.snapshot()).collect()
    }

    /// Stops and joins every poll thread.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for w in &self.wakers {
            let _ = w.fd().write(1);
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for PollEngine {
    fn drop(&mut self) {
        self.stop();
    }
}

struct ThreadCtx {
    switch: Arc<Switch>,
    /// (k, n): this thread owns the VMs whose switch index is k mod n.
    share: (usize, usize),
    mode: PollMode,
    budget: Duration,
    waker: Arc<Waker>,
    counters: Arc<PollCounters>,
    stop: Arc<AtomicBool>,
}

impl ThreadCtx {
    /// Whether this thread owns the VM at switch index `vm`.
    fn owns(&self, vm: usize) -> bool {
        let (k, n) = self.share;
        vm % n == k
    }

    fn run(&self) {
        let mut idle_since = Instant::now();
        while !self.stop.load(Ordering::Relaxed) {
            // Tests make a poll thread panic here (`--features failpoints`, `FAILPOINTS`).
            fail::fail_point!("poll-thread-loop");
            self.counters.loops.fetch_add(1, Ordering::Relaxed);
            let moved = self.one_pass();
            if moved > 0 {
                self.counters.useful_loops.fetch_add(1, Ordering::Relaxed);
                self.counters.packets.fetch_add(moved, Ordering::Relaxed);
                self.counters.record_batch(moved);
                idle_since = Instant::now();
                continue;
            }
            match self.mode {
                PollMode::Adaptive if idle_since.elapsed() >= self.budget => {
                    self.sleep();
                    idle_since = Instant::now();
                }
                // Give the guests' vCPU threads the core when nothing moves.
                _ => std::thread::yield_now(),
            }
        }
    }

    /// One walk over the owned VMs; returns the chains moved.
    fn one_pass(&self) -> u64 {
        let mut moved = 0u64;
        // The VMs now: they are added and removed at run time.
        let members = self.switch.members();
        for vm in members.iter().copied().filter(|&vm| self.owns(vm)) {
            let Some(port) = self.switch.vm(vm) else {
                continue;
            };
            let kicked = port.kicked.swap(false, Ordering::AcqRel);
            moved += u64::from(self.switch.process_tx_polled(vm).chains);
            // Packets wait for this VM's RX buffers: look for new ones without waiting for the
            // guest's kick.
            let rx_ready = !kicked
                && port.rx_starved.load(Ordering::Acquire)
                && port.with_attachment(|a| a.has_avail(RX)) == Some(true);
            if kicked || rx_ready {
                moved += u64::from(self.switch.fill_rx_then_resume_tx(vm).packets);
            }
            if kicked {
                self.switch.fill_events(vm);
            }
            self.switch.reset_if_broken(vm);
        }
        moved
    }

    /// Re-enables kicks, re-checks every ring, and sleeps until a kick unless work came.
    fn sleep(&self) {
        self.waker.going_to_sleep();
        let mut found = 0u64;
        let mut moved = 0u64;
        // The VMs now: they are added and removed at run time.
        let members = self.switch.members();
        for vm in members.iter().copied().filter(|&vm| self.owns(vm)) {
            // With kicks re-armed: a chain that arrived before re-arming is taken here.
            let chains = u64::from(self.switch.process_tx(vm).chains);
            moved += chains;
            found += chains;
            // Relaxed: `going_to_sleep`'s fence orders this load after the `sleeping` store.
            if self
                .switch
                .vm(vm)
                .is_some_and(|v| v.kicked.load(Ordering::Relaxed))
            {
                found += 1;
            }
        }
        self.counters.packets.fetch_add(moved, Ordering::Relaxed);
        self.counters.record_batch(moved);
        if found == 0 && !self.stop.load(Ordering::Relaxed) {
            self.counters.sleeps.fetch_add(1, Ordering::Relaxed);
            let mut pfd = libc::pollfd {
                fd: self.waker.fd().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: `pfd` is a valid pollfd for the duration of the call, and nfds is 1.
            let _ = unsafe { libc::poll(&mut pfd, 1, -1) };
        }
        let before = self.waker.wakeups.load(Ordering::Relaxed);
        self.waker.awake();
        if self.waker.wakeups.load(Ordering::Relaxed) > before {
            self.counters.wakeups.fetch_add(1, Ordering::Relaxed);
        }
    }
}
