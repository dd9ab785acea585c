//! `sockbypass-soak`: a thousand verified connections open at once across four guests for ten
//! minutes (all configurable), through the real `sockbypassd` binary as its own process. See
//! `sockbypass_guests::realdaemon::soak` for the layout, the limits and the checks;
//! `ci/soak.sh` builds everything and runs it.
//!
//! Prints progress and a summary; writes `<out>/soak-<UTC>.json`. Exit status 0 when every
//! check passed, 1 otherwise. When real guests cannot run here (no guest image, no QEMU) the
//! soak is skipped with the reason (exit 0), except with `CI=true`, where it fails.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use serde_json::json;
use sockbypass_guests::interrupt;
use sockbypass_guests::realdaemon::{soak, soak_summary, summary};
use sockbypass_measure::host;

#[derive(Debug, Parser)]
#[command(
    name = "sockbypass-soak",
    about = "Many verified connections across several guests for a long time, through the real daemon"
)]
struct Args {
    /// How long the guests' clients run, seconds.
    #[arg(long, default_value_t = 600)]
    seconds: u64,
    /// Guests.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(2..=16))]
    guests: u32,
    /// Connections open at once, in all.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=8000))]
    conns: u32,
    /// The sockbypassd binary [default: sockbypassd next to this program].
    #[arg(long)]
    daemon: Option<PathBuf>,
    /// More options for sockbypassd, e.g. `--daemon-arg=--poll-mode=poll` (repeatable).
    #[arg(long = "daemon-arg", value_name = "ARG", allow_hyphen_values = true)]
    daemon_args: Vec<String>,
    /// Directory of the results file.
    #[arg(long, default_value = "results")]
    out: PathBuf,
    /// Guest RAM, MiB.
    #[arg(long, default_value_t = 512)]
    memory_mib: u32,
    /// Every this-many-th connection streams bulk data; the others exchange messages.
    #[arg(long, default_value_t = 4)]
    bulk_every: u32,
    /// Largest bulk session, bytes.
    #[arg(long, default_value_t = 4 << 20)]
    bulk_max: u64,
    /// Sample the daemon every this many seconds.
    #[arg(long, default_value_t = 5)]
    sample_every: u64,
    /// The table must hold every connection within this many seconds of the last guest's start.
    #[arg(long, default_value_t = 30)]
    ramp: u64,
    /// The guests' connect timeout in ms (Linux's vsock default is 2000).
    #[arg(long, default_value_t = 10_000)]
    guest_connect_timeout_ms: u64,
    /// max_conns of every VM (1..=1024).
    #[arg(long, default_value_t = 1024)]
    max_conns: u32,
    /// max_conns_per_peer of every VM.
    #[arg(long, default_value_t = 512)]
    max_conns_per_peer: u32,
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
    let params = soak::Params {
        seconds: args.seconds,
        guests: args.guests,
        conns: args.conns,
        daemon: args.daemon.clone().unwrap_or_else(default_daemon),
        daemon_args: args.daemon_args.clone(),
        memory_mib: args.memory_mib,
        bulk_every: args.bulk_every,
        bulk_max: args.bulk_max,
        sample_every: Duration::from_secs(args.sample_every.max(1)),
        ramp: Duration::from_secs(args.ramp),
        max_conns: args.max_conns,
        max_conns_per_peer: args.max_conns_per_peer,
        connect_timeout_ms: args.guest_connect_timeout_ms,
        failed_logs: args.out.join("logs").join(format!("soak-{timestamp}")),
    };
    println!(
        "==> soak: {} connections across {} guests for {} s, with {} (VMs: max_conns={}, max_conns_per_peer={})",
        params.conns,
        params.guests,
        params.seconds,
        params.daemon.display(),
        params.max_conns,
        params.max_conns_per_peer
    );
    let outcome = soak::run(&params, &mut |line| println!("{line}"));
    if outcome.cannot_run && std::env::var("CI").as_deref() != Ok("true") {
        println!(
            "SKIPPED (CI=true would fail): soak: {}",
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
    let v = soak_summary::verdict(&params, &outcome, meta);
    for f in &v.failures {
        println!("FAILED: {f}");
    }
    println!("{}", v.line);
    match summary::write_results(&args.out, "soak", &timestamp, &v.doc) {
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
