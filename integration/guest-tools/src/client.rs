//! What every client mode shares: the connect and I/O timeouts, opening a connection, and
//! the service handshake.

use std::io::Write;
use std::time::Duration;

use clap::Args;
use socket2::Socket;

use crate::addr::Addr;
use crate::error::{io, Error, Result};
use crate::net;
use crate::server::ECHO;

/// Options of every client mode that moves data.
#[derive(Debug, Clone, Copy, Args)]
pub struct ClientOpts {
    /// Give up connecting after this many ms (0: the kernel's own limit).
    #[arg(long, default_value_t = 10_000)]
    pub connect_timeout_ms: u64,
    /// Fail a read or write that makes no progress for this many ms (0: wait forever).
    #[arg(long, default_value_t = 60_000)]
    pub io_timeout_ms: u64,
}

fn ms(v: u64) -> Option<Duration> {
    (v > 0).then(|| Duration::from_millis(v))
}

impl ClientOpts {
    /// Connects to `addr` and applies the I/O timeout.
    pub fn open(&self, addr: &Addr) -> Result<Socket> {
        let sock = net::connect(addr, ms(self.connect_timeout_ms))?;
        net::set_io_timeout(&sock, ms(self.io_timeout_ms))?;
        Ok(sock)
    }
}

/// Sends the service byte `service`.
pub fn hello(sock: &Socket, service: u8) -> Result<()> {
    let mut s = sock;
    s.write_all(&[service]).map_err(io("write (service byte)"))
}

/// Opens an echo connection: sends [`ECHO`] and reads it back.
pub fn hello_echo(sock: &Socket) -> Result<()> {
    hello(sock, ECHO)?;
    let mut back = [0u8; 1];
    net::read_exact(sock, &mut back, "echo of the service byte")?;
    if back[0] != ECHO {
        return Err(Error::Protocol(format!(
            "the peer answered {:#04x} to the echo service byte, not 'E'",
            back[0]
        )));
    }
    Ok(())
}
