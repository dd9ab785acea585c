//! One control connection's bytes (SPEC.md §13.7), on the daemon's end of its socket pair:
//! 32-byte messages read whole from partial reads, and answers queued and written as the
//! socket takes them. Both directions are bounded: a read takes at most
//! [`READ_BATCH`] messages per call, and at most [`MAX_QUEUED`] answers wait; a guest that
//! reads none of its answers for that long loses its control connection. `WAKE`s are
//! coalesced ([`ControlStream::is_waiting`]): one waiting for a connection covers the later
//! ones, so another guest's `KICK`s cannot fill a busy guest's queue.

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

    /// Whether `msg` already waits here unsent. A `WAKE` for a connection that still waits
    /// covers every later one until the guest reads it, so the service does not queue another
    /// (§13.5): this bounds the `WAKE`s that a peer's `KICK`s (direct pairs) or the copier can
    /// queue for a guest that reads nothing to one per connection.
    pub fn is_waiting(&self, msg: &ControlMsg) -> bool {
        let bytes = msg.encode();
        self.out.iter().any(|waiting| *waiting == bytes)
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

#[cfg(test)]
mod tests {
    use std::io::Write;

    use sockbypass_wire::fastpath::control::Op;

    use super::*;

    fn pair() -> (ControlStream, UnixStream) {
        let (ours, guest) = UnixStream::pair().expect("socket pair");
        (ControlStream::new(ours).expect("stream"), guest)
    }

    #[test]
    fn messages_come_whole_from_partial_reads_and_at_most_a_batch_per_call() {
        let (mut s, mut guest) = pair();
        let hello = ControlMsg::new(Op::Hello).encode();
        guest.write_all(&hello[..5]).expect("write");
        let mut got = Vec::new();
        s.read_messages(&mut got).expect("read");
        assert!(got.is_empty(), "5 bytes are no message");
        guest.write_all(&hello[5..]).expect("write");
        s.read_messages(&mut got).expect("read");
        assert_eq!(got, vec![ControlMsg::new(Op::Hello)]);
        for _ in 0..100 {
            guest.write_all(&hello).expect("write");
        }
        let mut got = Vec::new();
        s.read_messages(&mut got).expect("read");
        assert_eq!(
            got.len(),
            READ_BATCH,
            "one call takes a batch, the rest waits"
        );
        let mut rest = Vec::new();
        s.read_messages(&mut rest).expect("read");
        assert_eq!(rest.len(), 100 - READ_BATCH);
        let mut bad = hello;
        bad[0] = 0x7f;
        guest.write_all(&bad).expect("write");
        assert!(matches!(
            s.read_messages(&mut Vec::new()),
            Err(StreamEnd::Bad(_))
        ));
        drop(guest);
        assert!(matches!(
            s.read_messages(&mut Vec::new()),
            Err(StreamEnd::Closed)
        ));
    }

    #[test]
    fn a_guest_that_reads_nothing_overflows_after_max_queued_answers() {
        let (mut s, guest) = pair();
        let wake = ControlMsg::new(Op::Wake);
        let mut sent = 0usize;
        let end = loop {
            match s.send(&wake) {
                Ok(()) => sent += 1,
                Err(e) => break e,
            }
            assert!(sent < 1_000_000, "the queue never filled");
        };
        assert!(matches!(end, StreamEnd::Overflow), "{end:?}");
        assert!(s.has_queued());
        // What the socket took, and then exactly MAX_QUEUED waiting.
        let in_socket = sent - MAX_QUEUED;
        assert!(in_socket > 0, "the socket took some before the queue grew");
        drop(guest);
    }

    #[test]
    fn wakes_for_a_guest_that_reads_nothing_wait_once_per_connection() {
        let (mut s, mut guest) = pair();
        let wake = |conn| ControlMsg {
            conn,
            ..ControlMsg::new(Op::Wake)
        };
        // What the service does for each wake-up (`Service::wake`).
        let wake_once = |s: &mut ControlStream, conn| {
            if !s.is_waiting(&wake(conn)) {
                s.send(&wake(conn))
                    .expect("a repeated WAKE never overflows");
            }
        };
        // Far more than the socket and the queue hold: a peer kicking in a loop.
        for _ in 0..200_000 {
            wake_once(&mut s, 7);
            wake_once(&mut s, 8);
        }
        assert!(s.has_queued(), "the socket is full");
        assert!(s.out.len() <= 2, "{} waiting", s.out.len());
        // Other answers still queue behind them.
        s.send(&ControlMsg::new(Op::Welcome)).expect("queued");
        // The guest reads everything: WAKEs for 7 and 8, then the WELCOME, then nothing.
        guest.set_nonblocking(true).expect("nonblocking");
        let (mut seen7, mut seen8, mut welcome, mut after) = (false, false, false, false);
        let mut buf = [0u8; MSG_LEN];
        let mut idle = 0;
        while idle < 100 {
            s.flush().expect("flush");
            match std::io::Read::read_exact(&mut guest, &mut buf) {
                Ok(()) => {
                    idle = 0;
                    let m = ControlMsg::decode(&buf).expect("decodes");
                    if welcome {
                        after = true;
                    } else if m.op == Op::Welcome {
                        welcome = true;
                    } else {
                        assert!(m.op == Op::Wake && (m.conn == 7 || m.conn == 8), "{m:?}");
                        seen7 |= m.conn == 7;
                        seen8 |= m.conn == 8;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => idle += 1,
                Err(e) => panic!("read: {e}"),
            }
        }
        assert!(seen7 && seen8, "both connections' WAKEs arrived");
        assert!(welcome, "the WELCOME queued behind the WAKEs arrived");
        assert!(!s.has_queued());
        assert!(
            !after,
            "nothing after the WELCOME: every WAKE was sent before it"
        );
    }
}
