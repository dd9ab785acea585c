//! `sockbypass-bench`: the main job. Boots two guests that have every path (a
//! `vhost-user-vsock-pci` device on `sockbypassd`; the fast path's windows as `ivshmem-plain`
//! devices, each VM's own and the pair window they share; and a virtio-net NIC on a tap and a
//! bridge in a private network namespace), measures RTT (64 B) and bulk throughput over the
//! bypass, virtio-net, the fast path host-copied and the fast path direct, interleaved over
//! several repetitions in rotating order, with the CPU the daemon and the guests used, and
//! prints and saves the comparison (`results/`). The daemon's counters must show that the
//! bypass and host-copied fast-path bytes went through it and that the direct ones did not
//! ([`through_daemon`]).
//!
//! `integration/bench.sh` installs what this needs, builds it with `--release` and runs it.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::json;

use sockbypass_benchmarks::bench::aggregate::aggregate;
use sockbypass_benchmarks::bench::plan::{Assignment, Path, Plan};
use sockbypass_benchmarks::bench::report::{self, ModeFigures, RunInfo};
use sockbypass_benchmarks::bench::through_daemon;
use sockbypass_guests::image::GuestImage;
use sockbypass_guests::netns::NetNs;
use sockbypass_guests::qemu::{cpu_model, vhost_net_available, GuestSpec, Nic, QemuGuest};
use sockbypass_guests::results::{results, RESULT};
use sockbypass_guests::{accel, interrupt};
use sockbypass_measure::cpu_time::{cpu_time_of, process_cpu_time};
use sockbypassd::config::{DaemonConfig, PairConfig, VmConfig};
use sockbypassd::fastpath::{pair_window_path, window_path};

/// Bypass and fast path vs virtio-net between two guests on this host.
#[derive(Debug, Parser)]
#[command(name = "sockbypass-bench")]
struct Args {
    /// Repetitions; each measures every path (bypass, virtio-net, fast path host-copied and
    /// direct), in rotating order.
    #[arg(long, default_value_t = 3)]
    reps: u32,
    /// Round trips per RTT measurement.
    #[arg(long, default_value_t = 2000)]
    rtt_count: u32,
    /// Seconds per bulk measurement.
    #[arg(long, default_value_t = 10)]
    bulk_seconds: u32,
    /// sockbypassd's poll mode for the main comparison: poll, event or adaptive.
    #[arg(long, default_value = "adaptive")]
    poll_mode: String,
    /// Poll modes measured after the main one (every path's figures each, plus the CPU the
    /// daemon and the guests used), comma-separated; empty for none.
    #[arg(long, default_value = "poll,event", value_delimiter = ',')]
    other_modes: Vec<String>,
    /// Repetitions in each of the other modes.
    #[arg(long, default_value_t = 1)]
    other_reps: u32,
    /// Directory for the JSON results and the plot.
    #[arg(long, default_value = "results")]
    out: PathBuf,
}

const BOOT: Duration = Duration::from_secs(300);

fn main() -> ExitCode {
    interrupt::install();
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sockbypass-bench: {}", sockbypassd::error_chain(&*e));
            ExitCode::FAILURE
        }
    }
}

/// What one poll mode gave: its figures with the CPU use while the guests measured (to see
/// whether a spinning switch starves the guests' vCPUs), and the daemon counters' proof that
/// the bypass and host-copied fast-path bytes went through `sockbypassd` (and the direct ones
/// did not).
struct ModeRun {
    result: ModeFigures,
    through_daemon: String,
    fastpath_through_daemon: String,
}

struct Setup<'a> {
    image: &'a GuestImage,
    acc: accel::Accel,
    netns: &'a NetNs,
    vhost: bool,
    dir: &'a std::path::Path,
    logs: &'a std::path::Path,
}

fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let mut modes = vec![args.poll_mode.clone()];
    modes.extend(
        args.other_modes
            .iter()
            .filter(|m| !m.is_empty() && **m != args.poll_mode)
            .cloned(),
    );
    for m in &modes {
        m.parse::<sockbypassd::config::PollMode>()?;
    }
    println!("==> guest image");
    let image = GuestImage::ensure()?;
    let cache = image.kernel.parent().map(PathBuf::from).unwrap_or_default();
    let (acc, why) = accel::choose(&image, &cache)?;
    println!(
        "==> accelerator: {why}; guest CPU model: {}",
        cpu_model(acc).unwrap_or_else(|| "QEMU's default".into())
    );

    let work = tempfile::tempdir()?;
    let logs = args.out.join("logs");
    std::fs::create_dir_all(&logs)?;
    sockbypassd::logging::init(Some("warn"));
    let netns = NetNs::create()?;
    netns.add_tap("sbptap0")?;
    netns.add_tap("sbptap1")?;
    let vhost = vhost_net_available();
    println!(
        "==> network namespace {} with bridge and taps (virtio-net {})",
        netns.name(),
        if vhost {
            "with vhost-net"
        } else {
            "in QEMU userspace: /dev/vhost-net is absent"
        }
    );
    let setup = Setup {
        image: &image,
        acc,
        netns: &netns,
        vhost,
        dir: work.path(),
        logs: &logs,
    };
    let mut runs = Vec::new();
    for (i, mode) in modes.iter().enumerate() {
        let reps = if i == 0 { args.reps } else { args.other_reps };
        runs.push(measure(args, &setup, mode, reps)?);
    }
    drop(netns);
    let main = &runs[0];
    let figures = &main.result.figures;
    let plan = plan(args, args.reps);

    let info = RunInfo {
        accel: acc.qemu_name().into(),
        accel_reason: why,
        machine: report::machine(),
        commit: report::commit(),
        timestamp: report::utc_timestamp(),
        vhost_net: vhost,
        plan: json!({
            "reps": plan.reps, "rtt_count": plan.rtt_count, "rtt_size": plan.rtt_size,
            "bulk_seconds": plan.bulk_seconds, "bulk_write": plan.bulk_write,
            "guest_vcpus": 1, "guest_memory_mib": 512, "poll_mode": args.poll_mode,
            "guest_cpu": cpu_model(acc).unwrap_or_else(|| "QEMU's default".into()),
            "paths": Path::ALL.map(Path::key),
            "fastpath_window_bytes": WINDOW_SIZE,
        }),
    };
    println!();
    print!("{}", report::table(&main.result, &info));
    for r in &runs {
        println!("{} mode, {}", r.result.mode, r.through_daemon);
        println!("{} mode, {}", r.result.mode, r.fastpath_through_daemon);
    }
    let per_mode: Vec<ModeFigures> = runs.iter().map(|r| r.result.clone()).collect();
    if per_mode.len() > 1 {
        println!();
        print!("{}", report::modes_table(&per_mode));
    }
    let mut doc = report::document(&main.result, &info);
    doc["poll_modes"] = report::modes_json(&per_mode);
    doc["through_daemon"] = runs
        .iter()
        .map(|r| {
            json!({
                "mode": r.result.mode,
                "check": r.through_daemon,
                "fastpath_check": r.fastpath_through_daemon,
            })
        })
        .collect();
    let [stamped, latest] = report::write_json(&args.out, &doc, &info.timestamp)?;
    println!("==> wrote {} and {}", stamped.display(), latest.display());
    match report::plot(&args.out, figures, &info) {
        Ok(png) => println!("==> plotted {}", png.display()),
        Err(e) => println!("==> no plot: {e}"),
    }
    Ok(())
}

fn plan(args: &Args, reps: u32) -> Plan {
    Plan {
        reps,
        rtt_count: args.rtt_count,
        rtt_size: 64,
        bulk_seconds: args.bulk_seconds,
        bulk_write: 65536,
        bypass_addr: "vsock:3:5000".into(),
        tcp_addr: "tcp:10.99.0.3:5001".into(),
    }
}

/// The fast-path window of each VM and of their pair: 16 MiB each.
const WINDOW_SIZE: u64 = 16 << 20;

/// The vhost-user socket of VM `name` in `dir`.
fn socket(dir: &std::path::Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.sock"))
}

/// The daemon's configuration for one run in poll mode `mode`: the server (CID 3) and the
/// client (CID 4) in one group, each with its fast-path window, paired for direct connections.
fn daemon_config(
    dir: &std::path::Path,
    mode: &str,
) -> Result<DaemonConfig, Box<dyn std::error::Error>> {
    let vm = |name: &str, cid: u64| VmConfig {
        groups: vec!["bench".into()],
        fastpath_size: Some(WINDOW_SIZE),
        ..VmConfig::new(name, cid, socket(dir, name))
    };
    let mut config = DaemonConfig {
        poll: sockbypassd::config::PollConfig {
            mode: mode.parse()?,
            ..sockbypassd::config::PollConfig::default()
        },
        ..DaemonConfig::with_vms(vec![vm("server", 3), vm("client", 4)])
    };
    config.pairs.push(PairConfig {
        vms: ["server".into(), "client".into()],
        size: WINDOW_SIZE,
    });
    config.validate()?;
    Ok(config)
}

/// The windows guest `name` gets, as the daemon names them (`daemon::start`): its own beside
/// its socket first, then the pair window, beside the socket of the pair's first VM (the
/// server).
fn guest_windows(dir: &std::path::Path, name: &str) -> Vec<PathBuf> {
    vec![
        window_path(&socket(dir, name), name),
        pair_window_path(&socket(dir, "server"), "server", "client"),
    ]
}

/// Starts sockbypassd in `mode` with the fast path on for both VMs and the two paired, boots
/// both guests with their windows, runs the plan and shuts everything down.
fn measure(
    args: &Args,
    setup: &Setup<'_>,
    mode: &str,
    reps: u32,
) -> Result<ModeRun, Box<dyn std::error::Error>> {
    let dir = setup.dir;
    let daemon = sockbypassd::daemon::start(daemon_config(dir, mode)?)?;
    println!(
        "==> sockbypassd serving CID 3 (server) and CID 4 (client), fast path on and paired, \
         --poll-mode {mode}, {reps} repetition(s)"
    );

    let plan = plan(args, reps);
    let guest = |name: &str, n: u8, command: String| GuestSpec {
        name: name.into(),
        memory_mib: 512,
        vsock_socket: Some(socket(dir, name)),
        nic: Some(Nic {
            tap: format!("sbptap{}", n - 3),
            mac: format!("52:54:00:5b:00:{n:02x}"),
            ip: format!("10.99.0.{n}/24"),
            vhost: setup.vhost,
        }),
        windows: guest_windows(dir, name),
        command,
        serial_log: setup.logs.join(format!("{name}.{mode}.serial.log")),
    };
    println!("==> booting the server guest");
    let mut server = QemuGuest::spawn(
        &guest(
            "server",
            3,
            "sbtool serve --vsock-port 5000 --tcp-port 5001 --fastpath".into(),
        ),
        setup.image,
        setup.acc,
        Some(setup.netns),
    )?;
    let t = server.wait_ready(BOOT)?;
    println!("    booted in {:.1} s", t.as_secs_f64());
    println!("==> booting the client guest");
    let mut client = QemuGuest::spawn(
        &guest("client", 4, plan.client_script()),
        setup.image,
        setup.acc,
        Some(setup.netns),
    )?;
    let t = client.wait_ready(BOOT)?;
    println!("    booted in {:.1} s", t.as_secs_f64());

    // CPU use from here to the last result: the measuring window (plus the client's wait for
    // the server, which is short once both have booted).
    let guests_cpu = |s: &QemuGuest, c: &QemuGuest| -> Option<Duration> {
        Some(cpu_time_of(s.pid()?)? + cpu_time_of(c.pid()?)?)
    };
    let started = Instant::now();
    let daemon_before = process_cpu_time();
    let guests_before = guests_cpu(&server, &client);

    // Follow the client's results as they come. The CPU of each measurement is what the daemon
    // and the guests used from the previous result to this one (when several arrive at once,
    // the interval goes to the last of them, and the others get none).
    let per_result = Duration::from_secs(u64::from(args.bulk_seconds) + 300);
    let mut seen = 0;
    let pids = (server.pid(), client.pid());
    let sample = || -> CpuMark {
        let guests = match pids {
            (Some(s), Some(c)) => cpu_time_of(s).zip(cpu_time_of(c)).map(|(a, b)| a + b),
            _ => None,
        };
        (Instant::now(), process_cpu_time(), guests)
    };
    let mut mark = sample();
    let mut cpu_of: Vec<Option<(f64, f64)>> = Vec::new();
    while seen < plan.expected_results() {
        let log = client.wait_for("the next measurement", per_result, |l| {
            results(l).len() > seen || l.contains("SB-EXIT")
        })?;
        let all = results(&log);
        let now = sample();
        let share = interval_cpu(&mark, &now);
        mark = now;
        let fresh = all.len().saturating_sub(seen);
        cpu_of.extend((0..fresh).map(|k| if k + 1 == fresh { share } else { None }));
        for r in &all[seen..] {
            print_result(&plan, r, seen);
            if let Some(Some((d, g))) = cpu_of.get(seen) {
                println!("           CPU: sockbypassd {d:.0}%, guests {g:.0}%");
            }
            seen += 1;
        }
        if all.len() == seen && log.contains("SB-EXIT") && seen < plan.expected_results() {
            return Err(format!(
                "the client guest stopped after {seen} results (serial log: {})",
                client.log_path().display()
            )
            .into());
        }
    }
    let wall = started.elapsed().as_secs_f64();
    let pct = |before: Option<Duration>, after: Option<Duration>| {
        Some(after?.checked_sub(before?)?.as_secs_f64() / wall * 100.0)
    };
    let daemon_cpu_percent = pct(daemon_before, process_cpu_time());
    let guests_cpu_percent = pct(guests_before, guests_cpu(&server, &client));
    let mut all = results(&client.log());
    for (r, cpu) in all.iter_mut().zip(&cpu_of) {
        if let (Some((d, g)), Some(obj)) = (cpu, r.as_object_mut()) {
            obj.insert("daemon_cpu_percent".into(), json!(d));
            obj.insert("guests_cpu_percent".into(), json!(g));
        }
    }
    let figures = aggregate(&plan, &all)?;
    let counters = (
        daemon.switch().counters("client"),
        daemon.switch().counters("server"),
    );
    let fastpath_counters = (
        daemon.fastpath_counters("client"),
        daemon.fastpath_counters("server"),
    );
    drop(client);
    drop(server);
    daemon.shutdown();
    // A run whose bypass bytes did not all cross sockbypassd measured something else: fail it.
    let through_daemon = through_daemon::check(
        through_daemon::bypass_bytes(&plan, &all),
        counters.0,
        counters.1,
    )?;
    // Likewise for host-copied fast-path bytes the copier did not carry, or direct ones it did.
    let fastpath_through_daemon = through_daemon::check_fastpath(
        through_daemon::fastpath_bytes(&plan, &all),
        fastpath_counters.0,
        fastpath_counters.1,
    )?;
    Ok(ModeRun {
        result: ModeFigures {
            mode: mode.to_owned(),
            reps,
            figures,
            daemon_cpu_percent,
            guests_cpu_percent,
        },
        through_daemon,
        fastpath_through_daemon,
    })
}

/// A CPU sample: when, the daemon's (this process's) CPU time, both guests' CPU time.
type CpuMark = (Instant, Option<Duration>, Option<Duration>);

/// The daemon's and the guests' CPU between two samples, in % of one core.
fn interval_cpu(from: &CpuMark, to: &CpuMark) -> Option<(f64, f64)> {
    let wall = to.0.checked_duration_since(from.0)?.as_secs_f64();
    if wall <= 0.0 {
        return None;
    }
    let pct = |a: Option<Duration>, b: Option<Duration>| {
        Some(b?.checked_sub(a?)?.as_secs_f64() / wall * 100.0)
    };
    Some((pct(from.1, to.1)?, pct(from.2, to.2)?))
}

fn print_result(plan: &Plan, r: &serde_json::Value, seen: usize) {
    let label = match plan.path_of_result(r) {
        Assignment::Path(p) => p.key(),
        Assignment::Fallback => "fast path FELL BACK to vsock",
        Assignment::Unknown => "?",
    };
    match r["mode"].as_str() {
        Some("rtt") => println!(
            "    [{}/{}] RTT {label}: p50 {:.1} µs, p99 {:.1} µs, mean {:.1} µs",
            seen + 1,
            plan.expected_results(),
            r["p50_us"].as_f64().unwrap_or(f64::NAN),
            r["p99_us"].as_f64().unwrap_or(f64::NAN),
            r["mean_us"].as_f64().unwrap_or(f64::NAN)
        ),
        Some("bulk") => println!(
            "    [{}/{}] bulk {label}: {:.3} Gb/s, verified: {}",
            seen + 1,
            plan.expected_results(),
            r["gbps"].as_f64().unwrap_or(f64::NAN),
            r["verified"]
        ),
        _ => println!("    {RESULT}{r}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The configuration is valid in every poll mode, and the windows the guests get are the
    /// files the daemon creates: each VM's own first, then the pair's, of the expected size.
    #[test]
    fn the_guests_get_the_windows_the_daemon_makes() {
        let dir = tempfile::tempdir().expect("temporary directory");
        for mode in ["adaptive", "poll", "event"] {
            let config = daemon_config(dir.path(), mode).expect(mode);
            assert!(config
                .vms
                .iter()
                .all(|vm| vm.fastpath_size == Some(16 << 20)));
            assert_eq!(config.pairs.len(), 1);
        }
        let dir = tempfile::tempdir().expect("temporary directory");
        let daemon =
            sockbypassd::daemon::start(daemon_config(dir.path(), "event").expect("config"))
                .expect("daemon starts");
        let made: Vec<PathBuf> = daemon
            .windows()
            .iter()
            .map(|w| w.path().to_path_buf())
            .collect();
        let (server, client) = (
            guest_windows(dir.path(), "server"),
            guest_windows(dir.path(), "client"),
        );
        // Own windows in configuration order, then the pair's.
        assert_eq!(
            made,
            [server[0].clone(), client[0].clone(), server[1].clone()]
        );
        assert_eq!(server[1], client[1], "both guests map the one pair window");
        for w in &made {
            assert_eq!(
                std::fs::metadata(w).map(|m| m.len()).ok(),
                Some(WINDOW_SIZE),
                "{w:?}"
            );
        }
        assert!(daemon.fastpath_counters("client").is_some());
        assert!(daemon.fastpath_counters("server").is_some());
        daemon.shutdown();
    }
}
