//! The library's errors above the window and the control channel, and their `errno`s for the
//! C ABI.

use std::io;

use sockbypass_wire::fastpath::control::Reason;

use crate::control::ControlChannelError;
use crate::ring::{NoSuchRing, RingError};
use crate::window::WindowError;

/// Why [`FastPath::open`](crate::FastPath::open) or [`FastPath::new`](crate::FastPath::new)
/// failed.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Finding or mapping the windows failed.
    #[error("cannot map the fast-path windows")]
    Windows(#[source] WindowError),
    /// No window of kind 1 (the VM's own window): the VM has no fast path.
    #[error("no own fast-path window (kind 1) among the windows found")]
    NoOwnWindow,
    /// More than one own window.
    #[error("{0} own fast-path windows (kind 1): expected one")]
    SeveralOwnWindows(usize),
    /// Connecting the control channel failed.
    #[error("cannot connect the control channel (vsock CID 2, port {port:#x})")]
    ControlConnect {
        /// The control port.
        port: u32,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// `HELLO` → `WELCOME` failed.
    #[error("control channel handshake failed")]
    Handshake(#[source] ControlChannelError),
}

impl OpenError {
    /// The `errno` for C.
    pub fn errno(&self) -> i32 {
        match self {
            OpenError::Windows(WindowError::Open { source, .. })
            | OpenError::Windows(WindowError::Map { source, .. })
            | OpenError::Windows(WindowError::Enable { source, .. })
            | OpenError::Windows(WindowError::Sysfs { source, .. })
            | OpenError::ControlConnect { source, .. } => {
                source.raw_os_error().unwrap_or(libc::EIO)
            }
            OpenError::Windows(_) | OpenError::NoOwnWindow | OpenError::SeveralOwnWindows(_) => {
                libc::ENODEV
            }
            OpenError::Handshake(e) => control_errno(e),
        }
    }
}

/// Why a fast-path connection could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Refused for a reason that leaves the plain vsock connection possible (no window, no
    /// fast-path listener, window full): connect with vsock instead (SPEC.md §13.6).
    #[error("no fast path to this peer ({0:?}): use plain vsock")]
    Fallback(Reason),
    /// Refused as a vsock connect would be (policy, limit, rejected, ...): `ECONNREFUSED`.
    #[error("fast-path connection refused ({0:?})")]
    Refused(Reason),
    /// The control channel failed.
    #[error("fast-path control channel")]
    Control(#[source] ControlChannelError),
    /// The daemon chose the direct placement with a peer whose pair window is not mapped.
    #[error("direct placement with CID {peer_cid}, but no pair window with it is mapped")]
    NoPairWindow {
        /// The peer.
        peer_cid: u64,
    },
    /// The daemon named a slot the window does not have.
    #[error("the daemon named a slot outside the window")]
    BadSlot(#[source] NoSuchRing),
    /// The plain vsock connection (the fallback) failed.
    #[error("vsock connection failed")]
    Vsock(#[source] io::Error),
}

impl From<ControlChannelError> for ConnectError {
    fn from(e: ControlChannelError) -> ConnectError {
        ConnectError::Control(e)
    }
}

impl ConnectError {
    /// The `errno` for C.
    pub fn errno(&self) -> i32 {
        match self {
            ConnectError::Refused(Reason::PortInUse) => libc::EADDRINUSE,
            ConnectError::Fallback(_) | ConnectError::Refused(_) => libc::ECONNREFUSED,
            ConnectError::Control(e) => control_errno(e),
            ConnectError::NoPairWindow { .. } | ConnectError::BadSlot(_) => libc::EPROTO,
            ConnectError::Vsock(e) => e.raw_os_error().unwrap_or(libc::EIO),
        }
    }
}

/// Why a read or write on a fast-path stream failed.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// Non-blocking and nothing to do now.
    #[error("operation would block")]
    WouldBlock,
    /// The daemon reset the connection.
    #[error("connection reset by the daemon ({0:?})")]
    Reset(Reason),
    /// The other side's index is out of range (the connection is over; a direct pair sent
    /// `ABORT`).
    #[error("broken ring")]
    BrokenRing(#[source] RingError),
    /// The window's `epoch` changed: the daemon restarted, every connection of it is gone.
    #[error("window epoch changed from {was} to {now}: the daemon restarted")]
    EpochChanged {
        /// The epoch the connection was made in.
        was: u32,
        /// The epoch now.
        now: u32,
    },
    /// Writing after the other side closed the connection (`CLOSED`).
    #[error("the other side closed the connection")]
    PeerClosed,
    /// Writing after this side shut down writing.
    #[error("this side shut down writing")]
    WriteShutdown,
    /// The stream was closed.
    #[error("stream closed")]
    Closed,
    /// The control channel failed (the daemon resets every connection of it).
    #[error("fast-path control channel")]
    Control(#[source] ControlChannelError),
}

impl From<ControlChannelError> for StreamError {
    fn from(e: ControlChannelError) -> StreamError {
        StreamError::Control(e)
    }
}

impl StreamError {
    /// The `errno` for C.
    pub fn errno(&self) -> i32 {
        match self {
            StreamError::WouldBlock => libc::EAGAIN,
            StreamError::Reset(_)
            | StreamError::BrokenRing(_)
            | StreamError::EpochChanged { .. } => libc::ECONNRESET,
            StreamError::PeerClosed | StreamError::WriteShutdown => libc::EPIPE,
            StreamError::Closed => libc::EBADF,
            StreamError::Control(e) => control_errno(e),
        }
    }

    /// The `io::ErrorKind` of it.
    pub fn kind(&self) -> io::ErrorKind {
        match self {
            StreamError::WouldBlock => io::ErrorKind::WouldBlock,
            StreamError::Reset(_)
            | StreamError::BrokenRing(_)
            | StreamError::EpochChanged { .. } => io::ErrorKind::ConnectionReset,
            StreamError::PeerClosed | StreamError::WriteShutdown => io::ErrorKind::BrokenPipe,
            StreamError::Closed => io::ErrorKind::NotConnected,
            StreamError::Control(e) if e.is_protocol() => io::ErrorKind::InvalidData,
            StreamError::Control(_) => io::ErrorKind::ConnectionReset,
        }
    }
}

impl From<StreamError> for io::Error {
    fn from(e: StreamError) -> io::Error {
        io::Error::new(e.kind(), e)
    }
}

/// `EPROTO` for a protocol error, `ECONNRESET` when the daemon closed the channel, the
/// kernel's `errno` for an I/O error.
pub(crate) fn control_errno(e: &ControlChannelError) -> i32 {
    match e {
        ControlChannelError::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
        e if e.is_protocol() => libc::EPROTO,
        _ => libc::ECONNRESET,
    }
}
