//! Figures of the fault and soak runs: nearest-rank percentiles, and the results file
//! `<kind>-<UTC>.json` in the results directory.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::RealDaemonError;

/// The nearest-rank percentile `pct` (0 < pct <= 100) of `samples`: the smallest sample such
/// that at least `pct`% of the samples are at or below it. `None` when empty.
pub fn percentile(samples: &[f64], pct: u32) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    // ceil(pct * n / 100), at least 1.
    let rank = (pct.min(100) as usize * n).div_ceil(100).max(1);
    Some(sorted[rank - 1])
}

/// Writes `doc` as `<dir>/<kind>-<timestamp>.json`; returns the path.
pub fn write_results(
    dir: &Path,
    kind: &str,
    timestamp: &str,
    doc: &Value,
) -> Result<PathBuf, RealDaemonError> {
    std::fs::create_dir_all(dir).map_err(|source| RealDaemonError::Io {
        what: "cannot create",
        path: dir.to_owned(),
        source,
    })?;
    let path = dir.join(format!("{kind}-{timestamp}.json"));
    let text = serde_json::to_string_pretty(doc).unwrap_or_default() + "\n";
    std::fs::write(&path, text).map_err(|source| RealDaemonError::Io {
        what: "cannot write",
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

/// `(last - first) / first` in percent; 0 when `first` is 0.
pub fn change_pct(first: u64, last: u64) -> f64 {
    if first == 0 {
        return 0.0;
    }
    (last as f64 - first as f64) * 100.0 / first as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        assert_eq!(percentile(&[], 50), None);
        assert_eq!(percentile(&[7.0], 50), Some(7.0));
        let v = [5.0, 1.0, 4.0, 2.0, 3.0];
        assert_eq!(percentile(&v, 50), Some(3.0));
        assert_eq!(percentile(&v, 100), Some(5.0));
        assert_eq!(percentile(&v, 1), Some(1.0));
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 50), Some(2.0));
    }

    #[test]
    fn change_in_percent() {
        assert_eq!(change_pct(100, 110), 10.0);
        assert_eq!(change_pct(200, 150), -25.0);
        assert_eq!(change_pct(0, 5), 0.0);
    }
}
