//! The connections the server and the clients move data over, behind one trait ([`Stream`])
//! so that the echo/sink services and the measuring code are written once: plain sockets
//! (vsock, TCP), fast-path streams of `sockbypass-guest` ([`Conn`]), and, in tests,
//! `UnixStream`s.
//!
//! With `--fastpath` a client opens the library once per process ([`open_fastpath`]) and
//! connects through it ([`connect`]): a fast-path stream if the daemon sets one up, the plain
//! vsock connection when the daemon answers with a reason that falls back (SPEC.md §13.6),
//! an error for a hard refusal. [`Conn::path`] says which it became.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use serde_json::Value;
use sockbypass_guest::{ConnectError, FastPath, FastStream, Placement};
use socket2::Socket;

use crate::addr::Addr;
use crate::client::ClientOpts;
use crate::error::{chain, Error, Result};
use crate::watchdog::{self, Op};

/// A byte stream the services and the measuring code run over.
pub trait Stream: Read + Write + Send + Sized {
    /// Shuts down one or both directions.
    fn shutdown(&mut self, how: Shutdown) -> io::Result<()>;
    /// Non-blocking mode (reads and writes fail with `WouldBlock` instead of waiting).
    fn set_nonblocking(&mut self, on: bool) -> io::Result<()>;
    /// A second handle on the same connection for another thread (a socket's `dup`);
    /// `None` when the connection serves one thread at a time (a fast-path stream).
    fn try_clone(&self) -> Option<io::Result<Self>>;
}

impl Stream for Socket {
    fn shutdown(&mut self, how: Shutdown) -> io::Result<()> {
        Socket::shutdown(self, how)
    }
    fn set_nonblocking(&mut self, on: bool) -> io::Result<()> {
        Socket::set_nonblocking(self, on)
    }
    fn try_clone(&self) -> Option<io::Result<Self>> {
        Some(Socket::try_clone(self))
    }
}

impl Stream for UnixStream {
    fn shutdown(&mut self, how: Shutdown) -> io::Result<()> {
        UnixStream::shutdown(self, how)
    }
    fn set_nonblocking(&mut self, on: bool) -> io::Result<()> {
        UnixStream::set_nonblocking(self, on)
    }
    fn try_clone(&self) -> Option<io::Result<Self>> {
        Some(UnixStream::try_clone(self))
    }
}

/// A fast-path stream as the server accepts it (no timeouts, as for its sockets).
impl Stream for FastStream<Socket> {
    fn shutdown(&mut self, how: Shutdown) -> io::Result<()> {
        Ok(FastStream::shutdown(self, how)?)
    }
    fn set_nonblocking(&mut self, on: bool) -> io::Result<()> {
        FastStream::set_nonblocking(self, on);
        Ok(())
    }
    fn try_clone(&self) -> Option<io::Result<Self>> {
        None
    }
}

/// The path a connection took, as the result lines name it.
pub const PATH_VSOCK: &str = "vsock";
/// Plain TCP.
pub const PATH_TCP: &str = "tcp";
/// Fast path, the daemon copies between the two windows.
pub const PATH_HOST_COPIED: &str = "fastpath_host_copied";
/// Fast path through a pair window shared with the peer VM.
pub const PATH_DIRECT: &str = "fastpath_direct";
/// `--fastpath`, but the daemon said to use plain vsock.
pub const PATH_FALLBACK: &str = "fastpath_fallback_vsock";

/// The result-line name of a fast-path placement.
pub fn placement_path(p: Placement) -> &'static str {
    match p {
        Placement::HostCopied => PATH_HOST_COPIED,
        Placement::Direct => PATH_DIRECT,
    }
}

enum Inner {
    Socket(Socket),
    Fast {
        stream: Box<FastStream<Socket>>,
        /// `--io-timeout-ms` (the watchdog enforces it, see [`watchdog`]).
        io_timeout: Option<Duration>,
    },
}

/// A client's connection: a socket or a fast-path stream, and which path it took.
pub struct Conn {
    inner: Inner,
    path: &'static str,
    fallback_reason: Option<String>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("path", &self.path)
            .field("fallback_reason", &self.fallback_reason)
            .finish_non_exhaustive()
    }
}

impl Conn {
    /// `vsock`, `tcp`, `fastpath_host_copied`, `fastpath_direct` or
    /// `fastpath_fallback_vsock`.
    pub fn path(&self) -> &'static str {
        self.path
    }

    /// Why the daemon refused the fast path, for a fallback (its reason, e.g. `NoListener`).
    pub fn fallback_reason(&self) -> Option<&str> {
        self.fallback_reason.as_deref()
    }

    /// Adds `path` and, with `--fastpath`, `fallback_reason` (null if none) to a result.
    pub fn describe(&self, fastpath: bool, v: &mut Value) {
        if let Some(o) = v.as_object_mut() {
            o.insert("path".into(), Value::from(self.path));
            if fastpath {
                o.insert(
                    "fallback_reason".into(),
                    self.fallback_reason
                        .clone()
                        .map_or(Value::Null, Value::from),
                );
            }
        }
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.inner {
            Inner::Socket(s) => s.read(buf),
            Inner::Fast { stream, io_timeout } => {
                let _armed = if stream.is_nonblocking() {
                    None
                } else {
                    watchdog::arm(Op::Read, *io_timeout)
                };
                Ok(stream.read(buf)?)
            }
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.inner {
            Inner::Socket(s) => s.write(buf),
            Inner::Fast { stream, io_timeout } => {
                let _armed = if stream.is_nonblocking() {
                    None
                } else {
                    watchdog::arm(Op::Write, *io_timeout)
                };
                Ok(stream.write(buf)?)
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Stream for Conn {
    fn shutdown(&mut self, how: Shutdown) -> io::Result<()> {
        match &mut self.inner {
            Inner::Socket(s) => s.shutdown(how),
            Inner::Fast { stream, .. } => Ok(stream.shutdown(how)?),
        }
    }

    fn set_nonblocking(&mut self, on: bool) -> io::Result<()> {
        match &mut self.inner {
            Inner::Socket(s) => s.set_nonblocking(on),
            Inner::Fast { stream, .. } => {
                stream.set_nonblocking(on);
                Ok(())
            }
        }
    }

    fn try_clone(&self) -> Option<io::Result<Self>> {
        match &self.inner {
            Inner::Socket(s) => Some(s.try_clone().map(|s| Conn {
                inner: Inner::Socket(s),
                path: self.path,
                fallback_reason: self.fallback_reason.clone(),
            })),
            Inner::Fast { .. } => None,
        }
    }
}

/// Rejects `--fastpath` with anything but a vsock address (a usage error).
pub fn check_fastpath_addr(fastpath: bool, addr: &Addr) -> Result<()> {
    if fastpath && !matches!(addr, Addr::Vsock { .. }) {
        return Err(Error::Usage(format!(
            "--fastpath needs a vsock:CID:PORT address, not {addr}"
        )));
    }
    Ok(())
}

/// Opens the fast-path library (windows + control channel), once per process.
pub fn open_fastpath() -> Result<FastPath> {
    FastPath::open().map_err(|e| Error::Fast {
        op: "open the fast path".into(),
        errno: e.errno(),
        detail: chain(&e),
    })
}

/// Connects to `addr` with `opts`' timeouts: through `fp` if given (fast, or the plain vsock
/// fallback), else a plain socket.
pub fn connect(addr: &Addr, opts: &ClientOpts, fp: Option<&FastPath>) -> Result<Conn> {
    let plain = |path, fallback_reason| {
        opts.open(addr).map(|s| Conn {
            inner: Inner::Socket(s),
            path,
            fallback_reason,
        })
    };
    let Some(fp) = fp else {
        let path = match addr {
            Addr::Vsock { .. } => PATH_VSOCK,
            Addr::Tcp(_) => PATH_TCP,
        };
        return plain(path, None);
    };
    let &Addr::Vsock { cid, port } = addr else {
        return Err(check_fastpath_addr(true, addr)
            .err()
            .unwrap_or_else(|| Error::Usage("--fastpath needs a vsock address".into())));
    };
    let answer = {
        let _armed = watchdog::arm(Op::Connect, opts.connect_timeout());
        fp.connect_fast(cid, port)
    };
    match answer {
        Ok(stream) => Ok(Conn {
            path: placement_path(stream.info().placement),
            inner: Inner::Fast {
                stream: Box::new(stream),
                io_timeout: opts.io_timeout(),
            },
            fallback_reason: None,
        }),
        Err(ConnectError::Fallback(reason)) => plain(PATH_FALLBACK, Some(format!("{reason:?}"))),
        Err(e) => Err(Error::Fast {
            op: format!("fast-path connect {addr}"),
            errno: e.errno(),
            detail: chain(&e),
        }),
    }
}
