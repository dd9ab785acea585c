//! The one error type of `sbtool`: what failed, and the OS errno when there is one.

use std::io;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The address is not `vsock:CID:PORT` or `tcp:IPV4:PORT`.
    #[error("invalid address {input:?}: {reason}")]
    Addr {
        /// The address as given.
        input: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A socket operation failed.
    #[error("{op}: {}", describe(source))]
    Io {
        /// The operation, e.g. `connect tcp:10.0.0.2:5001`.
        op: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The peer broke the protocol (wrong service byte back, short reply, ...).
    #[error("{0}")]
    Protocol(String),
    /// A call into the fast-path library (`sockbypass-guest`) failed: opening it, `listen`,
    /// a refused or failed connect.
    #[error("{op}: {detail}")]
    Fast {
        /// The operation, e.g. `fast-path connect vsock:3:5000`.
        op: String,
        /// The library's errno for it (ENODEV: no window, ECONNREFUSED, ...).
        errno: i32,
        /// The library's error and its causes.
        detail: String,
    },
    /// Bad combination of arguments.
    #[error("{0}")]
    Usage(String),
}

fn describe(e: &io::Error) -> String {
    if e.kind() == io::ErrorKind::WouldBlock {
        // SO_RCVTIMEO / SO_SNDTIMEO expired: the OS says EAGAIN, which reads badly.
        format!("{e} (no progress within the I/O timeout)")
    } else {
        e.to_string()
    }
}

impl Error {
    /// The raw OS errno, if the error came from the OS. A connect that timed out in user space
    /// reports ETIMEDOUT.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Io { source, .. } => errno_of(source),
            Error::Fast { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

/// The raw OS errno of `e`; the library's errno for a fast-path stream error; ETIMEDOUT for a
/// user-space timeout.
pub fn errno_of(e: &io::Error) -> Option<i32> {
    e.raw_os_error()
        .or_else(|| {
            e.get_ref()
                .and_then(|inner| inner.downcast_ref::<sockbypass_guest::StreamError>())
                .map(sockbypass_guest::StreamError::errno)
        })
        .or(match e.kind() {
            io::ErrorKind::TimedOut => Some(libc::ETIMEDOUT),
            _ => None,
        })
}

/// `e` and its causes, `: `-separated (the library's errors keep details in their sources).
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// `map_err` helper: tags an `io::Error` with the operation that failed.
pub fn io(op: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    move |source| Error::Io {
        op: op.into(),
        source,
    }
}

/// Result with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
