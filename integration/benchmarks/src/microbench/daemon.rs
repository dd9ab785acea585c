//! The switch under test: an in-process `sockbypassd` serving up to 16 simulated VMs, all in
//! one group, in one poll mode.

use std::path::PathBuf;

use sockbypassd::config::{DaemonConfig, PollConfig, PollMode, SeccompMode, VmConfig};
use sockbypassd::daemon::DaemonHandle;
use sockbypassd::poll::PollCountersSnapshot;

use super::bench_vm::BenchVm;
use super::pair::{spin_until, Pair};
use crate::error::MicrobenchError;

/// First CID handed out; VM `i` gets `FIRST_CID + i`.
const FIRST_CID: u64 = 3;
/// Port B listens on (nothing listens: the pair does the handshake itself).
const PORT: u32 = 5000;

/// Totals over every VM and poll thread, to show what the poll engine suppressed.
#[derive(Clone, Copy, Debug, Default)]
pub struct EngineTotals {
    /// Kicks the VMs' drivers sent (eventfd writes the daemon received).
    pub kicks_received: u64,
    /// Interrupts the daemon sent (call eventfd writes).
    pub interrupts_sent: u64,
    /// Packets the switch forwarded between VMs.
    pub forwarded: u64,
    /// Poll-thread loops.
    pub loops: u64,
    /// Poll-thread loops that moved something.
    pub useful_loops: u64,
    /// Times a poll thread went to sleep.
    pub sleeps: u64,
    /// Packets-per-batch histogram summed over the poll threads (buckets 1, 2-3, 4-7 ...
    /// 128+, as `sockbypassd::poll::BATCH_BUCKETS` says).
    pub batch_histogram: [u64; 8],
}

/// A running daemon and the directory holding its sockets (both go away on drop).
#[derive(Debug)]
pub struct BenchDaemon {
    daemon: Option<DaemonHandle>,
    dir: tempfile::TempDir,
    names: Vec<String>,
}

impl BenchDaemon {
    /// Starts a daemon for `vms` VMs with `poll` settings, confined as it ships (the default
    /// `--seccomp kill`).
    pub fn start(vms: usize, poll: PollConfig) -> Result<BenchDaemon, MicrobenchError> {
        BenchDaemon::start_with(vms, poll, SeccompMode::default())
    }

    /// [`BenchDaemon::start`] with the seccomp filter's mode.
    pub fn start_with(
        vms: usize,
        poll: PollConfig,
        seccomp: SeccompMode,
    ) -> Result<BenchDaemon, MicrobenchError> {
        let dir = tempfile::tempdir().map_err(MicrobenchError::TempDir)?;
        let names: Vec<String> = (0..vms).map(|i| format!("vm{i}")).collect();
        let config = DaemonConfig {
            poll,
            seccomp,
            ..DaemonConfig::with_vms(
                names
                    .iter()
                    .zip(FIRST_CID..)
                    .map(|(name, cid)| VmConfig {
                        groups: vec!["bench".into()],
                        ..VmConfig::new(name.clone(), cid, dir.path().join(format!("{name}.sock")))
                    })
                    .collect(),
            )
        };
        config.validate()?;
        let daemon = sockbypassd::daemon::start(config)?;
        Ok(BenchDaemon {
            daemon: Some(daemon),
            dir,
            names,
        })
    }

    fn socket(&self, vm: usize) -> PathBuf {
        self.dir.path().join(format!("{}.sock", self.names[vm]))
    }

    /// Attaches VMs `2i` and `2i + 1` and connects them. `rx_interrupts`: whether the receiver
    /// asks for RX interrupts (a guest that would sleep) or polls.
    pub fn pair(&self, i: usize, rx_interrupts: bool) -> Result<Pair, MicrobenchError> {
        let a = BenchVm::connect(&self.socket(2 * i), false)?;
        let b = BenchVm::connect(&self.socket(2 * i + 1), rx_interrupts)?;
        // The daemon binds a VM on its first ring event, after the frontend's connect returns;
        // until then a REQUEST to it is refused, as for any detached VM.
        for vm in [2 * i, 2 * i + 1] {
            spin_until("waiting for the daemon to attach a VM", || {
                std::thread::sleep(std::time::Duration::from_millis(1));
                Ok(self.is_attached(vm))
            })?;
        }
        let port = PORT + 2 * u32::try_from(i).unwrap_or(0);
        Pair::connect(a, b, port)
    }

    fn is_attached(&self, vm: usize) -> bool {
        self.daemon
            .as_ref()
            .and_then(|d| {
                d.switch()
                    .vm_by_name(&self.names[vm])
                    .map(|v| v.is_attached())
            })
            .unwrap_or(false)
    }

    /// Counter totals so far.
    pub fn totals(&self) -> EngineTotals {
        let mut t = EngineTotals::default();
        let Some(d) = &self.daemon else { return t };
        for name in &self.names {
            if let Some(c) = d.switch().counters(name) {
                t.kicks_received += c.kicks_received;
                t.interrupts_sent += c.interrupts_sent;
                t.forwarded += c.fwd_packets;
            }
        }
        for p in d.poll_counters() {
            t.loops += p.loops;
            t.useful_loops += p.useful_loops;
            t.sleeps += p.sleeps;
            for (sum, n) in t.batch_histogram.iter_mut().zip(p.batch_histogram()) {
                *sum += n;
            }
        }
        t
    }

    /// VM `vm`'s counters.
    pub fn counters(&self, vm: usize) -> Option<sockbypassd::metrics::VmCountersSnapshot> {
        self.daemon.as_ref()?.switch().counters(self.names.get(vm)?)
    }

    /// VM `vm`'s live state (held packets, queued replies...).
    pub fn gauges(&self, vm: usize) -> Option<sockbypassd::switch::VmGauges> {
        self.daemon.as_ref()?.switch().gauges(self.names.get(vm)?)
    }

    /// The poll threads' counters (empty in event mode).
    pub fn poll_counters(&self) -> Vec<PollCountersSnapshot> {
        self.daemon
            .as_ref()
            .map(DaemonHandle::poll_counters)
            .unwrap_or_default()
    }
}

impl Drop for BenchDaemon {
    fn drop(&mut self) {
        if let Some(d) = self.daemon.take() {
            d.shutdown();
        }
    }
}

/// Poll settings for `mode` with the daemon's defaults otherwise.
pub fn poll_config(mode: PollMode, threads: u32, budget_us: u64) -> PollConfig {
    PollConfig {
        mode,
        threads,
        budget_us,
        cpus: None,
    }
}
