//! The real `sockbypassd` binary as a child process, so that its memory is its own: spawned
//! with `--vm` specs and its log in a file, its RSS read from `/proc/PID/status`, its counters
//! and gauges read back from the report it logs on SIGUSR1, stopped by its PID (SIGTERM, then
//! SIGKILL after a deadline) when dropped. Should the owner itself be killed, the daemon gets
//! SIGKILL when the thread that spawned it ends (`PR_SET_PDEATHSIG`): spawn it from the main
//! thread.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sockbypass_measure::proc_status::status_field;

use super::snapshot::Snapshot;
use super::RealDaemonError;

/// How long the daemon may take to create its sockets.
const START_DEADLINE: Duration = Duration::from_secs(20);
/// How long it may take to stop after SIGTERM before it is killed.
const STOP_DEADLINE: Duration = Duration::from_secs(10);

/// Memory of a process from `/proc/PID/status`, KiB.
///
/// The daemon maps every attached guest's RAM (shared memory from QEMU), so its resident set
/// also counts the guest pages it has touched (`RssShmem`): rings and packet buffers, which
/// depend on where the guests put them. Its own allocations are `RssAnon`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    /// Resident set now (`VmRSS` = `RssAnon` + `RssFile` + `RssShmem`).
    pub rss_kib: u64,
    /// Peak resident set (`VmHWM`).
    pub hwm_kib: u64,
    /// Resident anonymous memory: heap, stacks (`RssAnon`).
    pub anon_kib: u64,
    /// Resident shared memory: the touched pages of mapped guest RAM (`RssShmem`).
    pub shmem_kib: u64,
}

impl Memory {
    /// Reads `/proc/<pid>/status`.
    pub fn of(pid: u32) -> Option<Memory> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let field = |name: &str| status_field(&status, name);
        Some(Memory {
            rss_kib: field("VmRSS:")?,
            hwm_kib: field("VmHWM:")?,
            anon_kib: field("RssAnon:")?,
            shmem_kib: field("RssShmem:")?,
        })
    }
}

/// A running `sockbypassd`.
#[derive(Debug)]
pub struct DaemonProcess {
    child: Option<Child>,
    log: PathBuf,
    vms: Vec<String>,
}

impl DaemonProcess {
    /// Starts `binary` with `args` (`--vm` specs and options; `--log-level info` is added so
    /// that its reports are logged), logging to `log`, and waits until every path of
    /// `sockets` exists. `vms` are the names whose figures [`DaemonProcess::snapshot`] waits for.
    pub fn spawn(
        binary: &Path,
        args: &[String],
        vms: Vec<String>,
        sockets: &[PathBuf],
        log: PathBuf,
    ) -> Result<DaemonProcess, RealDaemonError> {
        let file = File::create(&log).map_err(|source| RealDaemonError::Io {
            what: "cannot create",
            path: log.clone(),
            source,
        })?;
        let mut cmd = Command::new(binary);
        cmd.args(args)
            .args(["--log-level", "info"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file);
        // SAFETY: the closure runs in the child between fork and exec and only calls prctl,
        // which is async-signal-safe; it touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|source| RealDaemonError::Spawn {
            binary: binary.to_owned(),
            source,
        })?;
        let mut d = DaemonProcess {
            child: Some(child),
            log,
            vms,
        };
        let end = Instant::now() + START_DEADLINE;
        while !sockets.iter().all(|s| s.exists()) {
            if !d.is_running() {
                return Err(d.died("before creating its sockets"));
            }
            if Instant::now() >= end {
                return Err(d.died(&format!(
                    "still running, but its sockets did not appear within {START_DEADLINE:?}"
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(d)
    }

    /// The daemon's PID (0 once stopped).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Its log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The length of its log so far: an offset for [`DaemonProcess::log_since`].
    pub fn log_offset(&self) -> u64 {
        std::fs::metadata(&self.log).map_or(0, |m| m.len())
    }

    /// Its complete log lines from byte `offset` on.
    pub fn log_since(&self, offset: u64) -> String {
        let bytes = std::fs::read(&self.log).unwrap_or_default();
        let from = usize::try_from(offset).unwrap_or(usize::MAX);
        let fresh = bytes.get(from..).unwrap_or_default();
        let complete = fresh
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(&[][..], |i| &fresh[..=i]);
        String::from_utf8_lossy(complete).into_owned()
    }

    /// Whether it still runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    fn died(&mut self, when: &str) -> RealDaemonError {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        RealDaemonError::Daemon {
            what: when.to_owned(),
            last_log_line: log.trim().lines().last().unwrap_or("").to_owned(),
            log: self.log.clone(),
        }
    }

    /// Its memory now.
    pub fn memory(&mut self) -> Result<Memory, RealDaemonError> {
        if !self.is_running() {
            return Err(self.died("exited"));
        }
        Memory::of(self.pid()).ok_or_else(|| self.died("has no readable /proc/PID/status"))
    }

    /// Sends SIGUSR1 and waits (at most `timeout`) until the report it logs holds the gauges
    /// of every VM; returns the report.
    pub fn snapshot(&mut self, timeout: Duration) -> Result<Snapshot, RealDaemonError> {
        let start = self.log_offset();
        if !self.is_running() {
            return Err(self.died("exited"));
        }
        let pid = libc::pid_t::try_from(self.pid()).unwrap_or(0);
        // SAFETY: `pid` is our own child, not yet reaped (checked just above), so the PID
        // cannot have been reused; SIGUSR1 only makes it log.
        if unsafe { libc::kill(pid, libc::SIGUSR1) } != 0 {
            return Err(RealDaemonError::Signal(std::io::Error::last_os_error()));
        }
        let end = Instant::now() + timeout;
        loop {
            let snap = Snapshot::parse(&self.log_since(start));
            if snap.has_gauges_of(self.vms.iter().map(String::as_str)) {
                return Ok(snap);
            }
            if !self.is_running() {
                return Err(self.died("exited while reporting"));
            }
            if Instant::now() >= end {
                return Err(self.died(&format!("logged no full report within {timeout:?}")));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Stops it: SIGTERM, then SIGKILL if it has not exited within [`STOP_DEADLINE`]. Returns
    /// whether it stopped on SIGTERM with status 0.
    pub fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return false;
        };
        if let Ok(Some(status)) = child.try_wait() {
            return status.success();
        }
        let pid = libc::pid_t::try_from(child.id()).unwrap_or(0);
        // SAFETY: our own unreaped child (try_wait above saw it running), so the PID is its.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let end = Instant::now() + STOP_DEADLINE;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return status.success(),
                Ok(None) if Instant::now() < end => std::thread::sleep(Duration::from_millis(10)),
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return false;
                }
            }
        }
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        self.stop();
    }
}
