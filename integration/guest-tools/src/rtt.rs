//! `sbtool rtt`: round trips of `size` bytes over one echo connection.

use std::io::Write;
use std::net::Shutdown;
use std::time::Instant;

use serde_json::json;

use crate::addr::Addr;
use crate::client::{self, ClientOpts};
use crate::error::{io, Error, Result};
use crate::outcome::Outcome;
use crate::{net, pattern, stats};

/// Parameters of a run.
#[derive(Debug, Clone, Copy)]
pub struct Params {
    /// Bytes per message.
    pub size: usize,
    /// Timed round trips.
    pub count: usize,
    /// Untimed round trips first.
    pub warmup: usize,
}

/// Runs `p.warmup + p.count` round trips, timing the last `p.count`.
pub fn run(addr_text: &str, addr: &Addr, p: Params, opts: &ClientOpts) -> Result<Outcome> {
    let sock = opts.open(addr)?;
    client::hello_echo(&sock)?;
    let mut out = vec![0u8; p.size];
    pattern::fill(1, 0, &mut out);
    let mut back = vec![0u8; p.size];
    let mut samples = Vec::with_capacity(p.count);
    let mut s = &sock;
    let started = Instant::now();
    for i in 0..p.warmup + p.count {
        // A distinct message per round trip, so a stale echo cannot pass.
        let stamp = (i as u64).to_le_bytes();
        let n = stamp.len().min(out.len());
        out[..n].copy_from_slice(&stamp[..n]);
        let t = Instant::now();
        s.write_all(&out).map_err(io("write"))?;
        net::read_exact(&sock, &mut back, "echo")?;
        let dt = t.elapsed();
        if back != out {
            return Err(Error::Protocol(format!(
                "round trip {i}: the echo differs from what was sent"
            )));
        }
        if i >= p.warmup {
            samples.push(dt.as_secs_f64() * 1e6);
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    // Best effort: the measurement is complete whatever happens now.
    let _ = sock.shutdown(Shutdown::Write);
    let sum = stats::summarize(&mut samples)
        .ok_or_else(|| Error::Usage("rtt needs --count of at least 1".into()))?;
    Ok(Outcome {
        value: json!({
            "mode": "rtt",
            "addr": addr_text,
            "size": p.size,
            "count": p.count,
            "warmup": p.warmup,
            "p50_us": sum.p50,
            "p99_us": sum.p99,
            "mean_us": sum.mean,
            "min_us": sum.min,
            "max_us": sum.max,
            "seconds": seconds,
            "ok": true,
        }),
        ok: true,
    })
}
