//! Socket set-up shared by the server and the clients: listeners, a connect with a timeout,
//! and the per-connection options (TCP_NODELAY, I/O timeouts).

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::addr::Addr;
use crate::error::{io, Error, Result};

/// Listen backlog: `soak` opens hundreds of connections at once (the kernel caps it at
/// `net.core.somaxconn`, 4096 by default).
const BACKLOG: i32 = 1024;

fn socket_for(addr: &Addr) -> Result<(Socket, SockAddr)> {
    let (domain, proto, sa) = match *addr {
        Addr::Vsock { cid, port } => (Domain::VSOCK, None, SockAddr::vsock(cid, port)),
        Addr::Tcp(sa) => (
            Domain::IPV4,
            Some(Protocol::TCP),
            SockAddr::from(SocketAddr::V4(sa)),
        ),
    };
    let family = if domain == Domain::VSOCK {
        "AF_VSOCK"
    } else {
        "AF_INET"
    };
    let sock = Socket::new(domain, Type::STREAM, proto).map_err(io(format!("socket({family})")))?;
    Ok((sock, sa))
}

/// `SO_VM_SOCKETS_CONNECT_TIMEOUT` of `<linux/vm_sockets.h>` where `long` is 64 bits (its
/// `_OLD` variant, taking a `struct timeval`); the `libc` crate does not have it.
#[cfg(target_pointer_width = "64")]
const SO_VM_SOCKETS_CONNECT_TIMEOUT: libc::c_int = 6;

/// Sets how long the kernel lets a vsock connect wait for the peer's answer (2 s unless set),
/// so that `timeout` is the limit and not the kernel's default.
#[cfg(target_pointer_width = "64")]
fn set_vsock_connect_timeout(sock: &Socket, timeout: Duration) -> Result<()> {
    use std::os::fd::AsRawFd;
    let tv = libc::timeval {
        tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_usec: libc::suseconds_t::from(timeout.subsec_micros()),
    };
    // SAFETY: `sock` is an open socket; `tv` is a valid timeval that outlives the call, and its
    // size is passed with it.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::AF_VSOCK,
            SO_VM_SOCKETS_CONNECT_TIMEOUT,
            std::ptr::addr_of!(tv).cast(),
            libc::socklen_t::try_from(std::mem::size_of::<libc::timeval>()).unwrap_or(16),
        )
    };
    if rc != 0 {
        return Err(io("setsockopt(SO_VM_SOCKETS_CONNECT_TIMEOUT)")(
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Connects to `addr`, giving up after `timeout` (`None`: the kernel's own limit).
pub fn connect(addr: &Addr, timeout: Option<Duration>) -> Result<Socket> {
    let (sock, sa) = socket_for(addr)?;
    let op = || format!("connect {addr}");
    #[cfg(target_pointer_width = "64")]
    if let (Addr::Vsock { .. }, Some(t)) = (addr, timeout) {
        set_vsock_connect_timeout(&sock, t)?;
    }
    match timeout {
        Some(t) => sock.connect_timeout(&sa, t).map_err(io(op()))?,
        None => sock.connect(&sa).map_err(io(op()))?,
    }
    // poll() may report the socket writable without an error flag although the handshake
    // failed (e.g. vsock closes with POLLOUT): ask for the pending error explicitly.
    if let Some(e) = sock.take_error().map_err(io(op()))? {
        return Err(io(op())(e));
    }
    if matches!(addr, Addr::Tcp(_)) {
        sock.set_nodelay(true)
            .map_err(io("setsockopt(TCP_NODELAY)"))?;
    }
    Ok(sock)
}

/// Sets SO_RCVTIMEO and SO_SNDTIMEO (`None`: block forever).
pub fn set_io_timeout(sock: &Socket, timeout: Option<Duration>) -> Result<()> {
    sock.set_read_timeout(timeout)
        .map_err(io("setsockopt(SO_RCVTIMEO)"))?;
    sock.set_write_timeout(timeout)
        .map_err(io("setsockopt(SO_SNDTIMEO)"))
}

/// A listening socket and the port it is bound to.
#[derive(Debug)]
pub struct Listener {
    /// The socket.
    pub sock: Socket,
    /// The port actually bound (differs from the requested one for TCP port 0).
    pub port: u32,
    /// `vsock` or `tcp`, for messages.
    pub kind: &'static str,
}

/// Listens on vsock port `port` of every CID (VMADDR_CID_ANY).
pub fn listen_vsock(port: u32) -> Result<Listener> {
    let op = format!("listen vsock:any:{port}");
    let sock = Socket::new(Domain::VSOCK, Type::STREAM, None).map_err(io("socket(AF_VSOCK)"))?;
    sock.bind(&SockAddr::vsock(libc::VMADDR_CID_ANY, port))
        .map_err(io(op.clone()))?;
    sock.listen(BACKLOG).map_err(io(op.clone()))?;
    let bound = sock
        .local_addr()
        .map_err(io(op))?
        .as_vsock_address()
        .map_or(port, |(_, p)| p);
    Ok(Listener {
        sock,
        port: bound,
        kind: "vsock",
    })
}

/// Listens on TCP port `port` of 0.0.0.0 (port 0: any free port).
pub fn listen_tcp(port: u16) -> Result<Listener> {
    let op = format!("listen tcp:0.0.0.0:{port}");
    let sock = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))
        .map_err(io("socket(AF_INET)"))?;
    sock.set_reuse_address(true)
        .map_err(io("setsockopt(SO_REUSEADDR)"))?;
    let sa = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port));
    sock.bind(&sa.into()).map_err(io(op.clone()))?;
    sock.listen(BACKLOG).map_err(io(op.clone()))?;
    let bound = sock
        .local_addr()
        .map_err(io(op))?
        .as_socket()
        .map_or(port, |a| a.port());
    Ok(Listener {
        sock,
        port: u32::from(bound),
        kind: "tcp",
    })
}

/// Reads until `buf` is full. Ok(false) on EOF before the first byte; EOF after it is an error.
/// `r` is anything readable: `&Socket`, `&mut Conn`, `&mut UnixStream`, ...
pub fn read_full<R: Read>(mut r: R, buf: &mut [u8], what: &str) -> Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => {
                return Err(Error::Protocol(format!(
                    "{what}: peer closed after {got} of {} bytes",
                    buf.len()
                )))
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io(format!("read ({what})"))(e)),
        }
    }
    Ok(true)
}

/// Reads until `buf` is full; EOF at any point is an error.
pub fn read_exact<R: Read>(r: R, buf: &mut [u8], what: &str) -> Result<()> {
    if read_full(r, buf, what)? || buf.is_empty() {
        Ok(())
    } else {
        Err(Error::Protocol(format!(
            "{what}: peer closed before sending anything"
        )))
    }
}
