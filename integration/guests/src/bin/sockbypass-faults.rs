//! `sockbypass-faults`: kills a guest's QEMU mid-stream again and again, with the real
//! `sockbypassd` binary as its own process, and checks that the peer sees a reset in time,
//! that a restarted guest on the same socket works, that the daemon's memory stays flat and
//! that it holds no connection at the end. See `sockbypass_guests::realdaemon::faults`
//! for what each cycle does and measures; `ci/faults.sh` builds everything and runs it.
//!
//! Prints one line per cycle and a summary; writes `<out>/faults-<UTC>.json`. Exit status 0
//! when every check passed, 1 otherwise. When real guests cannot run here (no guest image, no
//! QEMU) the run is skipped with the reason (exit 0), except with `CI=true`, where it fails.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use serde_json::json;
use sockbypass_guests::interrupt;
use sockbypass_guests::realdaemon::{faults, faults_summary, summary};
use sockbypass_measure::host;

#[derive(Debug, Parser)]
#[command(
    name = "sockbypass-faults",
    about = "SIGKILL a guest's QEMU mid-stream, restart it on the same socket; check resets, memory and the connection table"
)]
struct Args {
    /// Kill-and-restart cycles.
    #[arg(long, default_value_t = 100)]
    cycles: u32,
    /// The sockbypassd binary [default: sockbypassd next to this program].
    #[arg(long)]
    daemon: Option<PathBuf>,
    /// More options for sockbypassd, e.g. `--daemon-arg=--poll-mode=poll` (repeatable).
    #[arg(long = "daemon-arg", value_name = "ARG", allow_hyphen_values = true)]
    daemon_args: Vec<String>,
    /// Directory of the results file.
    #[arg(long, default_value = "results")]
    out: PathBuf,
    /// The peer must see the reset within this many milliseconds of the kill.
    #[arg(long, default_value_t = 1000)]
    max_reset_ms: u64,
    /// The daemon's RSS after the last cycle must be within this many percent of its RSS
    /// after the first.
    #[arg(long, default_value_t = 10.0)]
    rss_tolerance_pct: f64,
    /// Bytes of the fresh connection after each restart.
    #[arg(long, default_value_t = 1 << 20)]
    verify_bytes: u64,
    /// Seed of the kill delays.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Guest RAM, MiB.
    #[arg(long, default_value_t = 256)]
    memory_mib: u32,
}

fn default_daemon() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("sockbypassd")))
        .unwrap_or_else(|| PathBuf::from("sockbypassd"))
}

fn main() -> ExitCode {
    let args = Args::parse();
    interrupt::install();
    let timestamp = host::utc_timestamp();
    let params = faults::Params {
        cycles: args.cycles,
        daemon: args.daemon.clone().unwrap_or_else(default_daemon),
        daemon_args: args.daemon_args.clone(),
        max_reset: Duration::from_millis(args.max_reset_ms),
        rss_tolerance_pct: args.rss_tolerance_pct,
        verify_bytes: args.verify_bytes,
        seed: args.seed,
        memory_mib: args.memory_mib,
        failed_logs: args.out.join("logs").join(format!("faults-{timestamp}")),
    };
    println!(
        "==> {} kill-and-restart cycles with {}",
        params.cycles,
        params.daemon.display()
    );
    let outcome = faults::run(&params, &mut |line| println!("{line}"));
    if outcome.cannot_run && std::env::var("CI").as_deref() != Ok("true") {
        println!(
            "SKIPPED (CI=true would fail): fault cycles: {}",
            outcome
                .error
                .as_deref()
                .unwrap_or("real guests cannot run here")
        );
        return ExitCode::SUCCESS;
    }
    let meta = json!({
        "timestamp": timestamp,
        "commit": host::commit(),
        "machine": host::machine(),
    });
    let v = faults_summary::verdict(&params, &outcome, meta);
    for f in &v.failures {
        println!("FAILED: {f}");
    }
    println!("{}", v.line);
    match summary::write_results(&args.out, "faults", &timestamp, &v.doc) {
        Ok(path) => println!("==> wrote {}", path.display()),
        Err(e) => {
            println!("FAILED: {}", sockbypassd::error_chain(&e));
            return ExitCode::FAILURE;
        }
    }
    if v.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
