//! Result lines: `SBRESULT {json}` on stdout, one per command, so a host can grep them out of a
//! serial console log.

use std::io::Write;

use serde_json::{json, Value};

use crate::error::Error;

/// Prefix of every result line.
pub const PREFIX: &str = "SBRESULT ";

/// Prints one result line and flushes.
pub fn emit(value: &Value) {
    let mut out = std::io::stdout().lock();
    // Nowhere to report a failing stdout; the exit status still tells.
    let _ = writeln!(out, "{PREFIX}{value}");
    let _ = out.flush();
}

/// The result of a command that failed with `err`.
pub fn failure(mode: &str, addr: Option<&str>, err: &Error) -> Value {
    let mut v = json!({
        "mode": mode,
        "ok": false,
        "error": err.to_string(),
        "errno": err.errno(),
    });
    if let (Some(a), Some(o)) = (addr, v.as_object_mut()) {
        o.insert("addr".into(), Value::from(a));
    }
    v
}

/// Gb/s (10^9 bits per second) for `bytes` in `seconds`.
pub fn gbps(bytes: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        bytes as f64 * 8.0 / seconds / 1e9
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_carries_errno() {
        let e = Error::Io {
            op: "connect vsock:3:1".into(),
            source: std::io::Error::from_raw_os_error(libc::ECONNRESET),
        };
        let v = failure("bulk", Some("vsock:3:1"), &e);
        assert_eq!(v["ok"], false);
        assert_eq!(v["errno"], 104);
        assert_eq!(v["mode"], "bulk");
        assert_eq!(v["addr"], "vsock:3:1");
        assert!(v["error"].as_str().is_some_and(|s| s.contains("connect")));
        let v = failure("rtt", None, &Error::Protocol("short".into()));
        assert!(v["errno"].is_null());
    }

    #[test]
    fn gbps_math() {
        assert_eq!(gbps(125_000_000, 1.0), 1.0);
        assert_eq!(gbps(1, 0.0), 0.0);
    }
}
