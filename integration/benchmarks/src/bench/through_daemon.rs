//! Proof that each path's figures measured that path, from `sockbypassd`'s counters over the
//! run:
//!
//! - **Bypass**: every byte the client guest says it sent over `AF_VSOCK` (and every byte the
//!   server echoed back) must show up in the forwarded-bytes counters (`fwd_bytes`) of the two
//!   VMs. A guest whose vsock traffic went elsewhere (another vsock device, a loopback
//!   transport, a stale daemon) fails the run instead of being reported as the bypass.
//! - **Fast path, host-copied**: every byte of the host-copied measurements must have been
//!   copied by the daemon out of the sender's rings (`fastpath_tx_bytes` of the client for
//!   requests and bulk data, of the server for echoes).
//! - **Fast path, direct**: the direct measurements must not have gone through the daemon's
//!   copier: each VM's `fastpath_tx_bytes` may exceed what the host-copied measurements
//!   account for by at most a small allowance, far below what one direct measurement sends;
//!   and the client's `fastpath_conns` must count every fast-path measurement (so the direct
//!   ones were fast-path connections the daemon set up, not something else).
//!
//! Exact accounting, not just "non-zero": the rings carry only stream bytes (control messages
//! go over the control channel, SPEC.md §13.7), `sbtool` reports exactly what it measured
//! (`count`, `size`, `warmup` of an RTT run; `bytes` written by a bulk run), and what the
//! measurements do not count is small and bounded: the service byte (and its echo) per
//! connection, the bulk receiver's 16-byte summary, the RTT warm-up round trips, and the
//! client's one-byte probe for the fast-path listener ([`super::plan::Plan::wait_for_fastpath`]).
//! Those make up the allowance ([`PER_CONNECTION_ALLOWANCE`], [`FIXED_ALLOWANCE`], warm-ups from
//! the results), while a direct RTT run alone sends `count × size` bytes (128 KiB with the
//! defaults) and a direct bulk run megabytes. So "the direct ones did not add to the counter"
//! can be checked as an upper bound, with no guessing about timing, and a host-copied figure
//! the copier did not carry fails the lower bound.

use serde_json::Value;
use sockbypassd::metrics::{FastPathCountersSnapshot, VmCountersSnapshot};

use super::plan::{Assignment, Path, Plan};

/// Bytes per host-copied fast-path connection that its result does not count, allowed on top
/// of the measured bytes in each direction: the service byte and its echo, the bulk
/// receiver's 16-byte summary, with room to spare.
pub const PER_CONNECTION_ALLOWANCE: u64 = 64;

/// Bytes per run allowed on top of the per-connection allowances in each direction: the
/// client's probes for the fast-path listener (one round trip of one byte each, after the
/// service byte).
pub const FIXED_ALLOWANCE: u64 = 4096;

/// The warm-up round trips of an RTT result that does not say (`sbtool rtt`'s default).
const DEFAULT_WARMUP: u64 = 100;

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
    /// The daemon has no fast-path counters for a VM of the benchmark.
    #[error("sockbypassd has no fast-path counters for VM `{0}` (is its fast path on?)")]
    NoFastPathCounters(&'static str),
    /// A VM's fast-path copy counter shows fewer bytes than its guest sent over host-copied
    /// fast-path connections.
    #[error(
        "VM `{vm}`: sockbypassd copied {copied} bytes out of its fast-path rings, but the \
         guests measured {measured} bytes over the host-copied fast path: the host-copied \
         figures did not go through sockbypassd's copier"
    )]
    FastPathShortfall {
        /// Which VM.
        vm: &'static str,
        /// Its `fastpath_tx_bytes` over the run.
        copied: u64,
        /// What its guest sent over host-copied connections, from the results.
        measured: u64,
    },
    /// A VM's fast-path copy counter shows more than the host-copied measurements account
    /// for: the direct measurements' bytes went through the copier.
    #[error(
        "VM `{vm}`: sockbypassd copied {copied} bytes out of its fast-path rings, more than \
         the {limit} the host-copied measurements account for (the direct ones sent {direct}): \
         the direct figures went through sockbypassd's copier"
    )]
    DirectCopied {
        /// Which VM.
        vm: &'static str,
        /// Its `fastpath_tx_bytes` over the run.
        copied: u64,
        /// The most the host-copied measurements account for.
        limit: u64,
        /// What its guest sent over direct connections, from the results.
        direct: u64,
    },
    /// The client's fast-path connections are fewer than its fast-path measurements.
    #[error(
        "VM `client`: sockbypassd set up {conns} fast-path connections, but the client \
         measured over {measured}"
    )]
    FastPathConns {
        /// The client's `fastpath_conns`.
        conns: u64,
        /// Fast-path results (host-copied and direct).
        measured: u64,
    },
}

/// Sums the bypass bytes of `results` (the client's `SBRESULT` values): an RTT run sends
/// `count × size` bytes each way (its warm-up round trips come on top), a bulk run `bytes`.
/// Results count by [`Plan::path_of_result`]: fast-path results at the bypass address do not.
pub fn bypass_bytes(plan: &Plan, results: &[Value]) -> BypassBytes {
    let mut sum = BypassBytes::default();
    for r in results {
        if plan.path_of_result(r) != Assignment::Path(Path::Bypass) {
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

/// What the guests' results say about the fast path, by sender ([`fastpath_bytes`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FastPathBytes {
    /// Measured over host-copied connections (`count × size` per RTT run each way, `bytes`
    /// per bulk run): the least the daemon must have copied.
    pub host_copied: BypassBytes,
    /// What host-copied connections may carry on top, unmeasured: warm-ups, service bytes,
    /// summaries, the listener probes.
    pub allowance: BypassBytes,
    /// Measured over direct connections: none of it may show in the copy counters.
    pub direct: BypassBytes,
    /// Fast-path results (host-copied and direct): connections the daemon set up.
    pub conns: u64,
}

/// Sums the fast-path bytes of `results` (the client's `SBRESULT` values), as
/// [`bypass_bytes`] does for the bypass, by placement.
pub fn fastpath_bytes(plan: &Plan, results: &[Value]) -> FastPathBytes {
    let mut sum = FastPathBytes {
        allowance: BypassBytes {
            client: FIXED_ALLOWANCE,
            server: FIXED_ALLOWANCE,
        },
        ..FastPathBytes::default()
    };
    let add = |b: &mut BypassBytes, client: u64, server: u64| {
        b.client = b.client.saturating_add(client);
        b.server = b.server.saturating_add(server);
    };
    for r in results {
        let path = match plan.path_of_result(r) {
            Assignment::Path(p) if p.is_fastpath() => p,
            _ => continue,
        };
        let field = |name: &str| r[name].as_u64();
        let (client, server, warmup) = match r["mode"].as_str() {
            Some("rtt") => {
                let size = field("size").unwrap_or(0);
                let each_way = field("count").unwrap_or(0).saturating_mul(size);
                let warmup = field("warmup")
                    .unwrap_or(DEFAULT_WARMUP)
                    .saturating_mul(size);
                (each_way, each_way, warmup)
            }
            Some("bulk") => (field("bytes").unwrap_or(0), 0, 0),
            _ => continue,
        };
        sum.conns += 1;
        if path == Path::FastPathDirect {
            add(&mut sum.direct, client, server);
        } else {
            add(&mut sum.host_copied, client, server);
            let extra = warmup.saturating_add(PER_CONNECTION_ALLOWANCE);
            add(&mut sum.allowance, extra, extra);
        }
    }
    sum
}

/// Checks the fast-path counters (over one daemon's life) against what the guests measured:
/// each VM's `fastpath_tx_bytes` at least its host-copied bytes and at most those plus the
/// allowance (so the direct bytes were not copied), and the client's `fastpath_conns` at
/// least the number of fast-path measurements. Returns a one-line summary for the report.
pub fn check_fastpath(
    measured: FastPathBytes,
    client: Option<FastPathCountersSnapshot>,
    server: Option<FastPathCountersSnapshot>,
) -> Result<String, ThroughDaemonError> {
    let client = client.ok_or(ThroughDaemonError::NoFastPathCounters("client"))?;
    let server = server.ok_or(ThroughDaemonError::NoFastPathCounters("server"))?;
    for (vm, counters, bytes, allowance, direct) in [
        (
            "client",
            &client,
            measured.host_copied.client,
            measured.allowance.client,
            measured.direct.client,
        ),
        (
            "server",
            &server,
            measured.host_copied.server,
            measured.allowance.server,
            measured.direct.server,
        ),
    ] {
        let copied = counters.fastpath_tx_bytes;
        if copied < bytes {
            return Err(ThroughDaemonError::FastPathShortfall {
                vm,
                copied,
                measured: bytes,
            });
        }
        let limit = bytes.saturating_add(allowance);
        if copied > limit {
            return Err(ThroughDaemonError::DirectCopied {
                vm,
                copied,
                limit,
                direct,
            });
        }
    }
    if client.fastpath_conns < measured.conns {
        return Err(ThroughDaemonError::FastPathConns {
            conns: client.fastpath_conns,
            measured: measured.conns,
        });
    }
    Ok(format!(
        "fast path: sockbypassd copied {} bytes out of the client VM's rings (host-copied \
         measurements {}, direct {} not copied), {} out of the server VM's (host-copied {}, \
         direct {}); {} fast-path connections for {} measurements, {} refused, {} broken rings",
        client.fastpath_tx_bytes,
        measured.host_copied.client,
        measured.direct.client,
        server.fastpath_tx_bytes,
        measured.host_copied.server,
        measured.direct.server,
        client.fastpath_conns,
        measured.conns,
        client.fastpath_refused,
        client.fastpath_bad_ring + server.fastpath_bad_ring,
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

    /// One repetition of every path; the fast-path results are at the bypass address.
    fn results() -> Vec<Value> {
        vec![
            json!({"mode": "rtt", "addr": "vsock:3:5000", "path": "vsock", "count": 100, "size": 64}),
            json!({"mode": "rtt", "addr": "tcp:10.99.0.3:5001", "path": "tcp", "count": 100, "size": 64}),
            json!({"mode": "rtt", "addr": "vsock:3:5000", "path": "fastpath_host_copied",
                   "count": 100, "size": 64, "warmup": 10}),
            json!({"mode": "rtt", "addr": "vsock:3:5000", "path": "fastpath_direct",
                   "count": 100, "size": 64, "warmup": 10}),
            json!({"mode": "bulk", "addr": "vsock:3:5000", "path": "vsock", "bytes": 1_000_000}),
            json!({"mode": "bulk", "addr": "tcp:10.99.0.3:5001", "path": "tcp", "bytes": 9_000_000}),
            json!({"mode": "bulk", "addr": "vsock:3:5000", "path": "fastpath_host_copied",
                   "bytes": 3_000_000}),
            json!({"mode": "bulk", "addr": "vsock:3:5000", "path": "fastpath_direct",
                   "bytes": 5_000_000}),
        ]
    }

    fn forwarded(bytes: u64) -> Option<VmCountersSnapshot> {
        Some(VmCountersSnapshot {
            fwd_bytes: bytes,
            fwd_packets: bytes / 64,
            ..VmCountersSnapshot::default()
        })
    }

    fn copied(bytes: u64, conns: u64) -> Option<FastPathCountersSnapshot> {
        Some(FastPathCountersSnapshot {
            fastpath_tx_bytes: bytes,
            fastpath_conns: conns,
            ..FastPathCountersSnapshot::default()
        })
    }

    #[test]
    fn only_bypass_results_count_as_bypass() {
        let b = bypass_bytes(&plan(), &results());
        assert_eq!(
            b,
            BypassBytes {
                client: 6_400 + 1_000_000,
                server: 6_400
            }
        );
        // Results without a "path" count by their address, as before.
        let old: Vec<Value> = results()
            .into_iter()
            .filter(|r| !r["path"].as_str().unwrap_or("").starts_with("fastpath_"))
            .map(|mut r| {
                r.as_object_mut().unwrap().remove("path");
                r
            })
            .collect();
        assert_eq!(bypass_bytes(&plan(), &old), b);
        // A fallback is no bypass measurement either (aggregation rejects it anyway).
        let mut fallback = results();
        fallback[3]["path"] = json!("fastpath_fallback_vsock");
        assert_eq!(bypass_bytes(&plan(), &fallback), b);
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

    #[test]
    fn fastpath_bytes_by_placement() {
        let f = fastpath_bytes(&plan(), &results());
        assert_eq!(
            f.host_copied,
            BypassBytes {
                client: 6_400 + 3_000_000,
                server: 6_400
            }
        );
        assert_eq!(
            f.direct,
            BypassBytes {
                client: 6_400 + 5_000_000,
                server: 6_400
            }
        );
        // Warm-ups (10 × 64) and two connections' allowance on top of the fixed one.
        let each = FIXED_ALLOWANCE + 640 + 2 * PER_CONNECTION_ALLOWANCE;
        assert_eq!(
            f.allowance,
            BypassBytes {
                client: each,
                server: each
            }
        );
        assert_eq!(f.conns, 4);
        // A fallback is no fast-path measurement.
        let mut r = results();
        r[2]["path"] = json!("fastpath_fallback_vsock");
        let f = fastpath_bytes(&plan(), &r);
        assert_eq!(f.host_copied.server, 0);
        assert_eq!(f.conns, 3);
    }

    #[test]
    fn host_copied_bytes_through_the_copier_and_direct_ones_not_pass() {
        let f = fastpath_bytes(&plan(), &results());
        // Exactly what was measured, and the measurement plus every allowance.
        for (client, server) in [
            (3_006_400, 6_400),
            (3_006_400 + f.allowance.client, 6_400 + f.allowance.server),
        ] {
            let line = check_fastpath(f, copied(client, 5), copied(server, 5))
                .expect("host-copied through the copier, direct not");
            assert!(line.contains(&format!("copied {client} bytes")), "{line}");
        }
    }

    #[test]
    fn host_copied_bytes_missing_from_the_copier_fail() {
        let f = fastpath_bytes(&plan(), &results());
        assert_eq!(
            check_fastpath(f, copied(3_006_399, 4), copied(6_400, 4)),
            Err(ThroughDaemonError::FastPathShortfall {
                vm: "client",
                copied: 3_006_399,
                measured: 3_006_400
            })
        );
        // Nothing copied at all: the host-copied results went some other way.
        assert!(matches!(
            check_fastpath(f, copied(0, 4), copied(0, 4)),
            Err(ThroughDaemonError::FastPathShortfall { vm: "client", .. })
        ));
        assert!(matches!(
            check_fastpath(f, copied(3_006_400, 4), copied(6_399, 4)),
            Err(ThroughDaemonError::FastPathShortfall { vm: "server", .. })
        ));
        assert_eq!(
            check_fastpath(f, copied(3_006_400, 4), None),
            Err(ThroughDaemonError::NoFastPathCounters("server"))
        );
    }

    #[test]
    fn direct_bytes_in_the_copier_fail() {
        let f = fastpath_bytes(&plan(), &results());
        // The direct bulk run copied by the daemon as well.
        let limit = 3_006_400 + f.allowance.client;
        assert_eq!(
            check_fastpath(f, copied(3_006_400 + 5_000_000, 4), copied(6_400, 4)),
            Err(ThroughDaemonError::DirectCopied {
                vm: "client",
                copied: 8_006_400,
                limit,
                direct: 5_006_400
            })
        );
        // One byte past the allowance is too much.
        assert!(matches!(
            check_fastpath(f, copied(limit + 1, 4), copied(6_400, 4)),
            Err(ThroughDaemonError::DirectCopied { vm: "client", .. })
        ));
        // The server's direct echoes copied.
        assert!(matches!(
            check_fastpath(f, copied(3_006_400, 4), copied(6_400 + 6_400, 4)),
            Err(ThroughDaemonError::DirectCopied { vm: "server", .. })
        ));
        // The allowance is far below one direct RTT run.
        assert!(f.allowance.server < f.direct.server);
    }

    #[test]
    fn every_fastpath_measurement_needs_a_fastpath_connection() {
        let f = fastpath_bytes(&plan(), &results());
        assert_eq!(
            check_fastpath(f, copied(3_006_400, 3), copied(6_400, 3)),
            Err(ThroughDaemonError::FastPathConns {
                conns: 3,
                measured: 4
            })
        );
    }
}
