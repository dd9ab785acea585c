//! One control connection's bytes (SPEC.md §13.7), on the daemon's end of its socket pair:
//! 32-byte messages read whole from partial reads, and answers queued and written as the
//! socket takes them. Both directions are bounded: a read takes at most
//! [`READ_BATCH`] messages per call, and at most [`MAX_QUEUED`] answers wait; a guest that
//! reads none of its answers for that long loses its control connection.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;

use sockbypass_wire::fastpath::control::{ControlError, ControlMsg, MSG_LEN};

/// Messages taken per read call at most (the rest wait for the next turn).
pub const READ_BATCH: usize = 64;
/// Answers waiting to be written at most.
pub const MAX_QUEUED: usize = 1024;

/// Why a control connection ends.
#[derive(Debug, thiserror::Error)]
pub enum StreamEnd {
    /// The guest closed it (or its VM went away).
    #[error("closed")]
    Closed,
    /// A message did not decode.
    #[error("bad message")]
    Bad(#[source] ControlError),
    /// The guest does not read its answers.
    #[error("{MAX_QUEUED} answers unread")]
    Overflow,
    /// The socket failed.
    #[error("socket error")]
    Io(#[source] io::Error),
}

/// The daemon's end of one control connection.
#[derive(Debug)]
pub struct ControlStream {
    stream: UnixStream,
    partial: [u8; MSG_LEN],
    filled: usize,
    out: VecDeque<[u8; MSG_LEN]>,
    /// Bytes of `out`'s front already written.
    out_sent: usize,
}

impl ControlStream {
    /// Takes `stream` (made non-blocking here).
    pub fn new(stream: UnixStream) -> io::Result<Self> {
        stream.set_nonblocking(true)?;
        Ok(ControlStream {
            stream,
            partial: [0; MSG_LEN],
            filled: 0,
            out: VecDeque::new(),
            out_sent: 0,
        })
    }

    /// The socket, for epoll.
    pub fn socket(&self) -> &UnixStream {
        &self.stream
    }

    /// Reads up to [`READ_BATCH`] whole messages; `Ok` with fewer means the socket had no more.
    pub fn read_messages(&mut self, into: &mut Vec<ControlMsg>) -> Result<(), StreamEnd> {
        while into.len() < READ_BATCH {
            match self.stream.read(&mut self.partial[self.filled..]) {
                Ok(0) => return Err(StreamEnd::Closed),
                Ok(n) => {
                    self.filled += n;
                    if self.filled == MSG_LEN {
                        self.filled = 0;
                        into.push(ControlMsg::decode(&self.partial).map_err(StreamEnd::Bad)?);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(StreamEnd::Io(e)),
            }
        }
        Ok(())
    }

    /// Queues `msg` and writes what the socket takes.
    pub fn send(&mut self, msg: &ControlMsg) -> Result<(), StreamEnd> {
        if self.out.len() >= MAX_QUEUED {
            return Err(StreamEnd::Overflow);
        }
        self.out.push_back(msg.encode());
        self.flush()
    }

    /// Writes queued answers until the socket is full.
    pub fn flush(&mut self) -> Result<(), StreamEnd> {
        while let Some(front) = self.out.front() {
            match self.stream.write(&front[self.out_sent..]) {
                Ok(0) => return Err(StreamEnd::Closed),
                Ok(n) => {
                    self.out_sent += n;
                    if self.out_sent == MSG_LEN {
                        self.out_sent = 0;
                        self.out.pop_front();
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Err(StreamEnd::Closed),
                Err(e) => return Err(StreamEnd::Io(e)),
            }
        }
        Ok(())
    }

    /// Whether answers wait for the socket.
    pub fn has_queued(&self) -> bool {
        !self.out.is_empty()
    }
}
