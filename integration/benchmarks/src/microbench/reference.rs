//! Reference figures for this machine, the physical limits the switch is held against: a cache
//! line handed back and forth between two cores, and one core copying memory.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sockbypass_measure::stats;
use sockbypassd::affinity::{pin_current_thread, CpuMask};

use crate::error::MicrobenchError;

/// One cache line on its own (128 bytes, so that adjacent-line prefetch does not share it).
#[repr(align(128))]
struct Line(AtomicU64);

/// The CPUs this process may run on, in order (just CPU 0 if the kernel does not say).
pub fn allowed_cpus() -> Vec<usize> {
    CpuMask::current().map_or_else(|_| vec![0], |m| m.cpus())
}

/// The round trip of one cache line between two threads on two cores: thread A writes an odd
/// number, B answers with the next even one, A sees it. Returns the median over 20 chunks of
/// the `rounds` (at least 21).
pub fn cacheline_round_trip(rounds: u64) -> Result<Duration, MicrobenchError> {
    let cpus = allowed_cpus();
    let [first, second, ..] = cpus[..] else {
        return Err(MicrobenchError::Thread(
            "a cache-line round trip needs two CPUs".into(),
        ));
    };
    let line = Arc::new(Line(AtomicU64::new(0)));
    let peer = Arc::clone(&line);
    let answerer = std::thread::Builder::new()
        .name("sb-ref-pong".into())
        .spawn(move || {
            let _ = pin_current_thread(second);
            let last = 2 * rounds;
            loop {
                let v = peer.0.load(Ordering::Acquire);
                if v >= last {
                    break;
                }
                if v % 2 == 1 {
                    peer.0.store(v + 1, Ordering::Release);
                }
                std::hint::spin_loop();
            }
        })
        .map_err(|e| MicrobenchError::Thread(e.to_string()))?;
    let old = pin_current_thread(first).ok();
    let mut value = 0u64;
    let mut time = |n: u64| {
        let start = Instant::now();
        for _ in 0..n {
            value += 1;
            line.0.store(value, Ordering::Release);
            value += 1;
            while line.0.load(Ordering::Acquire) != value {
                std::hint::spin_loop();
            }
        }
        start.elapsed()
    };
    // Warm up, then time 20 chunks and keep the median chunk: on a shared (virtual) machine a
    // chunk now and then loses a core to someone else.
    let chunk = (rounds / 21).max(1);
    time(chunk);
    let mut chunks: Vec<Duration> = (0..20).map(|_| time(chunk)).collect();
    // The answerer stops once the value reaches 2 × rounds: finish the rounds it expects.
    let done = 21 * chunk;
    if rounds > done {
        time(rounds - done);
    }
    if let Some(mask) = old {
        let _ = mask.apply();
    }
    answerer
        .join()
        .map_err(|_| MicrobenchError::Thread("the pong thread panicked".into()))?;
    chunks.sort_unstable();
    let median = stats::percentile(&chunks, 500).unwrap_or_default();
    Ok(median / u32::try_from(chunk).unwrap_or(u32::MAX))
}

/// Single-core copy bandwidth in bytes per second for blocks of `block` bytes, cycling over
/// `blocks` sources and destinations (the switch's working set: a ring of buffers each side).
pub fn memcpy_bandwidth(block: usize, blocks: usize, duration: Duration) -> f64 {
    let src: Vec<u8> = (0..block * blocks).map(|i| (i % 251) as u8).collect();
    let mut dst = vec![0u8; block * blocks];
    let start = Instant::now();
    let mut copied = 0u64;
    let mut i = 0;
    while start.elapsed() < duration {
        for _ in 0..blocks {
            let at = i * block;
            dst[at..at + block].copy_from_slice(&src[at..at + block]);
            black_box(&mut dst[at]);
            i = (i + 1) % blocks;
        }
        copied += (block * blocks) as u64;
    }
    copied as f64 / start.elapsed().as_secs_f64()
}

/// What reading the clock twice costs (median of many), to take out of timed single packets.
pub fn timer_overhead() -> Duration {
    let mut samples: Vec<Duration> = (0..10_001)
        .map(|_| {
            let t = Instant::now();
            black_box(Instant::now());
            t.elapsed()
        })
        .collect();
    samples.sort_unstable();
    stats::percentile(&samples, 500).unwrap_or_default()
}
