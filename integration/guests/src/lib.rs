//! Real guests under QEMU: the guest image, the accelerator choice, the network namespace for
//! the virtio-net baseline, QEMU processes attached to `sockbypassd`, and the results guests
//! print on their serial consoles; and the runs of the real `sockbypassd` binary with real
//! guests (`sockbypass-faults`, `sockbypass-soak`). The end-to-end tests
//! (`integration/device-tests/tests/e2e_guests.rs`) boot guests with it; the benchmark against
//! virtio-net (`sockbypass-benchmarks`) too.
//!
//! | module | job |
//! |---|---|
//! | [`image`] | builds or finds the guest kernel and initramfs (`integration/guest/build-image.sh`) |
//! | [`accel`] | choosing KVM or TCG: detection, a boot probe for a KVM that hangs, `SOCKBYPASS_ACCEL` |
//! | [`netns`] | a network namespace with a bridge and taps, deleted on drop |
//! | [`qemu`] | the accelerator type ([`qemu::Accel`]) and one QEMU process per guest: command line, serial log, kill by PID on drop |
//! | [`results`] | `SBRESULT {json}` lines and `SB-EXIT` markers from a serial log |
//! | [`serial_watch`] | a serial log followed line by line as it grows, with host-side times |
//! | [`sbtool`] | guest shell lines around `sbtool` (waiting for a server) |
//! | [`interrupt`] | Ctrl-C and SIGTERM turned into a flag the long runs check |
//! | [`realdaemon`] | the real `sockbypassd` binary with real guests: fault cycles and the soak |
//!
//! Every process and namespace here belongs to an owner value whose `Drop` ends it, so a
//! failing test or a Ctrl-C'd benchmark (see [`interrupt`]) leaves nothing behind.

#![warn(missing_docs)]

pub mod accel;
pub mod image;
pub mod interrupt;
pub mod netns;
pub mod qemu;
pub mod realdaemon;
pub mod results;
pub mod sbtool;
pub mod serial_watch;

use std::io;
use std::process::{Command, Output};

/// Errors starting or driving real guests.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// A command could not be started.
    #[error("cannot run `{command}`")]
    Spawn {
        /// The command line.
        command: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// A command ran and failed.
    #[error("`{command}` failed with {status}: {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// The last line of its stderr.
        stderr: String,
    },
    /// A file could not be read or written.
    #[error("{what} {path}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// A guest did not print what it should in time.
    #[error("guest `{guest}`: {what} (serial log: {log})")]
    Guest {
        /// The guest.
        guest: String,
        /// What went wrong.
        what: String,
        /// Its serial log.
        log: String,
    },
    /// Something this machine lacks.
    #[error("{0}")]
    Unavailable(String),
}

/// Runs `cmd` to completion and returns its output, or an error naming it.
pub fn run(cmd: &mut Command) -> Result<Output, GuestError> {
    let command = format!("{cmd:?}");
    let out = cmd.output().map_err(|source| GuestError::Spawn {
        command: command.clone(),
        source,
    })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(GuestError::Failed {
            command,
            status: out.status,
            stderr: stderr.trim().lines().last().unwrap_or("").to_owned(),
        });
    }
    Ok(out)
}
