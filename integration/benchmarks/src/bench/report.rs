//! Output of the benchmark: a table on stdout, `results/bench-<UTC>.json` with a copy as
//! `results/latest.json`, and `results/latest.png` drawn with gnuplot.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

use super::aggregate::Figures;
use sockbypass_guests::{run, GuestError};
// Where every results file says it was measured, shared with the other runs.
pub use sockbypass_measure::host::{commit, machine, utc_timestamp};

/// Where and on what the benchmark ran.
#[derive(Debug, Clone)]
pub struct RunInfo {
    /// `"tcg"` or `"kvm"`.
    pub accel: String,
    /// Why that accelerator.
    pub accel_reason: String,
    /// CPU model, cores and memory of the host.
    pub machine: String,
    /// `git describe`-like commit id, `-dirty` when the tree had changes.
    pub commit: String,
    /// UTC time of the run, `YYYYMMDDTHHMMSSZ`.
    pub timestamp: String,
    /// Whether virtio-net used vhost-net.
    pub vhost_net: bool,
    /// The plan's parameters, as JSON.
    pub plan: Value,
}

/// The comparison table.
pub fn table(f: &Figures, info: &RunInfo) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "sockbypass vs virtio-net ({}, {}, commit {})",
        info.accel.to_uppercase(),
        info.machine,
        info.commit
    );
    let _ = writeln!(
        t,
        "{:<16}{:>12}{:>14}{:>10}",
        "", "bypass", "virtio-net", "ratio"
    );
    let rows = [
        ("RTT p50 (µs)", f.bypass.rtt_p50, f.virtio_net.rtt_p50),
        ("RTT p99 (µs)", f.bypass.rtt_p99, f.virtio_net.rtt_p99),
        ("RTT mean (µs)", f.bypass.rtt_mean, f.virtio_net.rtt_mean),
        ("bulk (Gb/s)", f.bypass.gbps, f.virtio_net.gbps),
    ];
    for (name, b, v) in rows {
        let _ = writeln!(t, "{name:<16}{b:>12.2}{v:>14.2}{:>10.3}", b / v);
    }
    let _ = writeln!(
        t,
        "milestone (RTT p50 ratio ≤ 0.25 and throughput ratio ≥ 2): {}",
        if f.milestone_met() { "met" } else { "not met" }
    );
    if info.accel == "tcg" {
        let _ = writeln!(
            t,
            "TCG: the guest CPUs are emulated, so absolute figures are far below real hardware; only the ratios carry over."
        );
    }
    t
}

/// One poll mode's figures, with the CPU the daemon and the guests used meanwhile.
#[derive(Debug, Clone)]
pub struct ModeFigures {
    /// `--poll-mode`.
    pub mode: String,
    /// Repetitions measured in this mode.
    pub reps: u32,
    /// Both paths' figures.
    pub figures: Figures,
    /// sockbypassd's CPU while the guests measured, in % of one core.
    pub daemon_cpu_percent: Option<f64>,
    /// Both QEMU processes' CPU meanwhile, in % of one core.
    pub guests_cpu_percent: Option<f64>,
}

/// Per-mode table: the bypass in each poll mode, and virtio-net measured alongside (a switch
/// that starved the guests' vCPUs would drag virtio-net down as well).
pub fn modes_table(modes: &[ModeFigures]) -> String {
    let pct = |v: Option<f64>| v.map_or("n/a".to_owned(), |v| format!("{v:.0}%"));
    let mut t = String::new();
    let _ = writeln!(
        t,
        "per poll mode (CPU in % of one core while the guests measured):"
    );
    let _ = writeln!(
        t,
        "{:<10}{:>5}{:>14}{:>14}{:>13}{:>13}{:>12}{:>12}",
        "mode",
        "reps",
        "bypass p50µs",
        "vnet p50µs",
        "bypass Gb/s",
        "vnet Gb/s",
        "daemon CPU",
        "guests CPU"
    );
    for m in modes {
        let f = &m.figures;
        let _ = writeln!(
            t,
            "{:<10}{:>5}{:>14.1}{:>14.1}{:>13.2}{:>13.2}{:>12}{:>12}",
            m.mode,
            m.reps,
            f.bypass.rtt_p50,
            f.virtio_net.rtt_p50,
            f.bypass.gbps,
            f.virtio_net.gbps,
            pct(m.daemon_cpu_percent),
            pct(m.guests_cpu_percent)
        );
    }
    t
}

/// The per-mode figures as JSON.
pub fn modes_json(modes: &[ModeFigures]) -> Value {
    Value::Array(
        modes
            .iter()
            .map(|m| {
                let mut v = m.figures.to_json();
                v["mode"] = json!(m.mode);
                v["reps"] = json!(m.reps);
                v["daemon_cpu_percent"] = json!(m.daemon_cpu_percent);
                v["guests_cpu_percent"] = json!(m.guests_cpu_percent);
                v
            })
            .collect(),
    )
}

/// The full JSON document.
pub fn document(f: &Figures, info: &RunInfo) -> Value {
    let mut doc = json!({
        "accel": info.accel,
        "accel_reason": info.accel_reason,
        "machine": info.machine,
        "commit": info.commit,
        "timestamp": info.timestamp,
        "virtio_net_vhost": info.vhost_net,
        "plan": info.plan,
    });
    if let (Some(d), Value::Object(figs)) = (doc.as_object_mut(), f.to_json()) {
        d.extend(figs);
    }
    doc
}

fn write(path: &Path, text: &str) -> Result<(), GuestError> {
    std::fs::write(path, text).map_err(|source| GuestError::Io {
        what: "cannot write",
        path: path.display().to_string(),
        source,
    })
}

/// Writes `bench-<timestamp>.json` and `latest.json` into `dir`; returns their paths.
pub fn write_json(dir: &Path, doc: &Value, timestamp: &str) -> Result<[PathBuf; 2], GuestError> {
    std::fs::create_dir_all(dir).map_err(|source| GuestError::Io {
        what: "cannot create",
        path: dir.display().to_string(),
        source,
    })?;
    let text = serde_json::to_string_pretty(doc).unwrap_or_default() + "\n";
    let stamped = dir.join(format!("bench-{timestamp}.json"));
    let latest = dir.join("latest.json");
    write(&stamped, &text)?;
    write(&latest, &text)?;
    Ok([stamped, latest])
}

/// Draws `latest.png` in `dir` with gnuplot: RTT and throughput bars per path, the
/// accelerator and the commit in the title.
pub fn plot(dir: &Path, f: &Figures, info: &RunInfo) -> Result<PathBuf, GuestError> {
    let data = dir.join("latest.dat");
    let script = dir.join("latest.gnuplot");
    let png = dir.join("latest.png");
    write(
        &data,
        &format!(
            "# path rtt_p50 rtt_p99 gbps\nbypass {} {} {}\nvirtio-net {} {} {}\n",
            f.bypass.rtt_p50,
            f.bypass.rtt_p99,
            f.bypass.gbps,
            f.virtio_net.rtt_p50,
            f.virtio_net.rtt_p99,
            f.virtio_net.gbps
        ),
    )?;
    write(
        &script,
        &format!(
            r#"set terminal pngcairo size 1100,480 noenhanced
set output '{png}'
set multiplot layout 1,2 title "sockbypass vs virtio-net ({accel}, commit {commit})"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.8 border -1
set boxwidth 0.9
set grid ytics
set key top left
set yrange [0:*]
set title "64 B round trip (µs, lower is better); p50 ratio {rtt_ratio:.2}"
plot '{data}' using 2:xtic(1) title 'p50', '' using 3 title 'p99'
set title "bulk throughput (Gb/s, higher is better); ratio {gbps_ratio:.2}"
plot '{data}' using 4:xtic(1) notitle
unset multiplot
"#,
            rtt_ratio = f.rtt_ratio(),
            gbps_ratio = f.gbps_ratio(),
            png = png.display(),
            data = data.display(),
            accel = info.accel.to_uppercase(),
            commit = info.commit,
        ),
    )?;
    run(Command::new("gnuplot").arg(&script))?;
    Ok(png)
}
