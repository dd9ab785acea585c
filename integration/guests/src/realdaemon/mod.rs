//! The real `sockbypassd` binary with real guests, for the fault and soak runs
//! (`ci/faults.sh`, `ci/soak.sh`): unlike the in-process daemon of the tests, its memory and
//! its failures are its own.
//!
//! | module | job |
//! |---|---|
//! | [`log_time`] | the time stamps of the daemon's log lines, to place its events on the host clock |
//! | [`process`] | the daemon as a child process: spawn, RSS, SIGUSR1 reports, stop by PID |
//! | [`snapshot`] | its SIGUSR1 report (per-VM counters and gauges) parsed |
//! | [`rig`] | a work directory, the daemon, the guest image: boots guests on its sockets |
//! | [`faults`] | `sockbypass-faults`: a guest's QEMU killed mid-stream, again and again |
//! | [`faults_summary`] | the checks and the results document of a fault run |
//! | [`soak`] | `sockbypass-soak`: a thousand verified connections across four guests |
//! | [`soak_summary`] | the checks and the results document of a soak |
//! | [`summary`] | changes in percent, results JSON files |

pub mod faults;
pub mod faults_summary;
pub mod log_time;
pub mod process;
pub mod rig;
pub mod snapshot;
pub mod soak;
pub mod soak_summary;
pub mod summary;

use std::path::PathBuf;

use crate::GuestError;

/// Errors of the fault and soak runs.
#[derive(Debug, thiserror::Error)]
pub enum RealDaemonError {
    /// The daemon binary could not be started.
    #[error("cannot start {}", binary.display())]
    Spawn {
        /// The binary.
        binary: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The daemon died or misbehaved.
    #[error("sockbypassd {what} (last log line: {last_log_line:?}; log: {})", log.display())]
    Daemon {
        /// What happened.
        what: String,
        /// The last line it logged.
        last_log_line: String,
        /// Its log file.
        log: PathBuf,
    },
    /// A signal could not be sent.
    #[error("cannot signal sockbypassd")]
    Signal(#[source] std::io::Error),
    /// A file could not be read or written.
    #[error("{what} {}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Starting or driving a guest failed.
    #[error(transparent)]
    Guest(#[from] GuestError),
    /// Real guests cannot run here: the guest image cannot be built, QEMU cannot start or no
    /// accelerator can be chosen. With `CI=true` a failure; elsewhere the run is skipped.
    #[error("real guests cannot run here: {0}")]
    CannotRun(#[source] GuestError),
    /// A guest reported something unexpected or nothing in time.
    #[error("{0}")]
    Run(String),
}
