//! The measurement plan the client guest runs: for each repetition, RTT and bulk over four
//! paths to the server guest,
//!
//! - the bypass (`AF_VSOCK` through `sockbypassd`'s virtqueues),
//! - virtio-net (TCP across the bridge),
//! - the fast path with host-copied placement (SPEC.md §13: per-connection rings in each VM's
//!   own window, copied by `sockbypassd`),
//! - the fast path with direct placement (the rings in the pair window both guests map; the
//!   daemon copies nothing),
//!
//! with the order of the paths rotating between repetitions so that no path always goes first
//! (over four repetitions each path is measured once in each position).
//!
//! Both fast-path lines use the bypass address (`vsock:CID:PORT`) with `--fastpath` and
//! `--placement`; which path a result belongs to is decided by [`Plan::path_of_result`].

use serde_json::Value;
use sockbypass_guests::sbtool::wait_for_server;

/// One way from the client guest to the server guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Path {
    /// `AF_VSOCK` through `sockbypassd`.
    Bypass,
    /// TCP over virtio-net, taps and a Linux bridge.
    VirtioNet,
    /// The fast path, host-copied placement: `sockbypassd` copies between the two VMs' own
    /// windows.
    FastPath,
    /// The fast path, direct placement: both guests use rings in their pair window.
    FastPathDirect,
}

/// What `sbtool` reports as `"path"` for a fast-path connection the daemon sent back to plain
/// vsock: a failed fast-path measurement.
pub const FALLBACK_PATH: &str = "fastpath_fallback_vsock";

impl Path {
    /// Every path, in the order of the first repetition and of the reports.
    pub const ALL: [Path; 4] = [
        Path::Bypass,
        Path::VirtioNet,
        Path::FastPath,
        Path::FastPathDirect,
    ];

    /// The key used in the JSON report.
    pub fn key(self) -> &'static str {
        match self {
            Path::Bypass => "bypass",
            Path::VirtioNet => "virtio_net",
            Path::FastPath => "fastpath",
            Path::FastPathDirect => "fastpath_direct",
        }
    }

    /// The `--placement` a fast-path measurement asks the daemon for; `None` for the others.
    pub fn placement(self) -> Option<&'static str> {
        match self {
            Path::FastPath => Some("host-copied"),
            Path::FastPathDirect => Some("direct"),
            Path::Bypass | Path::VirtioNet => None,
        }
    }

    /// The `"path"` a successful fast-path result of this path reports; `None` for the paths
    /// that are told apart by their address.
    pub fn fastpath_result(self) -> Option<&'static str> {
        match self {
            Path::FastPath => Some("fastpath_host_copied"),
            Path::FastPathDirect => Some("fastpath_direct"),
            Path::Bypass | Path::VirtioNet => None,
        }
    }

    /// Whether this is one of the fast-path placements.
    pub fn is_fastpath(self) -> bool {
        self.placement().is_some()
    }
}

/// Which path a result belongs to ([`Plan::path_of_result`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Assignment {
    /// A measurement of this path.
    Path(Path),
    /// A fast-path measurement the daemon sent back to plain vsock
    /// (`"path": "fastpath_fallback_vsock"`): it measured neither the fast path nor, as
    /// planned, the bypass.
    Fallback,
    /// Neither a known fast-path `"path"` nor a known address.
    Unknown,
}

/// One `sbtool` measurement of the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Measurement {
    /// `"rtt"` or `"bulk"`, as the result's `"mode"` says.
    pub mode: &'static str,
    /// The path it measures.
    pub path: Path,
}

/// Benchmark parameters.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Repetitions (each measures every path).
    pub reps: u32,
    /// Round trips per RTT measurement.
    pub rtt_count: u32,
    /// Message size for RTT.
    pub rtt_size: u32,
    /// Seconds per bulk measurement.
    pub bulk_seconds: u32,
    /// Write size for bulk.
    pub bulk_write: u32,
    /// The server's `sbtool` address over the bypass (and, with `--fastpath`, over the fast
    /// path).
    pub bypass_addr: String,
    /// The server's `sbtool` address over virtio-net.
    pub tcp_addr: String,
}

impl Plan {
    /// The address of `path`: the fast path is reached at the bypass address.
    pub fn addr(&self, path: Path) -> &str {
        match path {
            Path::Bypass | Path::FastPath | Path::FastPathDirect => &self.bypass_addr,
            Path::VirtioNet => &self.tcp_addr,
        }
    }

    /// Which of the address-told paths (bypass, virtio-net) an `sbtool` result's `addr`
    /// belongs to.
    pub fn path_of(&self, addr: &str) -> Option<Path> {
        [Path::Bypass, Path::VirtioNet]
            .into_iter()
            .find(|p| self.addr(*p) == addr)
    }

    /// Which path the `sbtool` result `r` belongs to: by its `"path"` when that starts with
    /// `fastpath_` (the fast path's placements, or a fallback to vsock), else by its `"addr"`
    /// as for results without a `"path"`.
    pub fn path_of_result(&self, r: &Value) -> Assignment {
        if let Some(p) = r["path"].as_str().filter(|p| p.starts_with("fastpath_")) {
            if p == FALLBACK_PATH {
                return Assignment::Fallback;
            }
            return Path::ALL
                .into_iter()
                .find(|path| path.fastpath_result() == Some(p))
                .map_or(Assignment::Unknown, Assignment::Path);
        }
        r["addr"]
            .as_str()
            .and_then(|a| self.path_of(a))
            .map_or(Assignment::Unknown, Assignment::Path)
    }

    /// The order of the paths in repetition `rep` (0-based): [`Path::ALL`] rotated left by
    /// `rep`, so that every path comes first (and in every other position) once in four
    /// repetitions.
    pub fn order(rep: u32) -> [Path; 4] {
        let mut order = Path::ALL;
        order.rotate_left(rep as usize % Path::ALL.len());
        order
    }

    /// The `sbtool` options after the address that select `path`.
    fn path_options(path: Path) -> String {
        path.placement()
            .map_or(String::new(), |p| format!(" --fastpath --placement {p}"))
    }

    /// Every measurement in the order the client runs them: per repetition the RTTs of all
    /// paths, then the bulk runs, both in [`Plan::order`].
    pub fn measurements(&self) -> Vec<Measurement> {
        let mut all = Vec::with_capacity(self.expected_results());
        for rep in 0..self.reps {
            for mode in ["rtt", "bulk"] {
                all.extend(Plan::order(rep).map(|path| Measurement { mode, path }));
            }
        }
        all
    }

    /// A guest shell line that waits until the server's fast-path listener is in effect: the
    /// plain vsock listener comes up first, and a fast-path connection made before the
    /// listener is would fall back to vsock (`"path":"fastpath_fallback_vsock"`). The probe
    /// (one host-copied round trip of one byte, its result line only searched for
    /// `fastpath_host_copied`, never printed) is within [`super::through_daemon`]'s allowance.
    pub fn wait_for_fastpath(&self) -> String {
        format!(
            "i=0; until sbtool rtt {} --size 1 --count 1 --warmup 0 --fastpath --placement \
             host-copied 2>/dev/null | grep -q fastpath_host_copied; do \
             i=$((i+1)); [ $i -gt 600 ] && exit 9; sleep 0.2; done\n",
            self.bypass_addr
        )
    }

    /// The shell script for the client guest: wait for both servers and the fast-path
    /// listener, then every measurement.
    pub fn client_script(&self) -> String {
        let mut s = String::new();
        for addr in [&self.bypass_addr, &self.tcp_addr] {
            s.push_str(&wait_for_server(addr));
        }
        s.push_str(&self.wait_for_fastpath());
        for m in self.measurements() {
            let addr = self.addr(m.path);
            let options = Plan::path_options(m.path);
            s.push_str(&match m.mode {
                "rtt" => format!(
                    "sbtool rtt {addr} --size {} --count {}{options}\n",
                    self.rtt_size, self.rtt_count
                ),
                _ => format!(
                    "sbtool bulk {addr} --seconds {} --write-size {}{options}\n",
                    self.bulk_seconds, self.bulk_write
                ),
            });
        }
        s
    }

    /// How many `SBRESULT` lines the client prints when all goes well: an RTT and a bulk run
    /// per path and repetition.
    pub fn expected_results(&self) -> usize {
        2 * Path::ALL.len() * self.reps as usize
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn plan() -> Plan {
        Plan {
            reps: 4,
            rtt_count: 2000,
            rtt_size: 64,
            bulk_seconds: 10,
            bulk_write: 65536,
            bypass_addr: "vsock:3:5000".into(),
            tcp_addr: "tcp:10.99.0.3:5001".into(),
        }
    }

    /// The path an `sbtool` line measures, from its arguments alone.
    fn path_of_line(line: &str) -> Path {
        match (
            line.contains("tcp:10.99.0.3:5001"),
            line.contains("--placement host-copied"),
            line.contains("--placement direct"),
        ) {
            (true, false, false) => Path::VirtioNet,
            (false, true, false) => Path::FastPath,
            (false, false, true) => Path::FastPathDirect,
            (false, false, false) => Path::Bypass,
            _ => panic!("ambiguous line: {line}"),
        }
    }

    fn lines<'a>(script: &'a str, prefix: &str) -> Vec<&'a str> {
        script.lines().filter(|l| l.starts_with(prefix)).collect()
    }

    #[test]
    fn every_measurement_is_planned_with_its_options() {
        let p = plan();
        let script = p.client_script();
        let rtt = lines(&script, "sbtool rtt");
        let bulk = lines(&script, "sbtool bulk");
        assert_eq!((rtt.len(), bulk.len()), (16, 16));
        assert_eq!(p.expected_results(), 32);
        assert_eq!(p.measurements().len(), 32);
        assert_eq!(
            rtt[0], "sbtool rtt vsock:3:5000 --size 64 --count 2000",
            "repetition 0 starts with the bypass"
        );
        assert!(rtt.contains(
            &"sbtool rtt vsock:3:5000 --size 64 --count 2000 --fastpath --placement host-copied"
        ));
        assert!(rtt.contains(
            &"sbtool rtt vsock:3:5000 --size 64 --count 2000 --fastpath --placement direct"
        ));
        assert!(bulk.contains(
            &"sbtool bulk vsock:3:5000 --seconds 10 --write-size 65536 --fastpath --placement direct"
        ));
        assert!(bulk.contains(&"sbtool bulk tcp:10.99.0.3:5001 --seconds 10 --write-size 65536"));
        // --fastpath never goes to the TCP address.
        assert!(!script
            .lines()
            .any(|l| l.contains("tcp:") && l.contains("--fastpath")));
        // The script's lines are the planned measurements, in order.
        let planned: Vec<(&str, Path)> = script
            .lines()
            .filter(|l| l.starts_with("sbtool rtt") || l.starts_with("sbtool bulk"))
            .map(|l| {
                (
                    if l.starts_with("sbtool rtt") {
                        "rtt"
                    } else {
                        "bulk"
                    },
                    path_of_line(l),
                )
            })
            .collect();
        let measurements: Vec<(&str, Path)> =
            p.measurements().iter().map(|m| (m.mode, m.path)).collect();
        assert_eq!(planned, measurements);
    }

    #[test]
    fn the_order_rotates_through_all_four_paths() {
        let p = plan();
        let script = p.client_script();
        for prefix in ["sbtool rtt", "sbtool bulk"] {
            let paths: Vec<Path> = lines(&script, prefix)
                .into_iter()
                .map(path_of_line)
                .collect();
            let reps: Vec<&[Path]> = paths.chunks(4).collect();
            assert_eq!(reps.len(), 4);
            for rep in &reps {
                // Every path once per repetition.
                for path in Path::ALL {
                    assert_eq!(rep.iter().filter(|p| **p == path).count(), 1, "{rep:?}");
                }
            }
            // Over four repetitions, every path once in every position.
            for position in 0..4 {
                let at: Vec<Path> = reps.iter().map(|r| r[position]).collect();
                for path in Path::ALL {
                    assert_eq!(
                        at.iter().filter(|p| **p == path).count(),
                        1,
                        "position {position}: {at:?}"
                    );
                }
            }
        }
        // The rotation goes on past four repetitions.
        assert_eq!(Plan::order(4), Plan::order(0));
        assert_ne!(Plan::order(1)[0], Plan::order(0)[0]);
    }

    #[test]
    fn the_client_waits_for_the_fast_path_before_measuring() {
        let script = plan().client_script();
        let wait = script
            .lines()
            .position(|l| l.contains("--fastpath --placement host-copied 2>/dev/null"))
            .expect("a fast-path wait");
        let first = script
            .lines()
            .position(|l| l.starts_with("sbtool "))
            .expect("measurements");
        assert!(wait < first);
        assert!(script
            .lines()
            .nth(wait)
            .is_some_and(|l| l.contains("exit 9")));
    }

    #[test]
    fn results_belong_to_a_path_by_their_fastpath_path_else_by_addr() {
        let p = plan();
        let r = |v: Value| p.path_of_result(&v);
        assert_eq!(
            r(json!({"addr": "vsock:3:5000", "path": "fastpath_host_copied"})),
            Assignment::Path(Path::FastPath)
        );
        assert_eq!(
            r(json!({"addr": "vsock:3:5000", "path": "fastpath_direct"})),
            Assignment::Path(Path::FastPathDirect)
        );
        assert_eq!(
            r(json!({"addr": "vsock:3:5000", "path": "fastpath_fallback_vsock"})),
            Assignment::Fallback
        );
        assert_eq!(
            r(json!({"addr": "vsock:3:5000", "path": "fastpath_teleport"})),
            Assignment::Unknown
        );
        // Not a fast-path "path": the address decides, as for results without one.
        assert_eq!(
            r(json!({"addr": "vsock:3:5000", "path": "vsock"})),
            Assignment::Path(Path::Bypass)
        );
        assert_eq!(
            r(json!({"addr": "vsock:3:5000"})),
            Assignment::Path(Path::Bypass)
        );
        assert_eq!(
            r(json!({"addr": "tcp:10.99.0.3:5001", "path": "tcp"})),
            Assignment::Path(Path::VirtioNet)
        );
        assert_eq!(r(json!({"addr": "vsock:9:1"})), Assignment::Unknown);
        assert_eq!(p.path_of("tcp:10.99.0.3:5001"), Some(Path::VirtioNet));
        assert_eq!(p.path_of("vsock:9:1"), None);
    }

    #[test]
    fn keys_and_placements() {
        let keys: Vec<&str> = Path::ALL.iter().map(|p| p.key()).collect();
        assert_eq!(
            keys,
            ["bypass", "virtio_net", "fastpath", "fastpath_direct"]
        );
        assert_eq!(Path::FastPath.placement(), Some("host-copied"));
        assert_eq!(Path::FastPathDirect.placement(), Some("direct"));
        assert!(!Path::Bypass.is_fastpath() && !Path::VirtioNet.is_fastpath());
    }
}
