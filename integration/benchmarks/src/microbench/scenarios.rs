//! The measurements, each on a running [`BenchDaemon`]: single-packet latency, pipelined
//! packet rate, bulk bandwidth, scaling over VM pairs, idle CPU, and the fixed run the
//! instruction-count gate uses.

use std::time::{Duration, Instant};

use sockbypassd::config::{PollMode, SeccompMode};

use super::bench_vm::RING_SIZE;
use super::daemon::{poll_config, BenchDaemon, EngineTotals};
use super::pair::{spin_until, Pair, STALL_LIMIT};
use super::reference;
use crate::error::MicrobenchError;
use sockbypass_measure::cpu_time as cpu;
use sockbypass_measure::stats;

/// Small packets: 64 payload bytes.
pub const SMALL: u32 = 64;
/// Bulk packets: 64 KiB, the largest a vsock packet carries.
pub const BULK: u32 = 64 * 1024;

/// What to run, and for how long.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Poll modes to measure, in order.
    pub modes: Vec<PollMode>,
    /// Timed single packets per latency figure.
    pub latency_packets: u32,
    /// Duration of each rate or bandwidth figure.
    pub seconds: f64,
    /// Pair counts for the scaling figures.
    pub pairs: Vec<usize>,
    /// How long idle CPU is sampled.
    pub idle_seconds: f64,
    /// Times each figure is measured; the median run is reported (this machine is shared).
    pub repeat: u32,
    /// `--poll-threads`.
    pub poll_threads: u32,
    /// `--seccomp` of the daemon (the shipped default, `kill`, unless told otherwise).
    pub seccomp: SeccompMode,
    /// `--poll-budget-us`.
    pub budget_us: u64,
    /// Pin the driver thread to the first allowed CPU and the poll threads to the others
    /// (without it, the scheduler now and then stacks both spinning threads on one CPU,
    /// halving every figure).
    pub pin: bool,
}

/// Rate of one pipelined run.
#[derive(Clone, Copy, Debug)]
pub struct Rate {
    /// Pairs sending at once.
    pub pairs: usize,
    /// Packets delivered and checked.
    pub packets: u64,
    /// Payload bytes delivered and checked.
    pub bytes: u64,
    /// Wall time, including draining what was in flight at the end.
    pub elapsed: Duration,
}

impl Rate {
    /// Wall nanoseconds per packet, over all pairs.
    pub fn ns_per_packet(&self) -> f64 {
        self.elapsed.as_nanos() as f64 / self.packets.max(1) as f64
    }

    /// Million packets per second.
    pub fn mpps(&self) -> f64 {
        self.packets as f64 / self.elapsed.as_secs_f64() / 1e6
    }

    /// Payload gigabytes (10^9) per second.
    pub fn gbytes_per_s(&self) -> f64 {
        self.bytes as f64 / self.elapsed.as_secs_f64() / 1e9
    }
}

/// Percentiles of single-packet latency, timer cost taken out.
#[derive(Clone, Copy, Debug)]
pub struct Latency {
    /// Median.
    pub p50_ns: f64,
    /// 99th percentile.
    pub p99_ns: f64,
    /// Samples.
    pub samples: u32,
}

/// Everything measured in one poll mode.
#[derive(Clone, Debug)]
pub struct ModeResult {
    /// The mode.
    pub mode: PollMode,
    /// 64 B, one packet at a time, TX avail to RX used, with only the measured pair attached.
    pub latency: Latency,
    /// The same with every VM of the run attached (a poll thread walks them all, so this shows
    /// what each idle VM adds).
    pub latency_all_attached: Latency,
    /// VMs attached for [`ModeResult::latency_all_attached`].
    pub vms_attached: usize,
    /// 64 B, the TX ring kept full, one pair.
    pub small: Rate,
    /// 64 KiB, the TX ring kept full, one pair.
    pub bulk: Rate,
    /// Bulk bandwidth ÷ single-core `memcpy` bandwidth measured just before it, the median over
    /// the repetitions (memory bandwidth on a shared machine drifts between runs).
    pub bulk_vs_memcpy: f64,
    /// The `memcpy` bandwidth (GB/s, 64 KiB blocks) of the run whose ratio is the median: the
    /// divisor of [`ModeResult::bulk_vs_memcpy`].
    pub memcpy_gbytes_per_s: f64,
    /// 64 B over 1, 2, 4, 8... pairs.
    pub scaling: Vec<Rate>,
    /// Daemon CPU while idle after the budget, in % of one core.
    pub idle_cpu_percent: Option<f64>,
    /// Kicks, interrupts and poll-thread totals over the whole mode.
    pub totals: EngineTotals,
    /// Steal time over the mode's run, in % of the wall time × CPUs (the hypervisor running
    /// something else on this VM's CPUs); `None` where `/proc/stat` says nothing.
    pub steal_percent: Option<f64>,
}

/// Measures one mode: a daemon with enough VMs for the largest pair count.
pub fn run_mode(mode: PollMode, s: &Settings) -> Result<ModeResult, MicrobenchError> {
    let most = s.pairs.iter().copied().max().unwrap_or(1).max(1);
    let mut poll = poll_config(mode, s.poll_threads, s.budget_us);
    let cpus = reference::allowed_cpus();
    let pin = s.pin && cpus.len() >= 2;
    if pin {
        poll.cpus = Some(cpus[1..].to_vec());
    }
    // Started before this thread is pinned: the daemon checks its CPU list against the
    // starting thread's affinity.
    let daemon = BenchDaemon::start_with(2 * most, poll, s.seccomp)?;
    let pinned = if pin {
        sockbypassd::affinity::pin_current_thread(cpus[0]).ok()
    } else {
        None
    };
    let (started, steal_before) = (Instant::now(), cpu::steal_time());
    let mut result = measure_mode(mode, s, most, &daemon);
    if let (Ok(r), Some(before), Some(after)) = (&mut result, steal_before, cpu::steal_time()) {
        let wall = started.elapsed().as_secs_f64() * cpus.len() as f64;
        r.steal_percent = Some(after.saturating_sub(before).as_secs_f64() / wall * 100.0);
    }
    if let Some(mask) = pinned {
        let _ = mask.apply();
    }
    result
}

fn measure_mode(
    mode: PollMode,
    s: &Settings,
    most: usize,
    daemon: &BenchDaemon,
) -> Result<ModeResult, MicrobenchError> {
    let duration = Duration::from_secs_f64(s.seconds);
    let n = s.repeat.max(1);
    let mut pairs = vec![daemon.pair(0, true)?];
    let alone = median_of(
        n,
        |l: &Latency| l.p50_ns,
        || latency(&mut pairs[0], SMALL, s.latency_packets),
    )?;
    for i in 1..most {
        pairs.push(daemon.pair(i, true)?);
    }
    let all_attached = median_of(
        n,
        |l: &Latency| l.p50_ns,
        || latency(&mut pairs[0], SMALL, s.latency_packets),
    )?;
    let small = median_of(n, Rate::ns_per_packet, || {
        pipelined(&mut pairs[..1], SMALL, duration)
    })?;
    let bulk_runs = (0..n)
        .map(|_| {
            let copy = reference::memcpy_bandwidth(BULK as usize, usize::from(RING_SIZE), duration);
            let run = pipelined(&mut pairs[..1], BULK, duration)?;
            Ok((run.gbytes_per_s() * 1e9 / copy, run, copy / 1e9))
        })
        .collect::<Result<Vec<(f64, Rate, f64)>, MicrobenchError>>()?;
    let (bulk_vs_memcpy, bulk, memcpy_gbytes_per_s) = median_by(bulk_runs, |(ratio, ..)| *ratio);
    let scaling = s
        .pairs
        .iter()
        .map(|&p| {
            median_of(n, Rate::ns_per_packet, || {
                pipelined(&mut pairs[..p], SMALL, duration)
            })
        })
        .collect::<Result<Vec<Rate>, _>>()?;
    let idle_cpu_percent = idle_cpu(s);
    let totals = daemon.totals();
    drop(pairs);
    Ok(ModeResult {
        mode,
        latency: alone,
        latency_all_attached: all_attached,
        vms_attached: 2 * most,
        small,
        bulk,
        bulk_vs_memcpy,
        memcpy_gbytes_per_s,
        scaling,
        idle_cpu_percent,
        totals,
        steal_percent: None,
    })
}

/// Runs `measure` `n` times and keeps the run whose `key` is the median.
fn median_of<T>(
    n: u32,
    key: impl Fn(&T) -> f64,
    mut measure: impl FnMut() -> Result<T, MicrobenchError>,
) -> Result<T, MicrobenchError> {
    let runs = (0..n.max(1))
        .map(|_| measure())
        .collect::<Result<Vec<T>, _>>()?;
    Ok(median_by(runs, key))
}

/// The element whose `key` is the median (`sockbypass_measure::stats`). `runs` is not empty.
fn median_by<T>(runs: Vec<T>, key: impl Fn(&T) -> f64) -> T {
    stats::median_by(runs, key).expect("at least one run")
}

/// Times `count` single packets of `len` bytes (after a tenth as many to warm up).
pub fn latency(pair: &mut Pair, len: u32, count: u32) -> Result<Latency, MicrobenchError> {
    for _ in 0..count / 10 {
        pair.one_way(len)?;
    }
    let overhead = reference::timer_overhead();
    let mut samples = Vec::with_capacity(count as usize);
    for _ in 0..count {
        samples.push(pair.one_way(len)?.saturating_sub(overhead));
    }
    samples.sort_unstable();
    let at = |permille| stats::percentile(&samples, permille).map_or(0.0, |d| d.as_nanos() as f64);
    Ok(Latency {
        p50_ns: at(500),
        p99_ns: at(990),
        samples: u32::try_from(samples.len()).unwrap_or(u32::MAX),
    })
}

/// Keeps every pair's TX ring full of `len`-byte packets for `duration`, from this one thread,
/// then waits for the last ones to arrive.
pub fn pipelined(
    pairs: &mut [Pair],
    len: u32,
    duration: Duration,
) -> Result<Rate, MicrobenchError> {
    let base: (u64, u64) = pairs
        .iter()
        .fold((0, 0), |(p, b), x| (p + x.packets, b + x.bytes));
    let start = Instant::now();
    let mut last_progress = start;
    while start.elapsed() < duration {
        let mut moved = 0;
        for p in pairs.iter_mut() {
            moved += p.reap()?;
            moved += p.send_burst(len, usize::from(RING_SIZE))? as u64;
        }
        if moved > 0 {
            last_progress = Instant::now();
        } else if last_progress.elapsed() > STALL_LIMIT {
            return Err(MicrobenchError::Stalled(STALL_LIMIT, "pipelined sending"));
        } else {
            std::hint::spin_loop();
        }
    }
    for p in pairs.iter_mut() {
        spin_until("draining", || {
            p.reap()?;
            Ok(p.drained())
        })?;
    }
    let elapsed = start.elapsed();
    let (packets, bytes) = pairs
        .iter()
        .fold((0, 0), |(p, b), x| (p + x.packets, b + x.bytes));
    Ok(Rate {
        pairs: pairs.len(),
        packets: packets - base.0,
        bytes: bytes - base.1,
        elapsed,
    })
}

/// The process's CPU use while nothing moves, measured after the poll budget has expired
/// (plus a margin). The driver threads are idle too, so this is the daemon's.
fn idle_cpu(s: &Settings) -> Option<f64> {
    std::thread::sleep(Duration::from_micros(s.budget_us) + Duration::from_millis(200));
    let before = cpu::process_cpu_time()?;
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(s.idle_seconds));
    let used = cpu::process_cpu_time()?.checked_sub(before)?;
    Some(used.as_secs_f64() / start.elapsed().as_secs_f64() * 100.0)
}

/// What the instruction-count gate reads.
#[derive(Clone, Copy, Debug)]
pub struct GateRun {
    /// RW packets forwarded and checked.
    pub packets: u64,
    /// Kicks and interrupts over the run.
    pub totals: EngineTotals,
}

/// The gate's fixed run: one pair, `batches` rounds of `batch` 64 B packets published with one
/// kick, the receiver sleeping on its RX interrupt until the whole batch is in. In event mode
/// the device's kick handler moves them; in poll and adaptive mode one poll thread does (the
/// gate then counts only the functions a pass enters when it has work, so that the passes
/// that find nothing, whose number depends on timing, do not count). Without the seccomp
/// filter: the gate runs under valgrind, which has no `seccomp` system call, and the filter
/// runs in the kernel, where callgrind counts nothing anyway.
pub fn gate(mode: PollMode, batches: u32, batch: u16) -> Result<GateRun, MicrobenchError> {
    let poll = poll_config(mode, 1, 50);
    let daemon = BenchDaemon::start_with(2, poll, SeccompMode::Off)?;
    let mut pair = daemon.pair(0, true)?;
    for _ in 0..batches {
        let want = pair.packets + u64::from(batch);
        let sent = pair.send_burst(SMALL, usize::from(batch))?;
        if sent != usize::from(batch) {
            return Err(MicrobenchError::Stalled(STALL_LIMIT, "gate: no room"));
        }
        let started = Instant::now();
        while pair.packets < want {
            pair.reap()?;
            if pair.packets >= want {
                break;
            }
            if !pair.receiver().rearm_rx()? {
                pair.receiver()
                    .wait_rx_interrupt(Duration::from_millis(100))?;
            }
            if started.elapsed() > STALL_LIMIT {
                return Err(MicrobenchError::Stalled(STALL_LIMIT, "gate: waiting"));
            }
        }
    }
    let packets = pair.packets;
    drop(pair);
    Ok(GateRun {
        packets,
        totals: daemon.totals(),
    })
}
