//! `sbtool connect`: only connect (with a timeout) and report how it went and how long it
//! took; a readiness probe, and the check that a refused connect fails fast.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::addr::Addr;
use crate::net;
use crate::outcome::Outcome;

/// Connects to `addr`, waiting at most `timeout_ms` (0: the kernel's own limit).
pub fn run(addr_text: &str, addr: &Addr, timeout_ms: u64) -> Outcome {
    let timeout = (timeout_ms > 0).then(|| Duration::from_millis(timeout_ms));
    let started = Instant::now();
    let result = net::connect(addr, timeout);
    let elapsed_ms = started.elapsed().as_secs_f64() * 1e3;
    let (ok, errno, error) = match &result {
        Ok(_) => (true, None, None),
        Err(e) => (false, e.errno(), Some(e.to_string())),
    };
    Outcome {
        value: json!({
            "mode": "connect",
            "addr": addr_text,
            "ok": ok,
            "errno": errno,
            "error": error,
            "elapsed_ms": elapsed_ms,
        }),
        ok,
    }
}
