//! The A/B comparison `ci/perf-gate.sh --ab` reports. Its rounds are paired (each round runs A
//! and B back to back, in alternating order), so the test works on the per-round differences
//! B − A: a two-sided sign-flip permutation test of their mean. Pairing removes the drift a
//! shared machine shows between rounds, which an unpaired test would count as noise.

use rand::{Rng, SeedableRng};

/// Up to this many pairs, every one of the 2^n sign assignments is tried (an exact p-value);
/// above, [`RANDOM_FLIPS`] random ones.
const EXACT_UP_TO: usize = 16;
/// Random sign assignments drawn when there are more pairs than [`EXACT_UP_TO`].
const RANDOM_FLIPS: u32 = 50_000;

/// The outcome of comparing paired samples A with B.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Comparison {
    /// Mean of A.
    pub mean_a: f64,
    /// Mean of B.
    pub mean_b: f64,
    /// (mean B − mean A) ÷ mean A.
    pub change: f64,
    /// Share of sign assignments of the differences whose mean is at least as large, in
    /// absolute value, as the one observed (the observed assignment included, so never 0).
    pub p_value: f64,
}

impl Comparison {
    /// Whether the change is significant (p < `alpha`) and larger than `threshold` (a share).
    pub fn flagged(&self, alpha: f64, threshold: f64) -> bool {
        self.p_value < alpha && self.change.abs() > threshold
    }
}

/// Why two sample lists cannot be compared.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompareError {
    /// No samples.
    #[error("no samples to compare")]
    Empty,
    /// The rounds do not pair up.
    #[error("A has {a} samples and B has {b}: paired rounds need as many of each")]
    Unpaired {
        /// Samples of A.
        a: usize,
        /// Samples of B.
        b: usize,
    },
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// Whether the mean of `diffs`, each negated where `flip(i)` says so, is at least `observed`
/// in absolute value (a tiny tolerance lets ties from rounding count).
fn as_extreme(diffs: &[f64], observed: f64, flip: impl Fn(usize) -> bool) -> bool {
    let sum: f64 = diffs
        .iter()
        .enumerate()
        .map(|(i, d)| if flip(i) { -d } else { *d })
        .sum();
    (sum / diffs.len() as f64).abs() >= observed - 1e-12 * observed
}

/// Compares round `i` of `a` with round `i` of `b`. Exact for up to [`EXACT_UP_TO`] rounds;
/// above, random flips from a fixed seed, so the same samples always give the same p-value.
pub fn compare(a: &[f64], b: &[f64]) -> Result<Comparison, CompareError> {
    if a.len() != b.len() {
        return Err(CompareError::Unpaired {
            a: a.len(),
            b: b.len(),
        });
    }
    if a.is_empty() {
        return Err(CompareError::Empty);
    }
    let diffs: Vec<f64> = a.iter().zip(b).map(|(x, y)| y - x).collect();
    let observed = mean(&diffs).abs();
    let (extreme, tried) = if diffs.len() <= EXACT_UP_TO {
        let all = 1u32 << diffs.len();
        let hits = (0..all)
            .filter(|mask| as_extreme(&diffs, observed, |i| mask >> i & 1 == 1))
            .count();
        // The identity assignment (mask 0) is the observed one: counted among the hits.
        (hits as f64, f64::from(all))
    } else {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5b_ab);
        let mut hits = 1.0; // the observed assignment
        for _ in 0..RANDOM_FLIPS {
            let signs: Vec<bool> = (0..diffs.len()).map(|_| rng.gen()).collect();
            if as_extreme(&diffs, observed, |i| signs[i]) {
                hits += 1.0;
            }
        }
        (hits, f64::from(RANDOM_FLIPS) + 1.0)
    };
    let (mean_a, mean_b) = (mean(a), mean(b));
    Ok(Comparison {
        mean_a,
        mean_b,
        change: (mean_b - mean_a) / mean_a,
        p_value: extreme / tried,
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
        // All ten differences are +10: only the identity and the all-flipped assignment are
        // as extreme, so p = 2 / 1024.
        assert!((c.p_value - 2.0 / 1024.0).abs() < 1e-12, "{c:?}");
        assert!(c.flagged(0.01, 0.05));
    }

    #[test]
    fn pairing_sees_a_shift_that_drift_between_rounds_hides() {
        // Rounds drift from 100 to 190; B is 3% above A in every round. Unpaired, the drift
        // swamps the shift; paired, every difference has the same sign.
        let a: Vec<f64> = (0..12).map(|i| 100.0 + 10.0 * f64::from(i % 10)).collect();
        let b: Vec<f64> = a.iter().map(|x| x * 1.03).collect();
        let c = compare(&a, &b).expect("samples");
        assert!(c.p_value < 0.01, "{c:?}");
        assert!(
            !c.flagged(0.01, 0.05),
            "3% is under the 5% threshold: {c:?}"
        );
        assert!(c.flagged(0.01, 0.02), "{c:?}");
    }

    #[test]
    fn noise_alone_is_not() {
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
    fn many_rounds_use_random_flips_and_agree() {
        let a: Vec<f64> = (0..30).map(|i| 100.0 + f64::from(i % 7)).collect();
        let b: Vec<f64> = a.iter().map(|x| x + 8.0).collect();
        let c = compare(&a, &b).expect("samples");
        assert!(c.p_value < 0.001, "{c:?}");
        assert_eq!(
            compare(&a, &b),
            Ok(c),
            "a fixed seed gives the same p-value"
        );
    }

    #[test]
    fn samples_parse_or_name_the_bad_line() {
        assert_eq!(parse_samples("1\n\n 2.5 \n"), Ok(vec![1.0, 2.5]));
        assert!(parse_samples("1\nx\n").unwrap_err().contains("\"x\""));
        assert_eq!(compare(&[], &[]), Err(CompareError::Empty));
        assert_eq!(
            compare(&[1.0, 2.0], &[1.0]),
            Err(CompareError::Unpaired { a: 2, b: 1 })
        );
    }
}
