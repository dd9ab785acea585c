//! Proof that the bypass figures measured the bypass: every byte the client guest says it sent
//! over `AF_VSOCK` (and every byte the server echoed back) must show up in `sockbypassd`'s
//! forwarded-bytes counters of the two VMs. A guest whose vsock traffic went elsewhere (another
//! vsock device, a loopback transport, a stale daemon) fails the run instead of being reported
//! as the bypass.

use serde_json::Value;
use sockbypassd::metrics::VmCountersSnapshot;

use super::plan::{Path, Plan};

/// Payload bytes the guests' results say crossed the bypass, by sender.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BypassBytes {
    /// From the client VM: RTT requests and bulk data.
    pub client: u64,
    /// From the server VM: RTT echoes (a bulk receiver only answers with a 16-byte summary).
    pub server: u64,
}

/// The bypass did not carry what the guests measured.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ThroughDaemonError {
    /// The daemon has no counters for a VM of the benchmark.
    #[error("sockbypassd has no counters for VM `{0}`")]
    NoCounters(&'static str),
    /// A VM's counter shows fewer bytes than its guest sent over the bypass.
    #[error(
        "VM `{vm}`: sockbypassd forwarded {forwarded} payload bytes, but the guests measured \
         {measured} bytes over the bypass: the bypass figures did not go through sockbypassd"
    )]
    Shortfall {
        /// Which VM.
        vm: &'static str,
        /// Its `fwd_bytes` counter over the run.
        forwarded: u64,
        /// What its guest sent over the bypass, from the results.
        measured: u64,
    },
}

/// Sums the bypass bytes of `results` (the client's `SBRESULT` values): an RTT run sends
/// `count × size` bytes each way (its warm-up round trips come on top), a bulk run `bytes`.
pub fn bypass_bytes(plan: &Plan, results: &[Value]) -> BypassBytes {
    let mut sum = BypassBytes::default();
    for r in results {
        if r["addr"].as_str().and_then(|a| plan.path_of(a)) != Some(Path::Bypass) {
            continue;
        }
        let field = |name: &str| r[name].as_u64().unwrap_or(0);
        match r["mode"].as_str() {
            Some("rtt") => {
                let each_way = field("count").saturating_mul(field("size"));
                sum.client = sum.client.saturating_add(each_way);
                sum.server = sum.server.saturating_add(each_way);
            }
            Some("bulk") => sum.client = sum.client.saturating_add(field("bytes")),
            _ => {}
        }
    }
    sum
}

/// Checks the counters (taken over one daemon's life, which is one poll mode's run) against
/// what the guests measured. Returns a one-line summary for the report.
pub fn check(
    measured: BypassBytes,
    client: Option<VmCountersSnapshot>,
    server: Option<VmCountersSnapshot>,
) -> Result<String, ThroughDaemonError> {
    let client = client.ok_or(ThroughDaemonError::NoCounters("client"))?;
    let server = server.ok_or(ThroughDaemonError::NoCounters("server"))?;
    for (vm, counters, bytes) in [
        ("client", &client, measured.client),
        ("server", &server, measured.server),
    ] {
        if counters.fwd_bytes < bytes {
            return Err(ThroughDaemonError::Shortfall {
                vm,
                forwarded: counters.fwd_bytes,
                measured: bytes,
            });
        }
    }
    Ok(format!(
        "through sockbypassd: client VM forwarded {} bytes in {} packets (guests measured {}), \
         server VM {} bytes (guests measured {}); {} RSTs, {} malformed",
        client.fwd_bytes,
        client.fwd_packets,
        measured.client,
        server.fwd_bytes,
        measured.server,
        client.rst_sent + server.rst_sent,
        client.malformed_total() + server.malformed_total(),
    ))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn plan() -> Plan {
        Plan {
            reps: 1,
            rtt_count: 100,
            rtt_size: 64,
            bulk_seconds: 1,
            bulk_write: 65536,
            bypass_addr: "vsock:3:5000".into(),
            tcp_addr: "tcp:10.99.0.3:5001".into(),
        }
    }

    fn results() -> Vec<Value> {
        vec![
            json!({"mode": "rtt", "addr": "vsock:3:5000", "count": 100, "size": 64}),
            json!({"mode": "rtt", "addr": "tcp:10.99.0.3:5001", "count": 100, "size": 64}),
            json!({"mode": "bulk", "addr": "vsock:3:5000", "bytes": 1_000_000}),
            json!({"mode": "bulk", "addr": "tcp:10.99.0.3:5001", "bytes": 9_000_000}),
        ]
    }

    fn forwarded(bytes: u64) -> Option<VmCountersSnapshot> {
        Some(VmCountersSnapshot {
            fwd_bytes: bytes,
            fwd_packets: bytes / 64,
            ..VmCountersSnapshot::default()
        })
    }

    #[test]
    fn only_bypass_results_count() {
        let b = bypass_bytes(&plan(), &results());
        assert_eq!(
            b,
            BypassBytes {
                client: 6_400 + 1_000_000,
                server: 6_400
            }
        );
    }

    #[test]
    fn counters_covering_the_results_pass() {
        let b = bypass_bytes(&plan(), &results());
        let line = check(b, forwarded(1_010_000), forwarded(6_500)).expect("enough bytes");
        assert!(line.contains("1010000 bytes"), "{line}");
    }

    #[test]
    fn a_shortfall_on_either_vm_fails_the_run() {
        let b = bypass_bytes(&plan(), &results());
        assert_eq!(
            check(b, forwarded(1_006_399), forwarded(6_400)),
            Err(ThroughDaemonError::Shortfall {
                vm: "client",
                forwarded: 1_006_399,
                measured: 1_006_400
            })
        );
        assert!(matches!(
            check(b, forwarded(2_000_000), forwarded(0)),
            Err(ThroughDaemonError::Shortfall { vm: "server", .. })
        ));
        assert_eq!(
            check(b, None, forwarded(6_400)),
            Err(ThroughDaemonError::NoCounters("client"))
        );
    }
}
