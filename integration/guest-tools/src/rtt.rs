//! `sbtool rtt`: round trips of `size` bytes over one echo connection.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::time::Instant;

use serde_json::json;

use crate::addr::Addr;
use crate::client::{self, ClientOpts};
use crate::conn::Stream;
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

/// What the round trips measured.
#[derive(Debug)]
pub struct Measured {
    /// Round-trip times of the timed round trips, µs.
    pub samples_us: Vec<f64>,
    /// Wall time of all round trips.
    pub seconds: f64,
}

/// Runs `p.warmup + p.count` round trips over an echo connection that has had its
/// handshake, timing the last `p.count`.
pub fn measure<S: Read + Write>(mut s: S, p: Params) -> Result<Measured> {
    let mut out = vec![0u8; p.size];
    pattern::fill(1, 0, &mut out);
    let mut back = vec![0u8; p.size];
    let mut samples = Vec::with_capacity(p.count);
    let started = Instant::now();
    for i in 0..p.warmup + p.count {
        // A distinct message per round trip, so a stale echo cannot pass.
        let stamp = (i as u64).to_le_bytes();
        let n = stamp.len().min(out.len());
        out[..n].copy_from_slice(&stamp[..n]);
        let t = Instant::now();
        s.write_all(&out).map_err(io("write"))?;
        net::read_exact(&mut s, &mut back, "echo")?;
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
    Ok(Measured {
        samples_us: samples,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Runs `p.warmup + p.count` round trips, timing the last `p.count`.
pub fn run(addr_text: &str, addr: &Addr, p: Params, opts: &ClientOpts) -> Result<Outcome> {
    let fp = opts.fastpath_for(addr)?;
    let mut conn = opts.connect(addr, fp.as_ref())?;
    client::hello_echo(&mut conn)?;
    let Measured {
        samples_us: mut samples,
        seconds,
    } = measure(&mut conn, p)?;
    // Best effort: the measurement is complete whatever happens now.
    let _ = conn.shutdown(Shutdown::Write);
    let sum = stats::summarize(&mut samples)
        .ok_or_else(|| Error::Usage("rtt needs --count of at least 1".into()))?;
    let mut value = json!({
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
    });
    conn.describe(opts.fastpath, &mut value);
    Ok(Outcome { value, ok: true })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn round_trips_over_a_unix_pair_with_the_real_echo_service() {
        let (mut a, mut b) = UnixStream::pair().expect("socketpair");
        let server = std::thread::spawn(move || crate::server::handle(&mut b));
        client::hello_echo(&mut a).expect("handshake");
        let p = Params {
            size: 1000,
            count: 50,
            warmup: 5,
        };
        let m = measure(&mut a, p).expect("round trips");
        assert_eq!(m.samples_us.len(), 50);
        a.shutdown(Shutdown::Write).expect("shutdown");
        assert!(server.join().expect("server thread").is_ok());
    }
}
