//! From the client guest's `SBRESULT` lines to per-path figures and ratios. Each repetition
//! gives one RTT summary and one throughput per path; a path's figure is the median over the
//! repetitions (the mean RTT is the mean of the repetitions' means).

use serde_json::{json, Value};
use sockbypass_measure::stats;

use super::plan::{Path, Plan};

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
}

/// Both paths and their ratios.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Figures {
    /// Over the bypass.
    pub bypass: PathFigures,
    /// Over virtio-net.
    pub virtio_net: PathFigures,
}

/// Why the results cannot be summarised.
#[derive(Debug, thiserror::Error)]
pub enum AggregateError {
    /// A measurement failed in the guest.
    #[error("a measurement failed in the guest: {0}")]
    Failed(String),
    /// Some results are missing.
    #[error("expected {expected} results, got {got}")]
    Missing {
        /// Planned.
        expected: usize,
        /// Received.
        got: usize,
    },
}

/// The median (`sockbypass_measure::stats`); NaN when there is none.
fn median(v: &[f64]) -> f64 {
    stats::median(v).unwrap_or(f64::NAN)
}

fn num(v: &Value, key: &str) -> f64 {
    v.get(key).and_then(Value::as_f64).unwrap_or(f64::NAN)
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
    if wanted.len() != plan.expected_results() {
        return Err(AggregateError::Missing {
            expected: plan.expected_results(),
            got: wanted.len(),
        });
    }
    let mut figures = Figures::default();
    for path in [Path::Bypass, Path::VirtioNet] {
        let mine: Vec<&&Value> = wanted
            .iter()
            .filter(|r| r["addr"].as_str().and_then(|a| plan.path_of(a)) == Some(path))
            .collect();
        let rtt: Vec<&&Value> = mine
            .iter()
            .copied()
            .filter(|r| r["mode"] == "rtt")
            .collect();
        let bulk: Vec<&&Value> = mine
            .iter()
            .copied()
            .filter(|r| r["mode"] == "bulk")
            .collect();
        let p50: Vec<f64> = rtt.iter().map(|r| num(r, "p50_us")).collect();
        let p99: Vec<f64> = rtt.iter().map(|r| num(r, "p99_us")).collect();
        let mean: Vec<f64> = rtt.iter().map(|r| num(r, "mean_us")).collect();
        let gbps: Vec<f64> = bulk.iter().map(|r| num(r, "gbps")).collect();
        let f = PathFigures {
            rtt_p50: median(&p50),
            rtt_p99: median(&p99),
            rtt_mean: mean.iter().sum::<f64>() / mean.len().max(1) as f64,
            gbps: median(&gbps),
            verified: bulk.iter().all(|r| r["verified"] == true),
            rtt_p50_reps: p50,
            gbps_reps: gbps,
        };
        match path {
            Path::Bypass => figures.bypass = f,
            Path::VirtioNet => figures.virtio_net = f,
        }
    }
    Ok(figures)
}

impl Figures {
    /// bypass ÷ virtio-net RTT p50 (below 1: the bypass is faster).
    pub fn rtt_ratio(&self) -> f64 {
        self.bypass.rtt_p50 / self.virtio_net.rtt_p50
    }

    /// bypass ÷ virtio-net throughput (above 1: the bypass is faster).
    pub fn gbps_ratio(&self) -> f64 {
        self.bypass.gbps / self.virtio_net.gbps
    }

    /// The first milestone of issue 4: RTT p50 ratio ≤ 0.25 and throughput ratio ≥ 2.
    pub fn milestone_met(&self) -> bool {
        self.rtt_ratio() <= 0.25 && self.gbps_ratio() >= 2.0
    }

    /// The figures as JSON, in the shape `results/latest.json` documents.
    pub fn to_json(&self) -> Value {
        let path = |f: &PathFigures| {
            json!({
                "rtt_us": {"p50": f.rtt_p50, "p99": f.rtt_p99, "mean": f.rtt_mean},
                "gbps": f.gbps,
                "rtt_p50_us_per_rep": f.rtt_p50_reps,
                "gbps_per_rep": f.gbps_reps,
                "bulk_verified": f.verified,
            })
        };
        json!({
            "bypass": path(&self.bypass),
            "virtio_net": path(&self.virtio_net),
            "ratio": {"rtt_p50": self.rtt_ratio(), "gbps": self.gbps_ratio()},
            "milestone": {"rtt_p50_ratio_max": 0.25, "gbps_ratio_min": 2.0, "met": self.milestone_met()},
        })
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

    fn rtt(addr: &str, p50: f64) -> Value {
        json!({"mode":"rtt","addr":addr,"p50_us":p50,"p99_us":p50 * 2.0,"mean_us":p50 + 1.0})
    }

    fn bulk(addr: &str, gbps: f64) -> Value {
        json!({"mode":"bulk","addr":addr,"gbps":gbps,"verified":true})
    }

    #[test]
    fn medians_and_ratios() {
        let p = plan();
        let (v, t) = (p.bypass_addr.clone(), p.tcp_addr.clone());
        let mut results = Vec::new();
        for (a, b, x, y) in [
            (10.0, 100.0, 3.0, 1.0),
            (30.0, 80.0, 1.0, 1.0),
            (20.0, 90.0, 2.0, 0.5),
        ] {
            results.extend([rtt(&v, a), rtt(&t, b), bulk(&v, x), bulk(&t, y)]);
        }
        let f = aggregate(&p, &results).expect("complete");
        assert_eq!(f.bypass.rtt_p50, 20.0);
        assert_eq!(f.virtio_net.rtt_p50, 90.0);
        assert_eq!(f.bypass.rtt_mean, 21.0);
        assert_eq!(f.bypass.gbps, 2.0);
        assert_eq!(f.virtio_net.gbps, 1.0);
        assert!((f.rtt_ratio() - 20.0 / 90.0).abs() < 1e-9);
        assert!(f.milestone_met());
        assert_eq!(f.to_json()["ratio"]["gbps"], 2.0);
    }

    #[test]
    fn a_failed_or_missing_measurement_is_an_error() {
        let p = plan();
        let failed = vec![json!({"mode":"bulk","ok":false,"error":"reset","errno":104})];
        assert!(matches!(
            aggregate(&p, &failed),
            Err(AggregateError::Failed(_))
        ));
        let short = vec![rtt(&p.bypass_addr, 1.0)];
        assert!(matches!(
            aggregate(&p, &short),
            Err(AggregateError::Missing {
                expected: 12,
                got: 1
            })
        ));
    }
}
