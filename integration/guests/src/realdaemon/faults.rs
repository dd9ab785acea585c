//! Fault cycles with real guests (`sockbypass-faults`, `ci/faults.sh`): guest A streams to
//! guest B through the real daemon; B's QEMU gets SIGKILL mid-stream; A must see its
//! connection reset within a limit; B restarts on the same vhost-user socket and a fresh
//! connection from A must move verified bytes. A boots once; only B restarts.
//!
//! Each cycle, in order:
//! 1. A runs `sbtool stream` to B's echo server; once 1 MiB came back intact it prints
//!    `SB-STREAM-FLOWING`. The host waits for that line, then a random 0–300 ms more, so the
//!    kill lands at a different point of the stream each time.
//! 2. The host takes the daemon's report (SIGUSR1), notes the time on its monotonic clock and
//!    sends SIGKILL to B's QEMU by PID.
//! 3. **Reset latency**: the time from just before that kill until the host reads A's
//!    `stream` result line from A's serial log (polled every millisecond). Everything is on
//!    the host's clock; the figure is an upper bound of "kill to A's program seeing the end":
//!    it also holds QEMU's exit, the daemon noticing the closed socket, the RST, A's kernel,
//!    sbtool printing and the serial console. A's own view is reported too (`guest_stall_ms`:
//!    from its last read of echo data to the end, on the guest's clock).
//! 4. The stream must have ended `"reset"`: on the guests' kernel (Linux 6.1 virtio vsock) a
//!    peer's RST shows as end of file on read or EPIPE on write, and nothing else can end it,
//!    B being dead; the daemon's report must show RSTs sent to A since step 2, and, within
//!    5 s, no connection entry left for A or B.
//! 5. B restarts on the same socket; A (after a 1 s pause, so that its probes of the restarting
//!    B do not mix with step 4's RST count) waits for B's server and runs `sbtool verify` on a
//!    fresh connection: every byte of 1 MiB must come back.
//! 6. The daemon's memory is read from `/proc/PID/status`.
//!
//! After the last cycle A closes everything; the daemon's report must show no connection
//! state at all, and its resident memory after the last cycle must be within a tolerance (10%)
//! of that after the first. The memory compared is `VmRSS - RssShmem`: the daemon maps each
//! guest's RAM, and the guest pages it touched (rings, packet buffers, wherever the guest put
//! them) count in its `VmRSS` as `RssShmem`; they are the guests' memory, and vary by hundreds
//! of KiB from cycle to cycle. `VmRSS` itself and `RssAnon` (heap and stacks) are reported too.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use super::log_time::first_time_of;
use super::rig::{Rig, VmDef, BOOT};
use super::snapshot::Snapshot;
use super::RealDaemonError;
use crate::qemu::QemuGuest;
use crate::results::{results, RESULT};
use crate::sbtool::wait_for_server;
use crate::serial_watch::SerialWatch;

/// B's echo server port.
pub const PORT: u32 = 5000;
/// The line `sbtool stream` prints once its stream flows.
pub const FLOWING: &str = "SB-STREAM-FLOWING";
/// The line A prints after its last cycle.
pub const DONE: &str = "SB-FAULTS-DONE";
const A_CID: u32 = 3;
const B_CID: u32 = 4;
/// Bytes of intact echo before A says its stream flows.
const FLOWING_AFTER: u64 = 1 << 20;
/// Longest wait for one step inside a guest (a boot is [`BOOT`]).
const STEP: Duration = Duration::from_secs(120);
/// How long the reset may take before the run stops waiting (the check is much tighter).
const RESET_WAIT: Duration = Duration::from_secs(30);
/// How long the daemon may take to free the dead VM's connection entries.
const FREE_WAIT: Duration = Duration::from_secs(5);
/// How long a report may take.
const REPORT_WAIT: Duration = Duration::from_secs(10);

/// What a run does.
#[derive(Debug, Clone)]
pub struct Params {
    /// Kill-and-restart cycles.
    pub cycles: u32,
    /// The `sockbypassd` binary.
    pub daemon: PathBuf,
    /// Its options besides the VMs.
    pub daemon_args: Vec<String>,
    /// The reset must reach A within this.
    pub max_reset: Duration,
    /// RSS after the last cycle within this many percent of RSS after the first.
    pub rss_tolerance_pct: f64,
    /// Bytes of the fresh connection after each restart.
    pub verify_bytes: u64,
    /// Seed of the kill delays.
    pub seed: u64,
    /// Guest RAM, MiB.
    pub memory_mib: u32,
    /// Where the run's logs are copied when it fails.
    pub failed_logs: PathBuf,
}

/// One cycle's measurements and findings.
#[derive(Debug, Clone, Default)]
pub struct Cycle {
    /// 1-based.
    pub n: u32,
    /// How long after A's stream flowed B was killed.
    pub kill_delay_ms: u64,
    /// Host clock: from just before the kill to A's stream result read (see the module docs).
    pub reset_ms: f64,
    /// Host clock: from just before the kill until QEMU was reaped (its sockets closed).
    pub qemu_gone_ms: f64,
    /// Host clock: from just before the kill to the daemon's "guest driver detached" log line
    /// for B (the daemon logs with the host's wall clock).
    pub detached_ms: Option<f64>,
    /// A's clock: from its last echo data to the end.
    pub guest_stall_ms: f64,
    /// How A's stream ended (`reset` expected) and what it saw.
    pub ended: String,
    /// The error or end A's stream saw.
    pub how: String,
    /// Bytes A's stream got back intact before the end.
    pub streamed_bytes: u64,
    /// RSTs the daemon sent A between the reports before and after the kill.
    pub rst_to_a: u64,
    /// Host clock: from the kill to the first report with no entry for A or B.
    pub freed_ms: Option<f64>,
    /// B's boot after the restart, seconds.
    pub boot_s: f64,
    /// The fresh connection's verify result.
    pub verify_ok: bool,
    /// Its bytes.
    pub verify_bytes: u64,
    /// The daemon's RSS after the cycle, KiB.
    pub rss_kib: u64,
    /// Its anonymous part (its own allocations), KiB.
    pub anon_kib: u64,
    /// Its shared part (touched guest RAM), KiB.
    pub shmem_kib: u64,
    /// Failed checks.
    pub problems: Vec<String>,
}

impl Cycle {
    /// The cycle as JSON.
    pub fn to_json(&self) -> Value {
        json!({
            "cycle": self.n, "kill_delay_ms": self.kill_delay_ms, "reset_ms": self.reset_ms,
            "qemu_gone_ms": self.qemu_gone_ms, "daemon_detached_ms": self.detached_ms,
            "guest_stall_ms": self.guest_stall_ms, "ended": self.ended, "how": self.how,
            "streamed_bytes": self.streamed_bytes, "rst_to_a": self.rst_to_a,
            "freed_ms": self.freed_ms, "b_boot_s": self.boot_s, "verify_ok": self.verify_ok,
            "verify_bytes": self.verify_bytes, "rss_kib": self.rss_kib,
            "rss_anon_kib": self.anon_kib, "rss_shmem_kib": self.shmem_kib, "problems": self.problems,
        })
    }

    /// One line for the console.
    pub fn line(&self) -> String {
        format!(
            "cycle {:>3}: reset seen {:>6.1} ms after the kill (QEMU gone {:.1} ms, daemon \
             detached B {}, A's stall {:.1} ms; {} after {:.1} MiB: {}), entries freed {}, B \
             rebooted in {:.1} s, fresh connection {} ({} B), RSS {} KiB (anon {}, guest RAM {}){}",
            self.n,
            self.reset_ms,
            self.qemu_gone_ms,
            self.detached_ms
                .map_or("-".into(), |ms| format!("{ms:.1} ms")),
            self.guest_stall_ms,
            self.ended,
            self.streamed_bytes as f64 / f64::from(1u32 << 20),
            self.how,
            self.freed_ms
                .map_or("NO".into(), |ms| format!("{ms:.0} ms")),
            self.boot_s,
            if self.verify_ok { "verified" } else { "FAILED" },
            self.verify_bytes,
            self.rss_kib,
            self.anon_kib,
            self.shmem_kib,
            if self.problems.is_empty() {
                String::new()
            } else {
                format!("  FAILED: {}", self.problems.join("; "))
            }
        )
    }
}

/// What a run found.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The cycles done, in order.
    pub cycles: Vec<Cycle>,
    /// The daemon's last report (after A closed everything).
    pub last_report: Option<Snapshot>,
    /// Why the run stopped early, if it did.
    pub error: Option<String>,
    /// Real guests cannot run on this machine (then `error` says why).
    pub cannot_run: bool,
    /// The accelerator and why.
    pub accel: String,
    /// QEMU's version.
    pub qemu: String,
    /// Whether the daemon exited with status 0 on SIGTERM at the end (`None`: never started).
    pub daemon_stopped_cleanly: Option<bool>,
}

/// A's script: `cycles` times a stream that B's death ends, a pause, and a fresh verify.
pub fn a_script(cycles: u32, verify_bytes: u64) -> String {
    let addr = format!("vsock:{B_CID}:{PORT}");
    let wait = wait_for_server(&addr);
    format!(
        "{wait}for i in $(seq 1 {cycles}); do\n\
         sbtool stream {addr} --flowing-after {FLOWING_AFTER} --seed $i --io-timeout-ms 30000\n\
         sleep 1\n\
         {wait}sbtool verify {addr} --bytes {verify_bytes} --seed $i\n\
         done\n\
         echo {DONE}\n\
         sleep 1000000\n"
    )
}

/// B's script: the echo server.
pub fn b_script() -> String {
    format!("sbtool serve --vsock-port {PORT}")
}

/// The VMs: A and B in one group, default limits.
pub fn vms() -> Vec<VmDef> {
    [("a", A_CID), ("b", B_CID)]
        .into_iter()
        .map(|(name, cid)| VmDef {
            name: name.into(),
            cid,
            keys: "groups=faults".into(),
        })
        .collect()
}

/// The guests and what follows A's console.
struct Guests {
    a: QemuGuest,
    b: QemuGuest,
    watch: SerialWatch,
}

fn is_result(line: &str) -> bool {
    line.contains(RESULT)
}

fn result_of(line: &str) -> Value {
    results(line).into_iter().next().unwrap_or(Value::Null)
}

fn boot(
    rig: &Rig,
    name: &str,
    memory: u32,
    cmd: &str,
) -> Result<(QemuGuest, f64), RealDaemonError> {
    let mut g = rig.spawn(name, memory, cmd)?;
    let t = g.wait_ready(BOOT)?;
    Ok((g, t.as_secs_f64()))
}

/// Takes reports until neither A nor B has a connection entry; returns the host time since
/// `since` of the first such report, or `None` after [`FREE_WAIT`], and the first report.
fn wait_freed(rig: &mut Rig, since: Instant) -> Result<(Option<f64>, Snapshot), RealDaemonError> {
    let end = Instant::now() + FREE_WAIT;
    let mut first = None;
    loop {
        let s = rig.daemon().snapshot(REPORT_WAIT)?;
        let at = since.elapsed().as_secs_f64() * 1e3;
        let free = s.vms.values().all(|v| v.gauge("peer_conns") == 0);
        let first = first.get_or_insert_with(|| s.clone()).clone();
        if free {
            return Ok((Some(at), first));
        }
        if Instant::now() >= end {
            return Ok((None, first));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One cycle (see the module docs).
fn cycle(
    n: u32,
    p: &Params,
    rig: &mut Rig,
    g: &mut Guests,
    rng: &mut impl Rng,
) -> Result<Cycle, RealDaemonError> {
    let mut c = Cycle {
        n,
        ..Cycle::default()
    };
    let (line, _) = g
        .watch
        .next_line(&mut g.a, "A's stream to flow", STEP, |l| {
            l.contains(FLOWING) || is_result(l)
        })?;
    if !line.contains(FLOWING) {
        return Err(RealDaemonError::Run(format!(
            "cycle {n}: A's stream ended before it flowed: {line}"
        )));
    }
    c.kill_delay_ms = rng.gen_range(0..=300);
    std::thread::sleep(Duration::from_millis(c.kill_delay_ms));
    let before = rig.daemon().snapshot(REPORT_WAIT)?;
    let log_offset = rig.daemon().log_offset();
    let killed_wall = SystemTime::now();
    let killed = Instant::now();
    g.b.kill();
    c.qemu_gone_ms = killed.elapsed().as_secs_f64() * 1e3;
    let (line, seen) = g
        .watch
        .next_line(&mut g.a, "A's stream to end", RESET_WAIT, is_result)?;
    c.reset_ms = seen.duration_since(killed).as_secs_f64() * 1e3;
    let r = result_of(&line);
    if r["mode"] != "stream" {
        return Err(RealDaemonError::Run(format!(
            "cycle {n}: expected A's stream result, got {line}"
        )));
    }
    c.ended = r["ended"].as_str().unwrap_or("?").to_owned();
    c.how = r["how"].as_str().unwrap_or("?").to_owned();
    c.streamed_bytes = r["verified"].as_u64().unwrap_or(0);
    c.guest_stall_ms = r["stall_ms"].as_f64().unwrap_or(f64::NAN);
    let (freed, after) = wait_freed(rig, killed)?;
    c.detached_ms = first_time_of(
        &rig.daemon().log_since(log_offset),
        "guest driver detached vm=b",
    )
    .and_then(|t| t.duration_since(killed_wall).ok())
    .map(|d| d.as_secs_f64() * 1e3);
    c.freed_ms = freed;
    let rst = |s: &Snapshot| s.vms.get("a").map_or(0, |v| v.counter("rst_sent"));
    c.rst_to_a = rst(&after).saturating_sub(rst(&before));

    if c.ended != "reset" {
        c.problems.push(format!(
            "A's stream ended {:?} ({}), not with a reset",
            c.ended, c.how
        ));
    }
    if !r["mismatch_at"].is_null() {
        c.problems.push(format!(
            "A's stream got a wrong byte at {}",
            r["mismatch_at"]
        ));
    }
    if c.reset_ms > p.max_reset.as_secs_f64() * 1e3 {
        c.problems.push(format!(
            "the reset took {:.1} ms (limit {:?})",
            c.reset_ms, p.max_reset
        ));
    }
    if c.rst_to_a == 0 {
        c.problems
            .push("the daemon sent A no RST after the kill".into());
    }
    if c.freed_ms.is_none() {
        c.problems.push(format!(
            "entries left {FREE_WAIT:?} after the kill: {}",
            after.connection_gauges_json()
        ));
    }

    let (b, boot_s) = boot(rig, "b", p.memory_mib, &b_script())?;
    g.b = b;
    c.boot_s = boot_s;
    let (line, _) = g
        .watch
        .next_line(&mut g.a, "A's fresh connection", STEP, is_result)?;
    let v = result_of(&line);
    c.verify_ok =
        v["mode"] == "verify" && v["ok"] == true && v["bytes"].as_u64() == Some(p.verify_bytes);
    c.verify_bytes = v["received"].as_u64().unwrap_or(0);
    if !c.verify_ok {
        c.problems
            .push(format!("the fresh connection failed: {line}"));
    }
    let m = rig.daemon().memory()?;
    (c.rss_kib, c.anon_kib, c.shmem_kib) = (m.rss_kib, m.anon_kib, m.shmem_kib);
    Ok(c)
}

/// Runs the cycles, printing a line per cycle through `say`. A step that cannot go on (a guest
/// or the daemon dies, a wait times out) ends the run early, with the cycles done so far.
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
    let mut rig = Rig::start(&p.daemon, &vms(), &p.daemon_args)?;
    out.accel = format!("{} ({})", rig.accel().qemu_name(), rig.accel_reason);
    out.qemu = rig.qemu.clone();
    say(&format!(
        "==> sockbypassd PID {} in {}; {}; {}",
        rig.daemon().pid(),
        rig.dir().display(),
        out.qemu,
        out.accel
    ));
    let result = (|| {
        let (b, _) = boot(&rig, "b", p.memory_mib, &b_script())?;
        let a = rig.spawn("a", p.memory_mib, &a_script(p.cycles, p.verify_bytes))?;
        let watch = SerialWatch::new(&rig.dir().join("a.serial.log"));
        let mut g = Guests { a, b, watch };
        let mut rng = rand::rngs::StdRng::seed_from_u64(p.seed);
        for n in 1..=p.cycles {
            let c = cycle(n, p, &mut rig, &mut g, &mut rng)?;
            say(&c.line());
            out.cycles.push(c);
        }
        g.watch
            .next_line(&mut g.a, "A's last line", STEP, |l| l.contains(DONE))?;
        // A closed its last connection: the daemon must come to hold nothing.
        let end = Instant::now() + FREE_WAIT;
        loop {
            let s = rig.daemon().snapshot(REPORT_WAIT)?;
            let nothing = s.holds_nothing();
            out.last_report = Some(s);
            if nothing || Instant::now() >= end {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    })();
    if result.is_err() || out.cycles.iter().any(|c| !c.problems.is_empty()) {
        match rig.keep_logs(&p.failed_logs) {
            Ok(n) => say(&format!(
                "==> kept {n} log files in {}",
                p.failed_logs.display()
            )),
            Err(e) => say(&format!("==> could not keep the logs: {e}")),
        }
    }
    out.daemon_stopped_cleanly = Some(rig.daemon().stop());
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_streams_pauses_and_verifies_once_per_cycle() {
        let s = a_script(7, 4096);
        assert!(s.contains("for i in $(seq 1 7)"), "{s}");
        assert_eq!(s.matches("sbtool stream vsock:4:5000").count(), 1, "{s}");
        assert!(
            s.contains("sbtool verify vsock:4:5000 --bytes 4096 --seed $i"),
            "{s}"
        );
        let (stream, verify, done) = (
            s.find("sbtool stream").unwrap_or(usize::MAX),
            s.find("sbtool verify").unwrap_or(0),
            s.find(DONE).unwrap_or(0),
        );
        assert!(stream < verify && verify < done, "{s}");
        assert!(s.contains("sleep 1\n"), "{s}");
        assert_eq!(vms().len(), 2);
    }
}
