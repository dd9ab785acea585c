//! Summary statistics of round-trip times.

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

/// The percentile `permille`/10 (e.g. 990 for p99) of `sorted` (ascending) by the
/// nearest-rank method: the smallest sample such that at least that share of the samples is
/// ≤ it. Integer arithmetic, so an exact rank never rounds up to the next one. `None` if empty.
pub fn percentile(sorted: &[f64], permille: usize) -> Option<f64> {
    let n = sorted.len();
    if n == 0 {
        return None;
    }
    let rank = (permille.min(1000) * n).div_ceil(1000).clamp(1, n);
    sorted.get(rank - 1).copied()
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
    fn nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 500), Some(50.0));
        assert_eq!(percentile(&v, 990), Some(99.0));
        assert_eq!(percentile(&v, 1000), Some(100.0));
        assert_eq!(percentile(&v, 0), Some(1.0));
        assert_eq!(percentile(&v, 10), Some(1.0));
        assert_eq!(percentile(&v, 15), Some(2.0));

        let v: Vec<f64> = (1..=2000).map(f64::from).collect();
        assert_eq!(percentile(&v, 500), Some(1000.0));
        assert_eq!(percentile(&v, 990), Some(1980.0));

        assert_eq!(percentile(&[7.0], 500), Some(7.0));
        assert_eq!(percentile(&[7.0], 990), Some(7.0));
        assert_eq!(percentile(&[1.0, 2.0], 500), Some(1.0));
        assert_eq!(percentile(&[1.0, 2.0], 990), Some(2.0));
        assert_eq!(percentile(&[1.0, 2.0, 3.0], 500), Some(2.0));
        assert_eq!(percentile(&[], 500), None);
    }

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
