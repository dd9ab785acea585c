//! What every client mode shares: the connect and I/O timeouts, `--fastpath`, opening a
//! connection, and the service handshake.

use std::io::{Read, Write};
use std::time::Duration;

use clap::Args;
use sockbypass_guest::FastPath;
use socket2::Socket;

use crate::addr::Addr;
use crate::conn::{self, Conn};
use crate::error::{io, Error, Result};
use crate::net;
use crate::server::ECHO;
use crate::watchdog::{self, Op};

/// Options of every client mode that moves data.
#[derive(Debug, Clone, Copy, Args)]
pub struct ClientOpts {
    /// Give up connecting after this many ms (0: the kernel's own limit).
    #[arg(long, default_value_t = 10_000)]
    pub connect_timeout_ms: u64,
    /// Fail a read or write that makes no progress for this many ms (0: wait forever).
    /// Fast-path streams: a stall ends the whole command (see `--fastpath`).
    #[arg(long, default_value_t = 60_000)]
    pub io_timeout_ms: u64,
    /// Connect through the fast path (sockbypass-guest: shared-memory windows, control channel
    /// to CID 2); falls back to plain vsock where the daemon says so. Needs a vsock address.
    /// rtt, bulk, verify and many only.
    #[arg(long)]
    pub fastpath: bool,
    /// With `--fastpath`: ask the daemon for this placement only (host-copied or direct);
    /// one it cannot give falls back to plain vsock. Default: the daemon chooses.
    #[arg(long, value_enum, requires = "fastpath")]
    pub placement: Option<PlacementArg>,
}

/// `--placement`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PlacementArg {
    /// Each side's rings in its own window; the daemon copies.
    HostCopied,
    /// The pair window's rings, shared by the two VMs.
    Direct,
}

fn ms(v: u64) -> Option<Duration> {
    (v > 0).then(|| Duration::from_millis(v))
}

impl ClientOpts {
    /// `--connect-timeout-ms` (`None`: no limit of its own).
    pub fn connect_timeout(&self) -> Option<Duration> {
        ms(self.connect_timeout_ms)
    }

    /// `--io-timeout-ms` (`None`: wait forever).
    pub fn io_timeout(&self) -> Option<Duration> {
        ms(self.io_timeout_ms)
    }

    /// Connects a plain socket to `addr` and applies the I/O timeout.
    pub fn open(&self, addr: &Addr) -> Result<Socket> {
        let sock = net::connect(addr, self.connect_timeout())?;
        net::set_io_timeout(&sock, self.io_timeout())?;
        Ok(sock)
    }

    /// Checks `--fastpath` against `addr` and, with it, opens the fast-path library (once per
    /// command; every connection of the command goes through it).
    pub fn fastpath_for(&self, addr: &Addr) -> Result<Option<FastPath>> {
        conn::check_fastpath_addr(self.fastpath, addr)?;
        if !self.fastpath {
            return Ok(None);
        }
        let _armed = watchdog::arm(Op::Open, self.connect_timeout());
        let mut fp = conn::open_fastpath()?;
        fp.set_placement(self.placement.map(|p| match p {
            PlacementArg::HostCopied => sockbypass_guest::Placement::HostCopied,
            PlacementArg::Direct => sockbypass_guest::Placement::Direct,
        }));
        Ok(Some(fp))
    }

    /// Connects to `addr`: through `fp` (from [`ClientOpts::fastpath_for`]) if given.
    pub fn connect(&self, addr: &Addr, fp: Option<&FastPath>) -> Result<Conn> {
        conn::connect(addr, self, fp)
    }

    /// Fails for the modes that have no fast path (`stream`, `soak`).
    pub fn no_fastpath(&self, mode: &str) -> Result<()> {
        if self.fastpath {
            return Err(Error::Usage(format!("{mode} has no --fastpath")));
        }
        Ok(())
    }
}

/// Sends the service byte `service`.
pub fn hello<W: Write>(mut w: W, service: u8) -> Result<()> {
    w.write_all(&[service]).map_err(io("write (service byte)"))
}

/// Opens an echo connection: sends [`ECHO`] and reads it back.
pub fn hello_echo<S: Read + Write>(mut s: S) -> Result<()> {
    hello(&mut s, ECHO)?;
    let mut back = [0u8; 1];
    net::read_exact(&mut s, &mut back, "echo of the service byte")?;
    if back[0] != ECHO {
        return Err(Error::Protocol(format!(
            "the peer answered {:#04x} to the echo service byte, not 'E'",
            back[0]
        )));
    }
    Ok(())
}
