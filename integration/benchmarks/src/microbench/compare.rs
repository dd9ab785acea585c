//! The A/B comparison `ci/perf-gate.sh --ab` reports: the relative change of the mean from A
//! to B, and a two-sided permutation test of the difference of means.

use rand::seq::SliceRandom;
use rand::SeedableRng;

/// Permutations drawn for the p-value.
const PERMUTATIONS: u32 = 20_000;

/// The outcome of comparing samples A with samples B.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Comparison {
    /// Mean of A.
    pub mean_a: f64,
    /// Mean of B.
    pub mean_b: f64,
    /// (mean B − mean A) ÷ mean A.
    pub change: f64,
    /// Share of random relabellings with a difference of means at least as large, in absolute
    /// value, as the one observed (with the usual +1 correction, so never 0).
    pub p_value: f64,
}

impl Comparison {
    /// Whether the change is significant (p < `alpha`) and larger than `threshold` (a share).
    pub fn flagged(&self, alpha: f64, threshold: f64) -> bool {
        self.p_value < alpha && self.change.abs() > threshold
    }
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// Compares `a` with `b`; `None` if either is empty. The permutations come from a fixed seed,
/// so the same samples always give the same p-value.
pub fn compare(a: &[f64], b: &[f64]) -> Option<Comparison> {
    if a.is_empty() || b.is_empty() {
        return None;
    }
    let (mean_a, mean_b) = (mean(a), mean(b));
    let observed = (mean_b - mean_a).abs();
    let mut pool: Vec<f64> = a.iter().chain(b).copied().collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5b_ab);
    let mut extreme = 0u32;
    for _ in 0..PERMUTATIONS {
        pool.shuffle(&mut rng);
        let (pa, pb) = pool.split_at(a.len());
        // A tiny tolerance so that ties from rounding count as "as large".
        if (mean(pb) - mean(pa)).abs() >= observed - 1e-12 * observed.abs() {
            extreme += 1;
        }
    }
    Some(Comparison {
        mean_a,
        mean_b,
        change: (mean_b - mean_a) / mean_a,
        p_value: f64::from(extreme + 1) / f64::from(PERMUTATIONS + 1),
    })
}

/// Reads one number per line (blank lines ignored).
pub fn parse_samples(text: &str) -> Result<Vec<f64>, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| l.parse::<f64>().map_err(|e| format!("{l:?}: {e}")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clear_shift_is_significant() {
        let a: Vec<f64> = (0..10).map(|i| 100.0 + f64::from(i % 3)).collect();
        let b: Vec<f64> = (0..10).map(|i| 110.0 + f64::from(i % 3)).collect();
        let c = compare(&a, &b).expect("samples");
        assert!((c.change - 0.1).abs() < 0.01, "{c:?}");
        assert!(c.p_value < 0.01, "{c:?}");
        assert!(c.flagged(0.01, 0.05));
    }

    #[test]
    fn noise_alone_is_not() {
        // The same values in both, interleaved: no difference at all.
        let a = [
            100.0, 104.0, 98.0, 101.0, 103.0, 99.0, 102.0, 97.0, 100.0, 105.0,
        ];
        let b = [
            101.0, 99.0, 103.0, 100.0, 98.0, 104.0, 97.0, 102.0, 105.0, 100.0,
        ];
        let c = compare(&a, &b).expect("samples");
        assert!(c.p_value > 0.5, "{c:?}");
        assert!(!c.flagged(0.01, 0.05));
    }

    #[test]
    fn samples_parse_or_name_the_bad_line() {
        assert_eq!(parse_samples("1\n\n 2.5 \n"), Ok(vec![1.0, 2.5]));
        assert!(parse_samples("1\nx\n").unwrap_err().contains("\"x\""));
        assert!(compare(&[], &[1.0]).is_none());
    }
}
