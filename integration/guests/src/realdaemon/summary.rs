//! Figures of the fault and soak runs: a change in percent, and the results file
//! `<kind>-<UTC>.json` in the results directory.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::RealDaemonError;

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
    fn change_in_percent() {
        assert_eq!(change_pct(100, 110), 10.0);
        assert_eq!(change_pct(200, 150), -25.0);
        assert_eq!(change_pct(0, 5), 0.0);
    }
}
