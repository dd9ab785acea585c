//! The soak (`sockbypass-soak`, `ci/soak.sh`): a thousand connections open at once across four
//! guests for ten minutes (all configurable), mixed sizes, every byte verified by its receiver,
//! through the real daemon binary.
//!
//! Guest `i` (CID 3 + i) runs `sbtool serve` and `sbtool soak` with `conns / guests` slots;
//! its slots are spread evenly over the other guests (slot `j` talks to the `j mod (guests -
//! 1)`-th of them). A slot keeps one connection open all the time, replacing it after each
//! session (echo messages of 1 B to 64 KiB, or a bulk stream of up to 4 MiB to a sink), the next
//! opened before the last closes (see `sbtool soak`).
//!
//! **Limits.** A VM-to-VM connection counts against `max_conns` of both its VMs. With 1,000
//! connections over 4 guests each guest takes part in 500 at once: its own 250 and 250 from the
//! others; while slots replace connections that can briefly double, so at most 1,000. Each VM is
//! configured with `max_conns=1024` (the ceiling) and `max_conns_per_peer=512`; one other guest
//! opens at most 2 × 84 to it. The daemon's `drop_conn_limit` counter must stay 0.
//!
//! **What the host checks.** The daemon's connection table (sampled through its SIGUSR1 report
//! every few seconds) must reach `conns` entries and then hold at least that many until the
//! first guest's run ends; every guest's `sbtool soak` must report no failure, every connection
//! it opened completed and verified; after the clients close, the table must be empty. It
//! reports the daemon's peak RSS (`VmHWM`), its RSS over time, connections opened and bytes
//! verified.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::process::Memory;
use super::rig::{Rig, VmDef, BOOT};
use super::snapshot::Snapshot;
use super::RealDaemonError;
use crate::interrupt;
use crate::qemu::QemuGuest;
use crate::results::{results, RESULT};
use crate::sbtool::wait_for_server;
use crate::serial_watch::SerialWatch;

/// Every guest's server port.
pub const PORT: u32 = 5000;
/// Printed by a guest when its soak starts.
pub const START: &str = "SB-SOAK-START";
/// The first guest's CID.
const FIRST_CID: u32 = 3;
/// How long a report may take.
const REPORT_WAIT: Duration = Duration::from_secs(20);
/// How long after its time a guest's soak may take to finish its last sessions.
const FINISH_WAIT: Duration = Duration::from_secs(180);
/// How long the daemon may take to free everything after the last client closed.
const EMPTY_WAIT: Duration = Duration::from_secs(30);

/// What a soak does.
#[derive(Debug, Clone)]
pub struct Params {
    /// How long each guest's clients run.
    pub seconds: u64,
    /// Guests.
    pub guests: u32,
    /// Connections open at once, in all.
    pub conns: u32,
    /// The `sockbypassd` binary.
    pub daemon: PathBuf,
    /// Its options besides the VMs.
    pub daemon_args: Vec<String>,
    /// Guest RAM, MiB.
    pub memory_mib: u32,
    /// Every this-many-th slot streams bulk data.
    pub bulk_every: u32,
    /// Largest bulk session, bytes.
    pub bulk_max: u64,
    /// How often the daemon is sampled.
    pub sample_every: Duration,
    /// How long after the last guest started the table must hold `conns` entries.
    pub ramp: Duration,
    /// `max_conns` of every VM.
    pub max_conns: u32,
    /// `max_conns_per_peer` of every VM.
    pub max_conns_per_peer: u32,
    /// The guests' connect timeout, ms (`sbtool soak --connect-timeout-ms`).
    pub connect_timeout_ms: u64,
    /// Where the run's logs are copied when it fails.
    pub failed_logs: PathBuf,
}

impl Params {
    /// Slots of guest `i` (the remainder goes to the first guests).
    pub fn slots_of(&self, i: u32) -> u32 {
        self.conns / self.guests + u32::from(i < self.conns % self.guests)
    }

    /// Guest `i`'s name.
    pub fn name(i: u32) -> String {
        format!("g{i}")
    }

    /// The VMs: one group, the limits of [`Params`].
    pub fn vms(&self) -> Vec<VmDef> {
        (0..self.guests)
            .map(|i| VmDef {
                name: Self::name(i),
                cid: FIRST_CID + i,
                keys: format!(
                    "groups=soak,max_conns={},max_conns_per_peer={}",
                    self.max_conns, self.max_conns_per_peer
                ),
            })
            .collect()
    }

    /// Guest `i`'s script: the server, a wait for every other guest's server, the soak.
    pub fn script(&self, i: u32) -> String {
        let targets: Vec<String> = (1..self.guests)
            .map(|k| format!("vsock:{}:{PORT}", FIRST_CID + (i + k) % self.guests))
            .collect();
        let waits: String = targets.iter().map(|t| wait_for_server(t)).collect();
        format!(
            "sbtool serve --vsock-port {PORT} &\n{waits}echo {START}\n\
             sbtool soak {} --conns {} --seconds {} --seed {} --bulk-every {} --bulk-max {} \
             --connect-timeout-ms {}\n\
             sleep 1000000\n",
            targets.join(" "),
            self.slots_of(i),
            self.seconds,
            i + 1,
            self.bulk_every,
            self.bulk_max,
            self.connect_timeout_ms,
        )
    }
}

/// One look at the daemon.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Seconds since the last guest started its soak (negative before).
    pub at_s: f64,
    /// VM-to-VM connection entries.
    pub entries: u64,
    /// Each VM's `peer_conns`.
    pub per_vm: Vec<u64>,
    /// The daemon's memory.
    pub memory: Memory,
}

/// What a soak found.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Each guest's `soak` result, in guest order.
    pub guest_results: Vec<Value>,
    /// Samples of the daemon, in order.
    pub samples: Vec<Sample>,
    /// Seconds from the last guest's start to the first guest's scheduled end: the window in
    /// which every slot of every guest is open.
    pub steady_until_s: f64,
    /// The report after the clients closed (the table must be empty).
    pub end_report: Option<Snapshot>,
    /// Seconds from the last result to an empty table.
    pub emptied_after_s: Option<f64>,
    /// The daemon's peak RSS (`VmHWM`) at the end, KiB.
    pub peak_rss_kib: u64,
    /// Its memory at the end, after the clients closed.
    pub end_memory: Option<Memory>,
    /// Whether the daemon exited with status 0 on SIGTERM at the end (`None`: never started).
    pub daemon_stopped_cleanly: Option<bool>,
    /// Why the run stopped early, if it did.
    pub error: Option<String>,
    /// Real guests cannot run on this machine (then `error` says why).
    pub cannot_run: bool,
    /// The accelerator and why.
    pub accel: String,
    /// QEMU's version.
    pub qemu: String,
}

fn sample(rig: &mut Rig, zero: Instant, names: &[String]) -> Result<Sample, RealDaemonError> {
    let s = rig.daemon().snapshot(REPORT_WAIT)?;
    let memory = rig.daemon().memory()?;
    let at = Instant::now();
    let at_s = if at >= zero {
        at.duration_since(zero).as_secs_f64()
    } else {
        -zero.duration_since(at).as_secs_f64()
    };
    Ok(Sample {
        at_s,
        entries: s.peer_entries(),
        per_vm: names
            .iter()
            .map(|n| s.vms.get(n).map_or(0, |v| v.gauge("peer_conns")))
            .collect(),
        memory,
    })
}

/// Runs the soak, printing progress through `say`. A step that cannot go on ends it early.
pub fn run(p: &Params, say: &mut dyn FnMut(&str)) -> Outcome {
    let mut out = Outcome::default();
    if let Err(e) = run_into(p, say, &mut out) {
        out.cannot_run = matches!(e, RealDaemonError::CannotRun(_));
        out.error = Some(sockbypassd::error_chain(&e));
    }
    out
}

fn run_into(
    p: &Params,
    say: &mut dyn FnMut(&str),
    out: &mut Outcome,
) -> Result<(), RealDaemonError> {
    if p.guests < 2 {
        return Err(RealDaemonError::Run(
            "a soak needs at least 2 guests".into(),
        ));
    }
    let mut rig = Rig::start(&p.daemon, &p.vms(), &p.daemon_args)?;
    out.accel = format!("{} ({})", rig.accel().qemu_name(), rig.accel_reason);
    out.qemu = rig.qemu.clone();
    say(&format!(
        "==> sockbypassd PID {} in {}; {}; {}",
        rig.daemon().pid(),
        rig.dir().display(),
        out.qemu,
        out.accel
    ));
    let names: Vec<String> = (0..p.guests).map(Params::name).collect();
    let result = soak(p, &mut rig, &names, say, out);
    if result.is_err() || out.guest_results.iter().any(|r| r["ok"] != true) {
        match rig.keep_logs(&p.failed_logs) {
            Ok(n) => say(&format!(
                "==> kept {n} log files in {}",
                p.failed_logs.display()
            )),
            Err(e) => say(&format!("==> could not keep the logs: {e}")),
        }
    }
    if let Ok(m) = rig.daemon().memory() {
        out.peak_rss_kib = m.hwm_kib;
        out.end_memory = Some(m);
    }
    out.daemon_stopped_cleanly = Some(rig.daemon().stop());
    result
}

fn soak(
    p: &Params,
    rig: &mut Rig,
    names: &[String],
    say: &mut dyn FnMut(&str),
    out: &mut Outcome,
) -> Result<(), RealDaemonError> {
    let mut guests: Vec<QemuGuest> = Vec::new();
    for (i, name) in (0..p.guests).zip(names) {
        guests.push(rig.spawn(name, p.memory_mib, &p.script(i))?);
    }
    for g in &mut guests {
        let t = g.wait_ready(BOOT)?;
        say(&format!("==> {} booted in {t:.1?}", g.name()));
    }
    let mut watches: Vec<SerialWatch> = guests
        .iter()
        .map(|g| SerialWatch::new(g.log_path()))
        .collect();
    let mut starts = Vec::new();
    for (g, w) in guests.iter_mut().zip(&mut watches) {
        let (_, at) = w.next_line(g, "the soak's start", BOOT, |l| l.contains(START))?;
        starts.push(at);
    }
    let zero = starts.iter().copied().max().unwrap_or_else(Instant::now);
    let first = starts.iter().copied().min().unwrap_or(zero);
    let seconds = Duration::from_secs(p.seconds);
    out.steady_until_s = (first + seconds)
        .saturating_duration_since(zero)
        .as_secs_f64();
    say(&format!(
        "==> every guest soaking ({} connections, {} s); sampling the daemon every {:?}",
        p.conns, p.seconds, p.sample_every
    ));
    let deadline = zero + seconds + FINISH_WAIT;
    let mut results: Vec<Option<Value>> = vec![None; guests.len()];
    let mut next_sample = Instant::now();
    while results.iter().any(Option::is_none) {
        if interrupt::interrupted() {
            return Err(RealDaemonError::Run("interrupted".into()));
        }
        if Instant::now() >= deadline {
            return Err(RealDaemonError::Run(format!(
                "not every guest finished its soak within {:?} of its time",
                FINISH_WAIT
            )));
        }
        for ((g, w), r) in guests.iter_mut().zip(&mut watches).zip(&mut results) {
            if r.is_some() {
                continue;
            }
            if let Some((line, _)) =
                w.try_next_line(|l| l.contains(RESULT) && l.contains("\"soak\""))
            {
                // A kernel message cut into the line makes it unparsable: a failure too.
                *r = Some(results_of_line(&line).unwrap_or_else(
                    || serde_json::json!({"mode": "soak", "ok": false, "unparsable": line}),
                ));
                say(&format!("==> {}: {line}", g.name()));
            } else if !g.is_running() {
                return Err(RealDaemonError::Run(format!(
                    "{}'s QEMU exited during the soak (log {})",
                    g.name(),
                    g.log_path().display()
                )));
            }
        }
        if Instant::now() >= next_sample {
            next_sample += p.sample_every;
            let s = sample(rig, zero, names)?;
            say(&format!(
                "    t={:>6.1} s: {} connection entries (per VM {:?}), daemon RSS {} KiB \
                 (anon {}, guest RAM {})",
                s.at_s,
                s.entries,
                s.per_vm,
                s.memory.rss_kib,
                s.memory.anon_kib,
                s.memory.shmem_kib
            ));
            out.samples.push(s);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    out.guest_results = results.into_iter().flatten().collect();
    let done = Instant::now();
    let end = done + EMPTY_WAIT;
    loop {
        let s = rig.daemon().snapshot(REPORT_WAIT)?;
        let empty = s.holds_nothing();
        out.end_report = Some(s);
        if empty {
            out.emptied_after_s = Some(done.elapsed().as_secs_f64());
            break;
        }
        if Instant::now() >= end {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

fn results_of_line(line: &str) -> Option<Value> {
    results(line).into_iter().next()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(conns: u32, guests: u32) -> Params {
        Params {
            seconds: 60,
            guests,
            conns,
            daemon: PathBuf::from("sockbypassd"),
            daemon_args: Vec::new(),
            memory_mib: 512,
            bulk_every: 4,
            bulk_max: 1 << 20,
            sample_every: Duration::from_secs(5),
            ramp: Duration::from_secs(30),
            max_conns: 1024,
            max_conns_per_peer: 512,
            connect_timeout_ms: 10_000,
            failed_logs: PathBuf::from("logs"),
        }
    }

    #[test]
    fn slots_add_up_and_spread_over_the_other_guests() {
        for (conns, guests) in [(1000, 4), (1001, 4), (10, 3), (7, 2)] {
            let p = params(conns, guests);
            let total: u32 = (0..guests).map(|i| p.slots_of(i)).sum();
            assert_eq!(total, conns, "{conns} over {guests}");
        }
        let p = params(1000, 4);
        let script = p.script(1);
        assert!(
            script.contains("sbtool soak vsock:5:5000 vsock:6:5000 vsock:3:5000 --conns 250"),
            "{script}"
        );
        assert!(
            !script.contains("vsock:4:5000"),
            "no guest talks to itself: {script}"
        );
        assert!(script.contains(START));
        assert_eq!(p.vms().len(), 4);
        assert!(p.vms()[3]
            .keys
            .contains("max_conns=1024,max_conns_per_peer=512"));
    }

    #[test]
    fn the_limits_fit_the_worst_moment() {
        // Each guest: its own slots and the ones aimed at it, each doubled while replaced.
        let p = params(1000, 4);
        let own = p.slots_of(0);
        let incoming: u32 = (1..4).map(|i| p.slots_of(i).div_ceil(3)).sum();
        assert!(2 * (own + incoming) <= p.max_conns, "{own} + {incoming}");
        assert!(2 * p.slots_of(1).div_ceil(3) <= p.max_conns_per_peer);
    }
}
