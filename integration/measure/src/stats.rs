//! The project's one definition of median and percentiles: the nearest-rank method. The
//! percentile p of n samples is the smallest sample such that at least p% of the samples are at
//! or below it, i.e. the sample of rank ceil(p × n / 100) in ascending order. It is always one of
//! the samples (never an interpolation), and the median of an even count is the lower middle one.
//!
//! Percentiles are given in permille (500 for the median, 990 for p99, 1000 for the maximum), so
//! that the rank is computed in integers and an exact rank never rounds up to the next one.

/// The 1-based nearest rank of percentile `permille`/10 among `n` samples:
/// ceil(`permille` × `n` / 1000), at least 1 and at most `n` (`permille` above 1000 counts as
/// 1000). `None` when `n` is 0.
pub fn nearest_rank(n: usize, permille: u32) -> Option<usize> {
    if n == 0 {
        return None;
    }
    let permille = usize::try_from(permille.min(1000)).unwrap_or(1000);
    Some((permille * n).div_ceil(1000).clamp(1, n))
}

/// Percentile `permille`/10 of `sorted` (ascending): the sample at its [`nearest_rank`].
/// `None` when empty.
pub fn percentile<T: Copy>(sorted: &[T], permille: u32) -> Option<T> {
    let rank = nearest_rank(sorted.len(), permille)?;
    sorted.get(rank - 1).copied()
}

/// Percentile `permille`/10 of `samples` in any order (a sorted copy is taken). `None` when
/// empty.
pub fn percentile_of(samples: &[f64], permille: u32) -> Option<f64> {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    percentile(&sorted, permille)
}

/// The median of `samples` in any order: percentile 500. `None` when empty.
pub fn median(samples: &[f64]) -> Option<f64> {
    percentile_of(samples, 500)
}

/// The item whose `key` is the median of the keys (by the same rank as [`median`]), for
/// keeping the median run of a repeated measurement whole. `None` when `items` is empty.
pub fn median_by<T>(mut items: Vec<T>, key: impl Fn(&T) -> f64) -> Option<T> {
    let rank = nearest_rank(items.len(), 500)?;
    items.sort_by(|a, b| key(a).total_cmp(&key(b)));
    Some(items.swap_remove(rank - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_of_sorted_samples() {
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
        assert_eq!(percentile::<f64>(&[], 500), None);
        assert_eq!(percentile(&[1u64, 2, 3], 2000), Some(3));
    }

    #[test]
    fn unsorted_samples() {
        assert_eq!(percentile_of(&[], 500), None);
        assert_eq!(percentile_of(&[7.0], 500), Some(7.0));
        let v = [5.0, 1.0, 4.0, 2.0, 3.0];
        assert_eq!(percentile_of(&v, 500), Some(3.0));
        assert_eq!(percentile_of(&v, 1000), Some(5.0));
        assert_eq!(percentile_of(&v, 10), Some(1.0));
        assert_eq!(percentile_of(&[1.0, 2.0, 3.0, 4.0], 500), Some(2.0));
        assert_eq!(median(&[30.0, 10.0, 20.0]), Some(20.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.0));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn median_item() {
        let runs = vec![("c", 3.0), ("a", 1.0), ("b", 2.0)];
        assert_eq!(median_by(runs, |r| r.1), Some(("b", 2.0)));
        let runs = vec![("d", 4.0), ("a", 1.0), ("c", 3.0), ("b", 2.0)];
        assert_eq!(median_by(runs, |r| r.1), Some(("b", 2.0)));
        assert_eq!(median_by(Vec::<f64>::new(), |r| *r), None);
    }
}
