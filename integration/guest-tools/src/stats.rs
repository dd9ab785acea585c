//! Summary statistics of round-trip times (percentiles by the project's one definition,
//! `sockbypass_measure::stats`).

use sockbypass_measure::stats::percentile;

/// p50, p99, mean, min and max of a set of samples (µs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// Median (nearest rank).
    pub p50: f64,
    /// 99th percentile (nearest rank).
    pub p99: f64,
    /// Arithmetic mean.
    pub mean: f64,
    /// Smallest sample.
    pub min: f64,
    /// Largest sample.
    pub max: f64,
}

/// Sorts `samples` and summarises them. `None` if empty.
pub fn summarize(samples: &mut [f64]) -> Option<Summary> {
    samples.sort_by(f64::total_cmp);
    let n = samples.len();
    Some(Summary {
        p50: percentile(samples, 500)?,
        p99: percentile(samples, 990)?,
        mean: samples.iter().sum::<f64>() / n as f64,
        min: *samples.first()?,
        max: *samples.last()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_sorts_first() {
        let mut v = vec![5.0, 1.0, 4.0, 2.0, 3.0];
        let s = summarize(&mut v).expect("non-empty");
        assert_eq!(s.p50, 3.0);
        assert_eq!(s.p99, 5.0);
        assert_eq!(s.mean, 3.0);
        assert_eq!(s.min, 1.0);
        assert_eq!(s.max, 5.0);
        assert_eq!(summarize(&mut []), None);
    }
}
