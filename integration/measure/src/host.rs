//! This host and this checkout, as results files name them: CPU model, cores and memory, and
//! the commit measured.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The CPU model, core count and memory of this host.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map_or("unknown CPU", str::trim)
        .to_owned();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| (kib + (1 << 19)) >> 20);
    format!("{model}, {cores} cores, {mem_gib} GiB")
}

/// The current commit, with `-dirty` if tracked files outside `results/` have changes.
pub fn commit() -> String {
    let root = repo_root();
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(&root)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let Some(id) = git(&["rev-parse", "--short=12", "HEAD"]) else {
        return "unknown".into();
    };
    // results/ is left out: the runs write results/latest.json (tracked) themselves, and
    // bench.sh's microbenchmark runs after the benchmark has.
    match git(&[
        "status",
        "--porcelain",
        "--untracked-files=no",
        "--",
        ".",
        ":(exclude)results",
    ]) {
        Some(s) if !s.is_empty() => format!("{id}-dirty"),
        _ => id,
    }
}

/// The current UTC time as `YYYYMMDDTHHMMSSZ`.
pub fn utc_timestamp() -> String {
    Command::new("date")
        .args(["-u", "+%Y%m%dT%H%M%SZ"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown-time".into())
}

/// The repository's top folder (this crate is `integration/measure`).
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_repository_root_holds_the_workspace() {
        let manifest = std::fs::read_to_string(repo_root().join("Cargo.toml")).expect("Cargo.toml");
        assert!(
            manifest.contains("[workspace]"),
            "{}",
            repo_root().display()
        );
    }
}
