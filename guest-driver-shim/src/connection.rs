//! [`Connection`]: a fast-path stream or, where the daemon refused the fast path with a
//! reason that falls back (SPEC.md §13.6), a plain AF_VSOCK stream to the same CID and port.

use std::io::{self, Read, Write};
use std::net::Shutdown;

use socket2::{Domain, SockAddr, Socket, Type};

use crate::stream::FastStream;

/// A connection that is either a fast-path stream or the plain vsock fallback.
#[derive(Debug)]
pub enum Connection {
    /// Through the rings.
    Fast(Box<FastStream<Socket>>),
    /// A plain AF_VSOCK stream.
    Vsock(Socket),
}

impl Connection {
    /// Non-blocking mode.
    pub fn set_nonblocking(&mut self, on: bool) -> io::Result<()> {
        match self {
            Connection::Fast(s) => {
                s.set_nonblocking(on);
                Ok(())
            }
            Connection::Vsock(s) => s.set_nonblocking(on),
        }
    }

    /// Shuts down one or both directions.
    pub fn shutdown(&mut self, how: Shutdown) -> io::Result<()> {
        match self {
            Connection::Fast(s) => Ok(s.shutdown(how)?),
            Connection::Vsock(s) => s.shutdown(how),
        }
    }
}

impl Read for Connection {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Connection::Fast(s) => Ok(s.read(buf)?),
            Connection::Vsock(s) => Read::read(s, buf),
        }
    }
}

impl Write for Connection {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Connection::Fast(s) => Ok(s.write(buf)?),
            // MSG_NOSIGNAL: a peer that went away is EPIPE, not a SIGPIPE (C programs do not
            // ignore it as Rust programs do).
            Connection::Vsock(s) => s.send_with_flags(buf, libc::MSG_NOSIGNAL),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A plain AF_VSOCK stream to `cid`:`port`.
pub fn vsock_connect(cid: u32, port: u32) -> io::Result<Socket> {
    let sock = Socket::new(Domain::VSOCK, Type::STREAM, None)?;
    sock.connect(&SockAddr::vsock(cid, port))?;
    Ok(sock)
}
