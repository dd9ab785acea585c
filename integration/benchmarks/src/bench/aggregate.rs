//! From the client guest's `SBRESULT` lines to per-path figures and ratios. Each repetition
//! gives one RTT summary (64 B messages) and one bulk throughput per path (bypass, virtio-net,
//! fast path host-copied, fast path direct); a path's figure is the median over the
//! repetitions (the mean RTT is the mean of the repetitions' means). Ratios are against
//! virtio-net.
//!
//! Every result must be the planned one, in the planned order ([`Plan::measurements`]): a
//! result belongs to a path as [`Plan::path_of_result`] says, so a fast-path measurement the
//! daemon sent back to plain vsock (`"path": "fastpath_fallback_vsock"`) is an error naming
//! the fast path it was meant to measure, never a bypass figure, and a direct measurement the
//! daemon placed host-copied is an error too.

use serde_json::{json, Value};
use sockbypass_measure::stats;

use super::plan::{Assignment, Path, Plan};

/// One path's figures.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PathFigures {
    /// RTT p50 in µs (median over repetitions).
    pub rtt_p50: f64,
    /// RTT p99 in µs (median over repetitions).
    pub rtt_p99: f64,
    /// RTT mean in µs (mean over repetitions).
    pub rtt_mean: f64,
    /// Bulk throughput in Gb/s (median over repetitions).
    pub gbps: f64,
    /// Per-repetition RTT p50s, in order.
    pub rtt_p50_reps: Vec<f64>,
    /// Per-repetition throughputs, in order.
    pub gbps_reps: Vec<f64>,
    /// Every bulk run was verified by the receiver's checksum.
    pub verified: bool,
    /// CPU while this path's RTT runs ran, % of one core (median over repetitions): the
    /// daemon's and both guests' together; `None` when the host did not measure it.
    pub rtt_cpu: Option<Cpu>,
    /// The same while its bulk runs ran.
    pub bulk_cpu: Option<Cpu>,
}

/// CPU in % of one core.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cpu {
    /// sockbypassd's (the benchmark's process).
    pub daemon: f64,
    /// Both QEMU processes'.
    pub guests: f64,
}

/// The median CPU of `runs` (results the benchmark gave `daemon_cpu_percent` and
/// `guests_cpu_percent`); `None` if any lacks them.
fn cpu_of(runs: &[&Value]) -> Option<Cpu> {
    let take =
        |key: &str| -> Option<Vec<f64>> { runs.iter().map(|r| r.get(key)?.as_f64()).collect() };
    let (d, g) = (take("daemon_cpu_percent")?, take("guests_cpu_percent")?);
    (!d.is_empty()).then(|| Cpu {
        daemon: median(&d),
        guests: median(&g),
    })
}

/// Every path's figures.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Figures {
    /// Over the bypass.
    pub bypass: PathFigures,
    /// Over virtio-net.
    pub virtio_net: PathFigures,
    /// Over the fast path, host-copied placement.
    pub fastpath: PathFigures,
    /// Over the fast path, direct placement.
    pub fastpath_direct: PathFigures,
}

/// A target for one path against virtio-net, reported as met or not (never enforced).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Goal {
    /// The path.
    pub path: Path,
    /// Its RTT p50 ÷ virtio-net's must be at most this.
    pub rtt_p50_ratio_max: f64,
    /// Its throughput ÷ virtio-net's must be at least this.
    pub gbps_ratio_min: f64,
}

/// The fast path's goals under TCG on the benchmark machine (issue 12): host-copied RTT p50
/// ≤ 0.3× virtio-net, direct ≤ 0.05×, bulk ≥ 4× for both.
pub const FASTPATH_GOALS: [Goal; 2] = [
    Goal {
        path: Path::FastPath,
        rtt_p50_ratio_max: 0.3,
        gbps_ratio_min: 4.0,
    },
    Goal {
        path: Path::FastPathDirect,
        rtt_p50_ratio_max: 0.05,
        gbps_ratio_min: 4.0,
    },
];

/// Why the results cannot be summarised.
#[derive(Debug, thiserror::Error)]
pub enum AggregateError {
    /// A measurement failed in the guest.
    #[error("a measurement failed in the guest: {0}")]
    Failed(String),
    /// A fast-path measurement fell back to plain vsock: it measured neither the fast path
    /// nor the bypass.
    #[error(
        "the {mode} measurement of path `{path}` fell back to plain vsock instead of using the \
         fast path (fallback reason: {reason}): {result}"
    )]
    Fallback {
        /// The path the measurement was meant for (by its place in the plan).
        path: &'static str,
        /// `"rtt"` or `"bulk"`.
        mode: String,
        /// The result's `"fallback_reason"`.
        reason: String,
        /// The result line.
        result: String,
    },
    /// Some results are missing.
    #[error("expected {expected} results, got {got}")]
    Missing {
        /// Planned.
        expected: usize,
        /// Received.
        got: usize,
    },
    /// A result is not the measurement planned at its place (another mode, or another path:
    /// e.g. a direct measurement the daemon placed host-copied).
    #[error("result {index} should be the {mode} measurement of path `{path}`, got: {result}")]
    Unplanned {
        /// 0-based, among the RTT and bulk results.
        index: usize,
        /// The planned mode.
        mode: &'static str,
        /// The planned path.
        path: &'static str,
        /// The result line.
        result: String,
    },
}

/// The median (`sockbypass_measure::stats`); NaN when there is none.
fn median(v: &[f64]) -> f64 {
    stats::median(v).unwrap_or(f64::NAN)
}

fn num(v: &Value, key: &str) -> f64 {
    v.get(key).and_then(Value::as_f64).unwrap_or(f64::NAN)
}

/// One path's figures from its RTT and bulk results.
fn path_figures(rtt: &[&Value], bulk: &[&Value]) -> PathFigures {
    let p50: Vec<f64> = rtt.iter().map(|r| num(r, "p50_us")).collect();
    let p99: Vec<f64> = rtt.iter().map(|r| num(r, "p99_us")).collect();
    let mean: Vec<f64> = rtt.iter().map(|r| num(r, "mean_us")).collect();
    let gbps: Vec<f64> = bulk.iter().map(|r| num(r, "gbps")).collect();
    PathFigures {
        rtt_p50: median(&p50),
        rtt_p99: median(&p99),
        rtt_mean: mean.iter().sum::<f64>() / mean.len().max(1) as f64,
        gbps: median(&gbps),
        verified: bulk.iter().all(|r| r["verified"] == true),
        rtt_p50_reps: p50,
        gbps_reps: gbps,
        rtt_cpu: cpu_of(rtt),
        bulk_cpu: cpu_of(bulk),
    }
}

/// Summarises the results of `plan`.
pub fn aggregate(plan: &Plan, results: &[Value]) -> Result<Figures, AggregateError> {
    if let Some(bad) = results.iter().find(|r| {
        r.get("ok") == Some(&Value::Bool(false)) || r.get("error").is_some_and(|e| !e.is_null())
    }) {
        return Err(AggregateError::Failed(bad.to_string()));
    }
    let wanted: Vec<&Value> = results
        .iter()
        .filter(|r| matches!(r["mode"].as_str(), Some("rtt" | "bulk")))
        .collect();
    let planned = plan.measurements();
    // A fallback first, whatever else is wrong: it names the fast path that did not work.
    if let Some((i, r)) = wanted
        .iter()
        .enumerate()
        .find(|(_, r)| plan.path_of_result(r) == Assignment::Fallback)
    {
        return Err(AggregateError::Fallback {
            // A fallback beyond the plan can only have been meant for some fast path.
            path: planned.get(i).map_or("fastpath", |m| m.path.key()),
            mode: r["mode"].as_str().unwrap_or("?").to_owned(),
            reason: match &r["fallback_reason"] {
                Value::String(s) => s.clone(),
                Value::Null => "none given".to_owned(),
                other => other.to_string(),
            },
            result: r.to_string(),
        });
    }
    if wanted.len() != planned.len() {
        return Err(AggregateError::Missing {
            expected: planned.len(),
            got: wanted.len(),
        });
    }
    for (index, (m, r)) in planned.iter().zip(&wanted).enumerate() {
        if r["mode"] != m.mode || plan.path_of_result(r) != Assignment::Path(m.path) {
            return Err(AggregateError::Unplanned {
                index,
                mode: m.mode,
                path: m.path.key(),
                result: r.to_string(),
            });
        }
    }
    let mut figures = Figures::default();
    for path in Path::ALL {
        let of = |mode: &str| -> Vec<&Value> {
            planned
                .iter()
                .zip(&wanted)
                .filter(|(m, _)| m.path == path && m.mode == mode)
                .map(|(_, r)| *r)
                .collect()
        };
        *figures.get_mut(path) = path_figures(&of("rtt"), &of("bulk"));
    }
    Ok(figures)
}

impl Figures {
    /// The figures of `path`.
    pub fn get(&self, path: Path) -> &PathFigures {
        match path {
            Path::Bypass => &self.bypass,
            Path::VirtioNet => &self.virtio_net,
            Path::FastPath => &self.fastpath,
            Path::FastPathDirect => &self.fastpath_direct,
        }
    }

    fn get_mut(&mut self, path: Path) -> &mut PathFigures {
        match path {
            Path::Bypass => &mut self.bypass,
            Path::VirtioNet => &mut self.virtio_net,
            Path::FastPath => &mut self.fastpath,
            Path::FastPathDirect => &mut self.fastpath_direct,
        }
    }

    /// `path` ÷ virtio-net RTT p50 (below 1: `path` is faster).
    pub fn rtt_ratio_of(&self, path: Path) -> f64 {
        self.get(path).rtt_p50 / self.virtio_net.rtt_p50
    }

    /// `path` ÷ virtio-net throughput (above 1: `path` is faster).
    pub fn gbps_ratio_of(&self, path: Path) -> f64 {
        self.get(path).gbps / self.virtio_net.gbps
    }

    /// bypass ÷ virtio-net RTT p50 (below 1: the bypass is faster).
    pub fn rtt_ratio(&self) -> f64 {
        self.rtt_ratio_of(Path::Bypass)
    }

    /// bypass ÷ virtio-net throughput (above 1: the bypass is faster).
    pub fn gbps_ratio(&self) -> f64 {
        self.gbps_ratio_of(Path::Bypass)
    }

    /// The first milestone of issue 4: RTT p50 ratio ≤ 0.25 and throughput ratio ≥ 2.
    pub fn milestone_met(&self) -> bool {
        self.rtt_ratio() <= 0.25 && self.gbps_ratio() >= 2.0
    }

    /// Whether `goal` is met (false when a figure is missing: NaN compares false).
    pub fn goal_met(&self, goal: &Goal) -> bool {
        self.rtt_ratio_of(goal.path) <= goal.rtt_p50_ratio_max
            && self.gbps_ratio_of(goal.path) >= goal.gbps_ratio_min
    }

    /// The figures as JSON, in the shape `results/latest.json` documents: one object per path
    /// (`bypass`, `virtio_net`, `fastpath`, `fastpath_direct`), the ratios against virtio-net,
    /// the bypass milestone and the fast path's goals.
    pub fn to_json(&self) -> Value {
        let path = |f: &PathFigures| {
            json!({
                "rtt_us": {"p50": f.rtt_p50, "p99": f.rtt_p99, "mean": f.rtt_mean},
                "gbps": f.gbps,
                "rtt_p50_us_per_rep": f.rtt_p50_reps,
                "gbps_per_rep": f.gbps_reps,
                "bulk_verified": f.verified,
                "cpu_percent": {
                    "rtt": f.rtt_cpu.map(|c| json!({"daemon": c.daemon, "guests": c.guests})),
                    "bulk": f.bulk_cpu.map(|c| json!({"daemon": c.daemon, "guests": c.guests})),
                },
            })
        };
        let mut doc = serde_json::Map::new();
        for p in Path::ALL {
            doc.insert(p.key().to_owned(), path(self.get(p)));
        }
        let mut ratio = serde_json::Map::new();
        ratio.insert("rtt_p50".into(), json!(self.rtt_ratio()));
        ratio.insert("gbps".into(), json!(self.gbps_ratio()));
        for p in [Path::FastPath, Path::FastPathDirect] {
            ratio.insert(format!("{}_rtt_p50", p.key()), json!(self.rtt_ratio_of(p)));
            ratio.insert(format!("{}_gbps", p.key()), json!(self.gbps_ratio_of(p)));
        }
        doc.insert("ratio".into(), Value::Object(ratio));
        doc.insert(
            "milestone".into(),
            json!({"rtt_p50_ratio_max": 0.25, "gbps_ratio_min": 2.0, "met": self.milestone_met()}),
        );
        let goals: serde_json::Map<String, Value> = FASTPATH_GOALS
            .iter()
            .map(|g| {
                (
                    g.path.key().to_owned(),
                    json!({
                        "rtt_p50_ratio_max": g.rtt_p50_ratio_max,
                        "gbps_ratio_min": g.gbps_ratio_min,
                        "met": self.goal_met(g),
                    }),
                )
            })
            .collect();
        doc.insert("fastpath_goals".into(), Value::Object(goals));
        Value::Object(doc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        Plan {
            reps: 3,
            rtt_count: 10,
            rtt_size: 64,
            bulk_seconds: 1,
            bulk_write: 65536,
            bypass_addr: "vsock:3:5000".into(),
            tcp_addr: "tcp:10.99.0.3:5001".into(),
        }
    }

    /// The `"path"` sbtool reports for a measurement of `path`.
    fn reported(path: Path) -> &'static str {
        match path {
            Path::Bypass => "vsock",
            Path::VirtioNet => "tcp",
            p => p.fastpath_result().expect("a fast path"),
        }
    }

    fn rtt(addr: &str, path: &str, p50: f64) -> Value {
        json!({"mode":"rtt","addr":addr,"path":path,"p50_us":p50,"p99_us":p50 * 2.0,
               "mean_us":p50 + 1.0,"ok":true})
    }

    fn bulk(addr: &str, path: &str, gbps: f64) -> Value {
        json!({"mode":"bulk","addr":addr,"path":path,"gbps":gbps,"verified":true,"ok":true})
    }

    /// Per repetition and path (in [`Path::ALL`] order): RTT p50 and Gb/s.
    const FIGURES: [[(f64, f64); 4]; 3] = [
        [(10.0, 3.0), (100.0, 1.0), (20.0, 4.0), (4.0, 8.0)],
        [(30.0, 1.0), (80.0, 1.0), (30.0, 5.0), (3.0, 6.0)],
        [(20.0, 2.0), (90.0, 0.5), (25.0, 4.5), (5.0, 7.0)],
    ];

    /// The results of the whole plan, in the planned order, from [`FIGURES`].
    fn results(p: &Plan) -> Vec<Value> {
        let per_rep = 2 * Path::ALL.len();
        p.measurements()
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let column = Path::ALL.iter().position(|x| *x == m.path).unwrap();
                let (p50, gbps) = FIGURES[i / per_rep][column];
                let (addr, path) = (p.addr(m.path), reported(m.path));
                match m.mode {
                    "rtt" => rtt(addr, path, p50),
                    _ => bulk(addr, path, gbps),
                }
            })
            .collect()
    }

    /// The index in [`results`] of the `mode` measurement of `path` in repetition `rep`.
    fn index_of(p: &Plan, rep: usize, mode: &str, path: Path) -> usize {
        p.measurements()
            .iter()
            .enumerate()
            .filter(|(_, m)| m.mode == mode && m.path == path)
            .nth(rep)
            .map(|(i, _)| i)
            .unwrap()
    }

    #[test]
    fn cpu_per_path_is_the_median_of_its_runs_and_absent_when_one_lacks_it() {
        let p = plan();
        let mut all = results(&p);
        let f = aggregate(&p, &all).expect("complete");
        assert_eq!(f.fastpath.rtt_cpu, None, "no CPU measured, none reported");
        for (i, r) in all.iter_mut().enumerate() {
            r["daemon_cpu_percent"] = json!(i as f64);
            r["guests_cpu_percent"] = json!(100.0 + i as f64);
        }
        let f = aggregate(&p, &all).expect("complete");
        let runs: Vec<f64> = (0..3)
            .map(|rep| index_of(&p, rep, "bulk", Path::FastPathDirect) as f64)
            .collect();
        let want = median(&runs);
        assert_eq!(
            f.fastpath_direct.bulk_cpu,
            Some(Cpu {
                daemon: want,
                guests: 100.0 + want
            })
        );
        let one = index_of(&p, 1, "rtt", Path::Bypass);
        all[one]
            .as_object_mut()
            .expect("object")
            .remove("daemon_cpu_percent");
        let f = aggregate(&p, &all).expect("complete");
        assert_eq!(f.bypass.rtt_cpu, None);
        assert!(f.bypass.bulk_cpu.is_some());
        assert_eq!(
            f.to_json()["fastpath_direct"]["cpu_percent"]["bulk"]["daemon"],
            json!(want)
        );
    }

    #[test]
    fn medians_and_ratios_of_every_path() {
        let p = plan();
        let f = aggregate(&p, &results(&p)).expect("complete");
        assert_eq!(f.bypass.rtt_p50, 20.0);
        assert_eq!(f.virtio_net.rtt_p50, 90.0);
        assert_eq!(f.fastpath.rtt_p50, 25.0);
        assert_eq!(f.fastpath_direct.rtt_p50, 4.0);
        assert_eq!(f.bypass.rtt_mean, 21.0);
        assert_eq!(f.fastpath_direct.rtt_p99, 8.0);
        assert_eq!(f.bypass.gbps, 2.0);
        assert_eq!(f.virtio_net.gbps, 1.0);
        assert_eq!(f.fastpath.gbps, 4.5);
        assert_eq!(f.fastpath_direct.gbps, 7.0);
        // Per-repetition figures in repetition order, whatever the order within each.
        assert_eq!(f.fastpath.rtt_p50_reps, [20.0, 30.0, 25.0]);
        assert_eq!(f.fastpath_direct.gbps_reps, [8.0, 6.0, 7.0]);
        assert!(f.fastpath.verified && f.fastpath_direct.verified);
        assert!((f.rtt_ratio() - 20.0 / 90.0).abs() < 1e-9);
        assert!((f.rtt_ratio_of(Path::FastPath) - 25.0 / 90.0).abs() < 1e-9);
        assert_eq!(f.gbps_ratio_of(Path::FastPathDirect), 7.0);
        assert!(f.milestone_met());
        // Host-copied: 0.28 ≤ 0.3 and 4.5 ≥ 4; direct: 0.044 ≤ 0.05 and 7 ≥ 4.
        assert!(f.goal_met(&FASTPATH_GOALS[0]) && f.goal_met(&FASTPATH_GOALS[1]));
    }

    #[test]
    fn goals_fail_on_either_ratio() {
        let p = plan();
        let mut r = results(&p);
        // Direct RTT p50 of 5 µs in one more repetition: median 5 / 90 > 0.05.
        r[index_of(&p, 1, "rtt", Path::FastPathDirect)] =
            rtt("vsock:3:5000", "fastpath_direct", 5.0);
        let f = aggregate(&p, &r).expect("complete");
        assert!(f.goal_met(&FASTPATH_GOALS[0]));
        assert!(!f.goal_met(&FASTPATH_GOALS[1]));
        // Host-copied bulk at 3.9× virtio-net.
        let mut r = results(&p);
        for rep in 0..3 {
            r[index_of(&p, rep, "bulk", Path::FastPath)] =
                bulk("vsock:3:5000", "fastpath_host_copied", 3.9);
        }
        let f = aggregate(&p, &r).expect("complete");
        assert!(!f.goal_met(&FASTPATH_GOALS[0]));
        assert!(f.goal_met(&FASTPATH_GOALS[1]));
        assert_eq!(f.to_json()["fastpath_goals"]["fastpath"]["met"], false);
        assert_eq!(
            f.to_json()["fastpath_goals"]["fastpath_direct"]["met"],
            true
        );
        // No figures at all: nothing is met.
        let none = Figures::default();
        assert!(!none.goal_met(&FASTPATH_GOALS[0]) && !none.milestone_met());
    }

    #[test]
    fn json_has_every_path_and_ratio() {
        let p = plan();
        let v = aggregate(&p, &results(&p)).expect("complete").to_json();
        for key in ["bypass", "virtio_net", "fastpath", "fastpath_direct"] {
            for field in [
                "rtt_us",
                "gbps",
                "rtt_p50_us_per_rep",
                "gbps_per_rep",
                "bulk_verified",
            ] {
                assert!(v[key].get(field).is_some(), "{key}.{field} in {v}");
            }
            assert!(v[key]["rtt_us"]["p99"].is_number(), "{key}");
        }
        assert_eq!(v["fastpath"]["gbps"], 4.5);
        assert_eq!(v["fastpath_direct"]["rtt_us"]["p50"], 4.0);
        let ratio = v["ratio"].as_object().expect("ratios");
        let mut keys: Vec<&str> = ratio.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "fastpath_direct_gbps",
                "fastpath_direct_rtt_p50",
                "fastpath_gbps",
                "fastpath_rtt_p50",
                "gbps",
                "rtt_p50"
            ]
        );
        assert_eq!(v["ratio"]["gbps"], 2.0);
        assert_eq!(v["ratio"]["fastpath_gbps"], 4.5);
        assert_eq!(v["ratio"]["fastpath_direct_gbps"], 7.0);
        let r = v["ratio"]["fastpath_rtt_p50"].as_f64().unwrap();
        assert!((r - 25.0 / 90.0).abs() < 1e-9);
        let r = v["ratio"]["fastpath_direct_rtt_p50"].as_f64().unwrap();
        assert!((r - 4.0 / 90.0).abs() < 1e-9);
        assert_eq!(v["milestone"]["met"], true);
        assert_eq!(v["fastpath_goals"]["fastpath"]["rtt_p50_ratio_max"], 0.3);
        assert_eq!(
            v["fastpath_goals"]["fastpath_direct"]["rtt_p50_ratio_max"],
            0.05
        );
        assert_eq!(
            v["fastpath_goals"]["fastpath_direct"]["gbps_ratio_min"],
            4.0
        );
    }

    #[test]
    fn a_failed_or_missing_measurement_is_an_error() {
        let p = plan();
        let failed = vec![json!({"mode":"bulk","ok":false,"error":"reset","errno":104})];
        assert!(matches!(
            aggregate(&p, &failed),
            Err(AggregateError::Failed(_))
        ));
        let short = vec![rtt(&p.bypass_addr, "vsock", 1.0)];
        assert!(matches!(
            aggregate(&p, &short),
            Err(AggregateError::Missing {
                expected: 24,
                got: 1
            })
        ));
        let mut one_short = results(&p);
        one_short.pop();
        assert!(matches!(
            aggregate(&p, &one_short),
            Err(AggregateError::Missing {
                expected: 24,
                got: 23
            })
        ));
    }

    #[test]
    fn a_fallback_is_an_error_naming_the_fast_path() {
        let p = plan();
        for (path, mode) in [(Path::FastPathDirect, "bulk"), (Path::FastPath, "rtt")] {
            let mut r = results(&p);
            let i = index_of(&p, 2, mode, path);
            let mut fell_back = r[i].clone();
            fell_back["path"] = json!("fastpath_fallback_vsock");
            fell_back["fallback_reason"] = json!("NoPairWindow");
            r[i] = fell_back;
            match aggregate(&p, &r) {
                Err(e @ AggregateError::Fallback { .. }) => {
                    let text = e.to_string();
                    assert!(text.contains(&format!("path `{}`", path.key())), "{text}");
                    assert!(
                        text.contains("NoPairWindow") && text.contains(mode),
                        "{text}"
                    );
                }
                other => panic!("{path:?} {mode}: {other:?}"),
            }
        }
        // A fallback without a reason, and results missing besides: still the fallback.
        let mut r = results(&p);
        let i = index_of(&p, 0, "rtt", Path::FastPath);
        r[i]["path"] = json!("fastpath_fallback_vsock");
        r.truncate(i + 1);
        assert!(matches!(
            aggregate(&p, &r),
            Err(AggregateError::Fallback {
                path: "fastpath",
                ..
            })
        ));
    }

    #[test]
    fn a_result_of_another_path_than_planned_is_an_error() {
        let p = plan();
        // A direct measurement the daemon placed host-copied.
        let mut r = results(&p);
        let i = index_of(&p, 1, "rtt", Path::FastPathDirect);
        r[i]["path"] = json!("fastpath_host_copied");
        assert!(matches!(
            aggregate(&p, &r),
            Err(AggregateError::Unplanned {
                path: "fastpath_direct",
                mode: "rtt",
                ..
            })
        ));
        // A fast-path result without a "path" (an sbtool without --fastpath support) goes by
        // its address, to the bypass: not where the plan has it.
        let mut r = results(&p);
        let i = index_of(&p, 0, "bulk", Path::FastPath);
        r[i].as_object_mut().unwrap().remove("path");
        assert!(matches!(
            aggregate(&p, &r),
            Err(AggregateError::Unplanned {
                path: "fastpath",
                mode: "bulk",
                ..
            })
        ));
        // Bypass results without a "path" still count, by their address.
        let mut r = results(&p);
        for rep in 0..3 {
            for mode in ["rtt", "bulk"] {
                let i = index_of(&p, rep, mode, Path::Bypass);
                r[i].as_object_mut().unwrap().remove("path");
            }
        }
        assert_eq!(aggregate(&p, &r).expect("complete").bypass.gbps, 2.0);
    }
}
