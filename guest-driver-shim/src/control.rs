//! The control channel's client side (SPEC.md §13.7): 32-byte messages on a stream to the
//! daemon (in guests an AF_VSOCK stream to CID 2, port [`CONTROL_PORT`]; in tests any
//! [`Transport`], e.g. a `UnixStream`).
//!
//! It frames messages (a message may arrive in several reads; partial bytes are kept),
//! decodes them strictly, numbers requests, and keeps messages that arrive while it waits for
//! a specific answer in a queue that [`ControlChannel::recv`] hands out first. A message that
//! does not decode, a guest-only op coming from the daemon, or the daemon closing the stream
//! is an error; the channel is unusable afterwards (the daemon resets every connection of a
//! control connection that closes).
//!
//! Messages are sent with `send(2)` and `MSG_NOSIGNAL` on the transport's descriptor (a
//! stream socket), so a daemon that went away gives `EPIPE` and not a `SIGPIPE` that would
//! kill a C program using the library.

use std::collections::VecDeque;
use std::io::{self, Read, Write};

use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

pub use sockbypass_wire::fastpath::control::CONTROL_PORT;
use sockbypass_wire::fastpath::control::{ControlError, ControlMsg, Op, MSG_LEN};

/// What the control channel runs on.
pub trait Transport: Read + Write + AsRawFd + Send + 'static {}
impl<T: Read + Write + AsRawFd + Send + 'static> Transport for T {}

/// Why the control channel failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlChannelError {
    /// Reading or writing the stream failed.
    #[error("control channel: {what} failed")]
    Io {
        /// Which operation.
        what: &'static str,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// The daemon closed the stream.
    #[error("control channel closed by the daemon")]
    Closed,
    /// A message from the daemon does not decode.
    #[error("control channel: malformed message from the daemon")]
    Decode(#[source] ControlError),
    /// A message the daemon must not send now.
    #[error("control channel: unexpected {op:?} (req {req}, conn {conn}) from the daemon: {why}")]
    Unexpected {
        /// Its op.
        op: Op,
        /// Its request number.
        req: u32,
        /// Its connection.
        conn: u32,
        /// Why it does not fit.
        why: &'static str,
    },
    /// The channel failed earlier; it is not used any more.
    #[error("control channel failed earlier: {why}")]
    Failed {
        /// The first error.
        why: String,
        /// Whether that was a protocol error.
        protocol: bool,
    },
}

impl ControlChannelError {
    /// A protocol error (as opposed to an I/O error or a closed stream): EPROTO in C.
    pub fn is_protocol(&self) -> bool {
        matches!(
            self,
            ControlChannelError::Decode(_)
                | ControlChannelError::Unexpected { .. }
                | ControlChannelError::Failed { protocol: true, .. }
        )
    }

    pub(crate) fn unexpected(msg: &ControlMsg, why: &'static str) -> ControlChannelError {
        ControlChannelError::Unexpected {
            op: msg.op,
            req: msg.req,
            conn: msg.conn,
            why,
        }
    }
}

/// The client end of a control channel.
#[derive(Debug)]
pub struct ControlChannel<T> {
    t: T,
    next_req: u32,
    queue: VecDeque<ControlMsg>,
    partial: [u8; MSG_LEN],
    partial_len: usize,
    failed: Option<(String, bool)>,
}

impl<T: Transport> ControlChannel<T> {
    /// Sends `HELLO` and waits for `WELCOME` on `t` (blocking). Anything else first is a
    /// protocol error.
    pub fn handshake(t: T) -> Result<ControlChannel<T>, ControlChannelError> {
        let mut ch = ControlChannel {
            t,
            next_req: 1,
            queue: VecDeque::new(),
            partial: [0; MSG_LEN],
            partial_len: 0,
            failed: None,
        };
        let req = ch.new_req();
        ch.send(&ControlMsg {
            req,
            ..ControlMsg::new(Op::Hello)
        })?;
        let first = ch.read_msg()?;
        if first.op != Op::Welcome {
            return Err(ch.fail(ControlChannelError::unexpected(
                &first,
                "the answer to HELLO must be WELCOME",
            )));
        }
        Ok(ch)
    }

    /// A fresh request number (never 0).
    pub fn new_req(&mut self) -> u32 {
        let r = self.next_req;
        self.next_req = self.next_req.wrapping_add(1).max(1);
        r
    }

    /// The transport (e.g. to shut it down).
    pub fn transport(&self) -> &T {
        &self.t
    }

    /// Sends one message.
    pub fn send(&mut self, msg: &ControlMsg) -> Result<(), ControlChannelError> {
        self.check()?;
        match send_msg(self.t.as_raw_fd(), msg) {
            Ok(()) => Ok(()),
            Err(source) => Err(self.fail(ControlChannelError::Io {
                what: "write",
                source,
            })),
        }
    }

    /// The next message: a queued one, else one read from the stream (blocking).
    pub fn recv(&mut self) -> Result<ControlMsg, ControlChannelError> {
        if let Some(m) = self.queue.pop_front() {
            return Ok(m);
        }
        self.read_msg()
    }

    /// A queued message, else one read without blocking: `None` if no whole message is
    /// there. Bytes of a message not complete yet are kept for the next call.
    pub fn try_recv(&mut self) -> Result<Option<ControlMsg>, ControlChannelError> {
        if let Some(m) = self.queue.pop_front() {
            return Ok(Some(m));
        }
        loop {
            if !self.readable(Some(Duration::ZERO))? {
                return Ok(None);
            }
            if let Some(m) = self.read_once()? {
                return Ok(Some(m));
            }
        }
    }

    /// Reads until a message `pick` takes arrives, queueing the others (for
    /// [`ControlChannel::recv`]); blocking.
    pub fn wait_for(
        &mut self,
        mut pick: impl FnMut(&ControlMsg) -> bool,
    ) -> Result<ControlMsg, ControlChannelError> {
        if let Some(i) = self.queue.iter().position(&mut pick) {
            if let Some(m) = self.queue.remove(i) {
                return Ok(m);
            }
        }
        loop {
            let m = self.read_msg()?;
            if pick(&m) {
                return Ok(m);
            }
            self.queue.push_back(m);
        }
    }

    /// Sends `msg` with a fresh request number and waits for the message that answers it (the
    /// same `req`, one of `answers`), queueing the others.
    pub fn call(
        &mut self,
        msg: ControlMsg,
        answers: &[Op],
    ) -> Result<ControlMsg, ControlChannelError> {
        let req = self.new_req();
        self.send(&ControlMsg { req, ..msg })?;
        self.wait_for(|m| m.req == req && answers.contains(&m.op))
    }

    /// Whether a queued message or stream bytes are there, waiting at most `timeout` (`None`:
    /// forever).
    pub fn readable(&mut self, timeout: Option<Duration>) -> Result<bool, ControlChannelError> {
        self.check()?;
        if !self.queue.is_empty() {
            return Ok(true);
        }
        match poll_in(self.t.as_raw_fd(), timeout) {
            Ok(r) => Ok(r),
            Err(source) => Err(self.fail(ControlChannelError::Io {
                what: "poll",
                source,
            })),
        }
    }

    /// One whole message from the stream (blocking), ignoring the queue.
    fn read_msg(&mut self) -> Result<ControlMsg, ControlChannelError> {
        loop {
            if let Some(m) = self.read_once()? {
                return Ok(m);
            }
        }
    }

    /// One `read` call: the message it completes, if any.
    pub(crate) fn read_once(&mut self) -> Result<Option<ControlMsg>, ControlChannelError> {
        self.check()?;
        let n = loop {
            match self.t.read(&mut self.partial[self.partial_len..]) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(self.fail(ControlChannelError::Io {
                        what: "read",
                        source,
                    }))
                }
            }
        };
        if n == 0 {
            return Err(self.fail(ControlChannelError::Closed));
        }
        self.partial_len += n;
        if self.partial_len < MSG_LEN {
            return Ok(None);
        }
        self.partial_len = 0;
        let msg = match ControlMsg::decode(&self.partial) {
            Ok(m) => m,
            Err(e) => return Err(self.fail(ControlChannelError::Decode(e))),
        };
        if msg.op.from_guest() {
            return Err(self.fail(ControlChannelError::unexpected(
                &msg,
                "a guest-only op from the daemon",
            )));
        }
        Ok(Some(msg))
    }

    /// Marks the channel failed (it is not used again) and returns the error.
    pub(crate) fn fail(&mut self, e: ControlChannelError) -> ControlChannelError {
        if self.failed.is_none() {
            self.failed = Some((e.to_string(), e.is_protocol()));
        }
        e
    }

    /// Whether it failed.
    pub fn is_failed(&self) -> bool {
        self.failed.is_some()
    }

    pub(crate) fn check(&self) -> Result<(), ControlChannelError> {
        match &self.failed {
            Some((why, protocol)) => Err(ControlChannelError::Failed {
                why: why.clone(),
                protocol: *protocol,
            }),
            None => Ok(()),
        }
    }
}

impl<T: AsRawFd> AsRawFd for ControlChannel<T> {
    fn as_raw_fd(&self) -> RawFd {
        self.t.as_raw_fd()
    }
}

/// Sends one whole message on the stream socket `fd` (`MSG_NOSIGNAL`; short sends and
/// `EINTR` are retried).
pub(crate) fn send_msg(fd: RawFd, msg: &ControlMsg) -> io::Result<()> {
    let bytes = msg.encode();
    let mut done = 0usize;
    while done < bytes.len() {
        let rest = &bytes[done..];
        // SAFETY: `rest` is valid for `rest.len()` bytes for the duration of the call.
        let rc = unsafe { libc::send(fd, rest.as_ptr().cast(), rest.len(), libc::MSG_NOSIGNAL) };
        match usize::try_from(rc) {
            Ok(n) if n > 0 => done += n,
            Ok(_) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
            Err(_) => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    Ok(())
}

/// Waits until `fd` is readable (or hung up), at most `timeout` (`None`: forever).
pub(crate) fn poll_in(fd: RawFd, timeout: Option<Duration>) -> io::Result<bool> {
    let ms: libc::c_int = match timeout {
        None => -1,
        Some(d) => libc::c_int::try_from(d.as_millis()).unwrap_or(libc::c_int::MAX),
    };
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: `pfd` is one valid pollfd that lives across the call; nfds is 1.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc >= 0 {
            return Ok(rc > 0);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}
