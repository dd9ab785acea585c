//! `sockbypass-microbench`: the switch alone, host only. Simulated VMs (the test frontend with
//! fixed buffers) attach to an in-process `sockbypassd`; this thread fills their TX rings and
//! drains their RX rings. It measures the switch per 64 B packet and in bulk, in each poll
//! mode, over 1 to 8 VM pairs, its idle CPU, and this machine's cache-line round trip and
//! `memcpy` bandwidth for reference. Build it with `--release`.
//!
//! `sockbypass-microbench gate` is the fixed run `ci/perf-gate.sh` counts instructions on.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use sockbypass_benchmarks::bench::report::{commit, machine};
use sockbypass_benchmarks::microbench::report::{mode_name, Reference, Report};
use sockbypass_benchmarks::microbench::scenarios::{self, Settings};
use sockbypass_benchmarks::microbench::{bench_vm::RING_SIZE, compare, fastpath, reference};
use sockbypassd::config::{ConfigError, PollMode, DEFAULT_POLL_BUDGET_US};

#[derive(Debug, Parser)]
#[command(name = "sockbypass-microbench")]
/// Host-only microbenchmark of the sockbypass switch against this machine's physical limits.
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Poll modes to measure, comma-separated.
    #[arg(long, default_value = "poll,adaptive,event", value_delimiter = ',')]
    modes: Vec<String>,
    /// Timed single packets per latency figure.
    #[arg(long, default_value_t = 20_000)]
    latency_packets: u32,
    /// Seconds per rate or bandwidth run.
    #[arg(long, default_value_t = 0.5)]
    seconds: f64,
    /// Runs per figure; the median run is reported (shared machines are noisy).
    #[arg(long, default_value_t = 3)]
    repeat: u32,
    /// VM pair counts for the scaling figures, comma-separated (1 to 8).
    #[arg(long, default_value = "1,2,4,8", value_delimiter = ',')]
    pairs: Vec<usize>,
    /// Seconds of idle CPU sampling after the poll budget has expired.
    #[arg(long, default_value_t = 2.0)]
    idle_seconds: f64,
    /// The daemon's `--poll-threads`.
    #[arg(long, default_value_t = 1)]
    poll_threads: u32,
    /// The daemon's `--poll-budget-us`.
    #[arg(long, default_value_t = DEFAULT_POLL_BUDGET_US)]
    poll_budget_us: u64,
    /// The daemon's `--seccomp` (off, log or kill): `off` shows what the filter costs.
    #[arg(long, default_value = "kill")]
    seccomp: String,
    /// Do not pin the driver thread to the first allowed CPU and the poll threads to the others.
    #[arg(long)]
    no_pin: bool,
    /// Also write the results as JSON to this file (`-` for standard output).
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The fixed run the instruction-count gate measures (event mode, one pair).
    Gate {
        /// The path counted: event (the kick handler), poll (a poll thread; adaptive takes the
        /// same path while packets flow) or fastpath (the fast path's host copy, event mode:
        /// 64 B messages, `batch` per write).
        #[arg(long, default_value = "event")]
        mode: String,
        /// Rounds of one batch each.
        #[arg(long, default_value_t = 400)]
        batches: u32,
        /// 64 B packets per batch, published with one kick.
        #[arg(long, default_value_t = 32)]
        batch: u16,
    },
    /// Prints one figure of a mode from a `--json` file (for scripts).
    Figure {
        /// The JSON file a run wrote.
        json: PathBuf,
        /// The mode (poll, adaptive, event).
        mode: String,
        /// The figure's key in that mode, e.g. small_ns_per_packet.
        key: String,
    },
    /// Compares two files of paired samples (one number per line, line i of each from the
    /// same round): change of the mean and a sign-flip permutation-test p-value of the
    /// per-round differences. Exit status 3 when the change is flagged.
    Compare {
        /// Samples of the baseline (A), one per round.
        a: PathBuf,
        /// Samples of the candidate (B), one per round, in the same order.
        b: PathBuf,
        /// What the samples are, for the report line.
        #[arg(long, default_value = "figure")]
        label: String,
        /// Significance level.
        #[arg(long, default_value_t = 0.01)]
        alpha: f64,
        /// Smallest change flagged, as a share (0.05 = 5%).
        #[arg(long, default_value_t = 0.05)]
        threshold: f64,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = match &args.command {
        Some(Command::Gate {
            mode,
            batches,
            batch,
        }) => gate(mode, *batches, *batch),
        Some(Command::Figure { json, mode, key }) => figure(json, mode, key),
        Some(Command::Compare {
            a,
            b,
            label,
            alpha,
            threshold,
        }) => match compare_files(a, b, label, *alpha, *threshold) {
            Ok(false) => Ok(()),
            Ok(true) => return ExitCode::from(3),
            Err(e) => Err(e),
        },
        None => run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sockbypass-microbench: {}", sockbypassd::error_chain(&*e));
            ExitCode::FAILURE
        }
    }
}

fn settings(args: &Args) -> Result<Settings, String> {
    let modes = args
        .modes
        .iter()
        .map(|m| m.parse::<PollMode>().map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    if modes.is_empty() {
        return Err("--modes: name at least one of poll, adaptive, event".into());
    }
    if args.pairs.iter().any(|&p| !(1..=8).contains(&p)) || args.pairs.is_empty() {
        return Err(format!(
            "--pairs {:?}: each count must be 1 to 8 (16 VMs at most)",
            args.pairs
        ));
    }
    if !(args.seconds > 0.0 && args.seconds <= 600.0) {
        return Err(format!("--seconds {}: must be in (0, 600]", args.seconds));
    }
    if !(args.idle_seconds > 0.0 && args.idle_seconds <= 600.0) {
        return Err(format!(
            "--idle-seconds {}: must be in (0, 600]",
            args.idle_seconds
        ));
    }
    if !(1..=99).contains(&args.repeat) {
        return Err(format!("--repeat {}: must be 1 to 99", args.repeat));
    }
    if args.latency_packets == 0 {
        return Err("--latency-packets must be at least 1".into());
    }
    Ok(Settings {
        modes,
        latency_packets: args.latency_packets,
        seconds: args.seconds,
        pairs: args.pairs.clone(),
        idle_seconds: args.idle_seconds,
        repeat: args.repeat,
        poll_threads: args.poll_threads,
        seccomp: args
            .seccomp
            .parse()
            .map_err(|e: ConfigError| e.to_string())?,
        budget_us: args.poll_budget_us,
        pin: !args.no_pin,
    })
}

fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let s = settings(args)?;
    if cfg!(debug_assertions) {
        eprintln!("warning: a debug build; figures mean little (build with --release)");
    }
    println!("==> reference figures");
    let cacheline = match reference::cacheline_round_trip(2_000_000) {
        Ok(d) => Some(d.as_nanos() as f64),
        Err(e) => {
            println!("    cache-line round trip: {e}");
            None
        }
    };
    let mut modes = Vec::new();
    for &mode in &s.modes {
        println!("==> {} mode (--seccomp {})", mode_name(mode), args.seccomp);
        modes.push(scenarios::run_mode(mode, &s)?);
    }
    println!("==> the fast path's host copy (SPEC.md §13.4)");
    let memcpy = reference::memcpy_bandwidth(64 << 10, 16, Duration::from_secs_f64(s.seconds));
    let mut fast = serde_json::Map::new();
    for &mode in &s.modes {
        let f = fastpath::measure(
            mode,
            Duration::from_micros(s.budget_us),
            s.seconds,
            s.latency_packets,
        )?;
        println!(
            "    {:<8} {:>7.1} ns per 64 B message (goal ≤ 100: {}), one way {:>8.0} ns, bulk {:>6.2} GB/s = {:.2} × memcpy (goal ≥ 0.8: {})",
            mode_name(mode),
            f.ns_per_message,
            if f.ns_per_message <= 100.0 { "met" } else { "not met" },
            f.one_way_ns,
            f.bulk_bytes_per_s / 1e9,
            f.bulk_bytes_per_s / memcpy,
            if f.bulk_bytes_per_s / memcpy >= 0.8 { "met" } else { "not met" },
        );
        fast.insert(
            mode_name(mode).to_owned(),
            serde_json::json!({
                "ns_per_message_64": f.ns_per_message,
                "one_way_ns_64": f.one_way_ns,
                "bulk_gbytes_per_s": f.bulk_bytes_per_s / 1e9,
                "bulk_over_memcpy": f.bulk_bytes_per_s / memcpy,
            }),
        );
    }
    let report = Report {
        machine: machine(),
        commit: commit(),
        reference: Reference {
            cacheline_rtt_ns: cacheline,
        },
        modes,
        pinned: s.pin && reference::allowed_cpus().len() >= 2,
    };
    println!();
    print!("{}", report.table());
    if let Some(path) = &args.json {
        let mut doc = report.to_json();
        doc["fastpath"] = serde_json::json!({
            "modes": fast,
            "memcpy_gbytes_per_s": memcpy / 1e9,
            "what": "the daemon's fast-path thread copying one host-copied connection's rings \
                     (16 MiB windows), both guests played by this thread through the guest library",
        });
        let text = serde_json::to_string_pretty(&doc)? + "\n";
        if path.as_os_str() == "-" {
            print!("{text}");
        } else {
            std::fs::write(path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
            println!("wrote {}", path.display());
        }
    }
    Ok(())
}

fn gate(mode: &str, batches: u32, batch: u16) -> Result<(), Box<dyn std::error::Error>> {
    if batch == 0 || batch > RING_SIZE / 2 {
        return Err(format!("--batch {batch}: must be 1 to {}", RING_SIZE / 2).into());
    }
    if mode == "fastpath" {
        // The fast path's host copy: event mode, one write of `batch` messages per round.
        let messages = fastpath::gate(batches, batch)?;
        // ci/perf-gate.sh reads this line.
        println!("GATE packets={messages} path=fastpath");
        return Ok(());
    }
    let mode: PollMode = mode.parse()?;
    let run = scenarios::gate(mode, batches, batch)?;
    // ci/perf-gate.sh reads this line.
    println!(
        "GATE packets={} kicks={} interrupts={} forwarded={}",
        run.packets, run.totals.kicks_received, run.totals.interrupts_sent, run.totals.forwarded
    );
    Ok(())
}

fn figure(json: &Path, mode: &str, key: &str) -> Result<(), Box<dyn std::error::Error>> {
    let text =
        std::fs::read_to_string(json).map_err(|e| format!("reading {}: {e}", json.display()))?;
    let doc: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", json.display()))?;
    let value = doc
        .pointer(&format!("/modes/{mode}/{key}"))
        .and_then(serde_json::Value::as_f64)
        .ok_or_else(|| format!("{}: no number at modes.{mode}.{key}", json.display()))?;
    println!("{value}");
    Ok(())
}

fn compare_files(
    a: &Path,
    b: &Path,
    label: &str,
    alpha: f64,
    threshold: f64,
) -> Result<bool, Box<dyn std::error::Error>> {
    let read = |p: &Path| -> Result<Vec<f64>, String> {
        let text =
            std::fs::read_to_string(p).map_err(|e| format!("reading {}: {e}", p.display()))?;
        compare::parse_samples(&text).map_err(|e| format!("{}: {e}", p.display()))
    };
    let (sa, sb) = (read(a)?, read(b)?);
    let c = compare::compare(&sa, &sb)?;
    let flagged = c.flagged(alpha, threshold);
    println!(
        "{label}: A mean {:.1}, B mean {:.1} ({} paired rounds), change {:+.1}%, p = {:.4}{}",
        c.mean_a,
        c.mean_b,
        sa.len(),
        c.change * 100.0,
        c.p_value,
        if flagged {
            format!(
                " -> FLAGGED (p < {alpha} and |change| > {:.0}%)",
                threshold * 100.0
            )
        } else {
            String::new()
        }
    );
    Ok(flagged)
}
