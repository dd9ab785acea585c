//! Output of the benchmark: a table on stdout, `results/bench-<UTC>.json` with a copy as
//! `results/latest.json`, and `results/latest.png` drawn with gnuplot. Every path is in each:
//! the bypass, virtio-net, the fast path host-copied (`fastpath`) and direct
//! (`fastpath_direct`), with RTT p50/p99/mean at 64 B, bulk Gb/s and the ratios against
//! virtio-net; the CPU the daemon and the guests used is per run (all paths together), and the
//! bypass milestone and the fast path's goals are reported as met or not.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

use super::aggregate::{Figures, PathFigures, FASTPATH_GOALS};
use super::plan::Path as BenchPath;
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

/// Column headings of the paths, in [`BenchPath::ALL`] order.
fn heading(path: BenchPath) -> &'static str {
    match path {
        BenchPath::Bypass => "bypass",
        BenchPath::VirtioNet => "virtio-net",
        BenchPath::FastPath => "fastpath",
        BenchPath::FastPathDirect => "fp-direct",
    }
}

/// The paths compared with virtio-net.
const COMPARED: [BenchPath; 3] = [
    BenchPath::Bypass,
    BenchPath::FastPath,
    BenchPath::FastPathDirect,
];

fn met(yes: bool) -> &'static str {
    if yes {
        "met"
    } else {
        "not met"
    }
}

/// The bypass milestone and the fast path's goals, one line each, met or not.
pub fn goal_lines(f: &Figures) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "milestone (RTT p50 ratio ≤ 0.25 and throughput ratio ≥ 2): {}",
        met(f.milestone_met())
    );
    for g in &FASTPATH_GOALS {
        let _ = writeln!(
            t,
            "fast path {} goal (RTT p50 ratio ≤ {} and throughput ratio ≥ {}): {} \
             (RTT p50 ratio {:.3}, throughput ratio {:.2})",
            g.path.placement().unwrap_or(g.path.key()),
            g.rtt_p50_ratio_max,
            g.gbps_ratio_min,
            met(f.goal_met(g)),
            f.rtt_ratio_of(g.path),
            f.gbps_ratio_of(g.path),
        );
    }
    t
}

fn pct(v: Option<f64>) -> String {
    v.map_or("n/a".to_owned(), |v| format!("{v:.0}%"))
}

/// The comparison table of the main run: every path, their ratios against virtio-net, the
/// CPU the daemon and the guests used while the guests measured (per run, all paths
/// together), the bypass milestone and the fast path's goals.
pub fn table(m: &ModeFigures, info: &RunInfo) -> String {
    let f = &m.figures;
    let mut t = String::new();
    let _ = writeln!(
        t,
        "sockbypass (bypass, fast path) vs virtio-net ({}, {}, commit {})",
        info.accel.to_uppercase(),
        info.machine,
        info.commit
    );
    let _ = write!(t, "{:<16}", "");
    for p in BenchPath::ALL {
        let _ = write!(t, "{:>12}", heading(p));
    }
    for p in COMPARED {
        let _ = write!(t, "{:>16}", format!("{}/vnet", heading(p)));
    }
    let _ = writeln!(t);
    type Field = fn(&PathFigures) -> f64;
    let rows: [(&str, Field); 4] = [
        ("RTT p50 (µs)", |p| p.rtt_p50),
        ("RTT p99 (µs)", |p| p.rtt_p99),
        ("RTT mean (µs)", |p| p.rtt_mean),
        ("bulk (Gb/s)", |p| p.gbps),
    ];
    for (name, field) in rows {
        let _ = write!(t, "{name:<16}");
        for p in BenchPath::ALL {
            let _ = write!(t, "{:>12.2}", field(f.get(p)));
        }
        let vnet = field(&f.virtio_net);
        for p in COMPARED {
            let _ = write!(t, "{:>16.3}", field(f.get(p)) / vnet);
        }
        let _ = writeln!(t);
    }
    type CpuField = fn(&PathFigures) -> Option<f64>;
    let cpu_rows: [(&str, CpuField); 4] = [
        ("CPU RTT daemon", |p| p.rtt_cpu.map(|c| c.daemon)),
        ("CPU RTT guests", |p| p.rtt_cpu.map(|c| c.guests)),
        ("CPU bulk daemon", |p| p.bulk_cpu.map(|c| c.daemon)),
        ("CPU bulk guests", |p| p.bulk_cpu.map(|c| c.guests)),
    ];
    for (name, field) in cpu_rows {
        let _ = write!(t, "{name:<16}");
        for p in BenchPath::ALL {
            let _ = write!(t, "{:>12}", pct(field(f.get(p))));
        }
        let _ = writeln!(t);
    }
    let _ = writeln!(
        t,
        "CPU in % of one core during each path's runs (medians); over the whole run: \
         sockbypassd {}, guests {}",
        pct(m.daemon_cpu_percent),
        pct(m.guests_cpu_percent)
    );
    t.push_str(&goal_lines(f));
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
    /// Every path's figures.
    pub figures: Figures,
    /// sockbypassd's CPU while the guests measured (all paths), in % of one core.
    pub daemon_cpu_percent: Option<f64>,
    /// Both QEMU processes' CPU meanwhile, in % of one core.
    pub guests_cpu_percent: Option<f64>,
}

/// Per-mode table: the bypass and the fast path in each poll mode, and virtio-net measured
/// alongside (a switch that starved the guests' vCPUs would drag virtio-net down as well).
pub fn modes_table(modes: &[ModeFigures]) -> String {
    let short = |p: BenchPath| match p {
        BenchPath::Bypass => "byp",
        BenchPath::VirtioNet => "vnet",
        BenchPath::FastPath => "fp",
        BenchPath::FastPathDirect => "fpd",
    };
    let mut t = String::new();
    let _ = writeln!(
        t,
        "per poll mode (RTT p50 in µs, bulk in Gb/s; CPU in % of one core while the guests \
         measured, all paths):"
    );
    let _ = write!(t, "{:<10}{:>5}", "mode", "reps");
    for p in BenchPath::ALL {
        let _ = write!(t, "{:>10}", format!("{} p50", short(p)));
    }
    for p in BenchPath::ALL {
        let _ = write!(t, "{:>10}", format!("{} Gb/s", short(p)));
    }
    let _ = writeln!(t, "{:>12}{:>12}", "daemon CPU", "guests CPU");
    for m in modes {
        let f = &m.figures;
        let _ = write!(t, "{:<10}{:>5}", m.mode, m.reps);
        for p in BenchPath::ALL {
            let _ = write!(t, "{:>10.1}", f.get(p).rtt_p50);
        }
        for p in BenchPath::ALL {
            let _ = write!(t, "{:>10.2}", f.get(p).gbps);
        }
        let _ = writeln!(
            t,
            "{:>12}{:>12}",
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

/// The full JSON document of the main run: where it ran, the plan, every path's figures
/// (`bypass`, `virtio_net`, `fastpath`, `fastpath_direct`), the ratios against virtio-net, the
/// milestone and goals, and the run's CPU (`daemon_cpu_percent`, `guests_cpu_percent`).
pub fn document(m: &ModeFigures, info: &RunInfo) -> Value {
    let mut doc = json!({
        "accel": info.accel,
        "accel_reason": info.accel_reason,
        "machine": info.machine,
        "commit": info.commit,
        "timestamp": info.timestamp,
        "virtio_net_vhost": info.vhost_net,
        "plan": info.plan,
        "daemon_cpu_percent": m.daemon_cpu_percent,
        "guests_cpu_percent": m.guests_cpu_percent,
    });
    if let (Some(d), Value::Object(figs)) = (doc.as_object_mut(), m.figures.to_json()) {
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

/// The plot's data: one row per path (label, RTT p50, RTT p99, Gb/s), labels without
/// spaces for gnuplot.
pub fn plot_data(f: &Figures) -> String {
    let mut data = String::from("# path rtt_p50 rtt_p99 gbps\n");
    for p in BenchPath::ALL {
        let pf = f.get(p);
        let _ = writeln!(
            data,
            "{} {} {} {}",
            heading(p),
            pf.rtt_p50,
            pf.rtt_p99,
            pf.gbps
        );
    }
    data
}

/// Draws `latest.png` in `dir` with gnuplot: RTT and throughput bars for every path, the
/// ratios against virtio-net in the titles, the accelerator and the commit in the heading.
pub fn plot(dir: &Path, f: &Figures, info: &RunInfo) -> Result<PathBuf, GuestError> {
    let data = dir.join("latest.dat");
    let script = dir.join("latest.gnuplot");
    let png = dir.join("latest.png");
    write(&data, &plot_data(f))?;
    let ratios = |ratio: fn(&Figures, BenchPath) -> f64| {
        COMPARED
            .iter()
            .map(|p| format!("{} {:.2}", heading(*p), ratio(f, *p)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    write(
        &script,
        &format!(
            r#"set terminal pngcairo size 1400,520 noenhanced
set output '{png}'
set multiplot layout 1,2 title "sockbypass (bypass, fast path) vs virtio-net ({accel}, commit {commit})"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.8 border -1
set boxwidth 0.9
set grid ytics
set key top left
set yrange [0:*]
set title "64 B round trip (µs, lower is better)\np50 vs virtio-net: {rtt_ratios}"
plot '{data}' using 2:xtic(1) title 'p50', '' using 3 title 'p99'
set title "bulk throughput (Gb/s, higher is better)\nvs virtio-net: {gbps_ratios}"
plot '{data}' using 4:xtic(1) notitle
unset multiplot
"#,
            rtt_ratios = ratios(Figures::rtt_ratio_of),
            gbps_ratios = ratios(Figures::gbps_ratio_of),
            png = png.display(),
            data = data.display(),
            accel = info.accel.to_uppercase(),
            commit = info.commit,
        ),
    )?;
    run(Command::new("gnuplot").arg(&script))?;
    Ok(png)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(p50: f64, gbps: f64) -> PathFigures {
        PathFigures {
            rtt_p50: p50,
            rtt_p99: p50 * 2.0,
            rtt_mean: p50 + 1.0,
            gbps,
            rtt_p50_reps: vec![p50],
            gbps_reps: vec![gbps],
            verified: true,
            rtt_cpu: Some(crate::bench::aggregate::Cpu {
                daemon: 7.0,
                guests: 150.0,
            }),
            bulk_cpu: None,
        }
    }

    fn main_run() -> ModeFigures {
        ModeFigures {
            mode: "adaptive".into(),
            reps: 1,
            figures: Figures {
                bypass: path(20.0, 2.0),
                virtio_net: path(100.0, 1.0),
                fastpath: path(40.0, 3.0),
                fastpath_direct: path(4.0, 8.0),
            },
            daemon_cpu_percent: Some(37.0),
            guests_cpu_percent: None,
        }
    }

    fn info() -> RunInfo {
        RunInfo {
            accel: "tcg".into(),
            accel_reason: "no /dev/kvm".into(),
            machine: "test machine".into(),
            commit: "abc1234".into(),
            timestamp: "20261202T000000Z".into(),
            vhost_net: false,
            plan: json!({"reps": 1}),
        }
    }

    #[test]
    fn the_table_has_every_path_its_ratio_the_cpu_and_the_goals() {
        let t = table(&main_run(), &info());
        let lines: Vec<&str> = t.lines().collect();
        let headings: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            headings,
            [
                "bypass",
                "virtio-net",
                "fastpath",
                "fp-direct",
                "bypass/vnet",
                "fastpath/vnet",
                "fp-direct/vnet"
            ]
        );
        // Every row as wide as the headings, so the columns line up.
        let width = lines[1].chars().count();
        for row in &lines[2..6] {
            assert_eq!(row.chars().count(), width, "{row}");
        }
        let p50 = lines.iter().find(|l| l.starts_with("RTT p50")).unwrap();
        let cells: Vec<&str> = p50.split_whitespace().skip(3).collect();
        assert_eq!(
            cells,
            ["20.00", "100.00", "40.00", "4.00", "0.200", "0.400", "0.040"]
        );
        let bulk = lines.iter().find(|l| l.starts_with("bulk")).unwrap();
        assert!(
            bulk.ends_with("2.000           3.000           8.000"),
            "{bulk}"
        );
        assert!(t.contains("sockbypassd 37%, guests n/a"), "{t}");
        assert!(t.contains("milestone (RTT p50 ratio ≤ 0.25 and throughput ratio ≥ 2): met"));
        // Host-copied: 0.4 > 0.3 and 3 < 4; direct: 0.04 ≤ 0.05 and 8 ≥ 4.
        assert!(
            t.contains("fast path host-copied goal (RTT p50 ratio ≤ 0.3 and throughput ratio ≥ 4): not met"),
            "{t}"
        );
        assert!(
            t.contains(
                "fast path direct goal (RTT p50 ratio ≤ 0.05 and throughput ratio ≥ 4): met"
            ),
            "{t}"
        );
    }

    #[test]
    fn the_document_has_every_path_ratio_goal_and_the_cpu() {
        let doc = document(&main_run(), &info());
        for key in ["bypass", "virtio_net", "fastpath", "fastpath_direct"] {
            assert!(doc[key]["rtt_us"]["p50"].is_number(), "{key}");
            assert!(doc[key]["rtt_us"]["p99"].is_number(), "{key}");
            assert!(doc[key]["gbps"].is_number(), "{key}");
        }
        for key in [
            "rtt_p50",
            "gbps",
            "fastpath_rtt_p50",
            "fastpath_gbps",
            "fastpath_direct_rtt_p50",
            "fastpath_direct_gbps",
        ] {
            assert!(doc["ratio"][key].is_number(), "ratio.{key}");
        }
        assert_eq!(doc["ratio"]["fastpath_direct_gbps"], 8.0);
        assert_eq!(doc["fastpath_goals"]["fastpath"]["met"], false);
        assert_eq!(doc["fastpath_goals"]["fastpath_direct"]["met"], true);
        assert_eq!(doc["daemon_cpu_percent"], 37.0);
        assert!(doc["guests_cpu_percent"].is_null());
        assert_eq!(doc["accel"], "tcg");
    }

    #[test]
    fn the_per_mode_table_and_json_have_every_path() {
        let modes = [main_run()];
        let t = modes_table(&modes);
        for heading in ["byp p50", "vnet p50", "fp p50", "fpd p50", "fpd Gb/s"] {
            assert!(t.contains(heading), "{heading}: {t}");
        }
        let row = t.lines().find(|l| l.starts_with("adaptive")).unwrap();
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(
            cells,
            [
                "adaptive", "1", "20.0", "100.0", "40.0", "4.0", "2.00", "1.00", "3.00", "8.00",
                "37%", "n/a"
            ]
        );
        let v = modes_json(&modes);
        assert_eq!(v[0]["fastpath"]["gbps"], 3.0);
        assert_eq!(v[0]["mode"], "adaptive");
        assert_eq!(v[0]["daemon_cpu_percent"], 37.0);
    }

    #[test]
    fn the_plot_shows_every_path() {
        let data = plot_data(&main_run().figures);
        let rows: Vec<&str> = data.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            rows,
            [
                "bypass 20 40 2",
                "virtio-net 100 200 1",
                "fastpath 40 80 3",
                "fp-direct 4 8 8"
            ]
        );
    }
}
