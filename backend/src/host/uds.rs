//! The Firecracker hybrid-vsock convention on the host side.
//!
//! - A host program connects to the VM's `uds` socket and writes `CONNECT <port>\n`; once the
//!   guest accepts, it reads `OK <host_port>\n` and the stream carries the guest's port.
//! - A guest connecting to CID 2 port P reaches the Unix socket `<uds>_<P>`.

use std::io;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use socket2::{Domain, SockAddr, Socket, Type};

/// Longest `CONNECT` line accepted, newline included.
pub const MAX_CONNECT_LINE: usize = 32;

/// Why a `CONNECT` line was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectLineError {
    /// No newline within [`MAX_CONNECT_LINE`] bytes.
    #[error("no newline within {MAX_CONNECT_LINE} bytes")]
    TooLong,
    /// The line is not `CONNECT <port>`.
    #[error("expected `CONNECT <port>`, got {0:?}")]
    Syntax(String),
}

/// Parses `CONNECT <port>\n` (a trailing `\r` is tolerated).
pub fn parse_connect_line(line: &[u8]) -> Result<u32, ConnectLineError> {
    let text = String::from_utf8_lossy(line);
    let text = text.trim_end_matches('\n').trim_end_matches('\r');
    let port = text
        .strip_prefix("CONNECT ")
        .and_then(|p| p.trim().parse::<u32>().ok())
        .filter(|p| *p != u32::MAX);
    port.ok_or_else(|| ConnectLineError::Syntax(text.chars().take(40).collect()))
}

/// The reply sent once the guest accepted.
pub fn ok_line(host_port: u32) -> String {
    format!("OK {host_port}\n")
}

/// The socket a guest's connection to host port `port` goes to: `<uds>_<port>`.
pub fn guest_target_path(uds: &Path, port: u32) -> PathBuf {
    let mut s = uds.as_os_str().to_owned();
    s.push(format!("_{port}"));
    PathBuf::from(s)
}

/// Binds the VM's `uds` listener, replacing a stale socket file left by an earlier run.
pub fn bind_listener(path: &Path) -> io::Result<UnixListener> {
    remove_stale_socket(path)?;
    let listener = UnixListener::bind(path)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Removes `path` if it is a socket; fails if it is anything else.
pub fn remove_stale_socket(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path),
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} exists and is not a socket", path.display()),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Connects to a host listener without blocking: a missing listener, a refused connection or a
/// full backlog are all errors at once (the guest then gets an RST).
pub fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    let sock = Socket::new(Domain::UNIX, Type::STREAM.nonblocking().cloexec(), None)?;
    sock.connect(&SockAddr::unix(path)?)?;
    Ok(UnixStream::from(std::os::fd::OwnedFd::from(sock)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_lines() {
        assert_eq!(parse_connect_line(b"CONNECT 52\n"), Ok(52));
        assert_eq!(
            parse_connect_line(b"CONNECT 4294967294\r\n"),
            Ok(4_294_967_294)
        );
        assert!(parse_connect_line(b"CONNECT 4294967295\n").is_err());
        assert!(parse_connect_line(b"CONNECT\n").is_err());
        assert!(parse_connect_line(b"connect 5\n").is_err());
        assert!(parse_connect_line(b"CONNECT -1\n").is_err());
        assert_eq!(ok_line(1073741824), "OK 1073741824\n");
    }

    #[test]
    fn target_path_appends_port() {
        assert_eq!(
            guest_target_path(Path::new("/run/vm1.vsock"), 52),
            PathBuf::from("/run/vm1.vsock_52")
        );
    }

    #[test]
    fn connect_to_missing_listener_fails_at_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = connect_nonblocking(&dir.path().join("nobody")).expect_err("no listener");
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn stale_socket_is_replaced_but_other_files_are_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("s");
        drop(UnixListener::bind(&p).expect("bind"));
        bind_listener(&p).expect("rebind over stale socket");
        let f = dir.path().join("file");
        std::fs::write(&f, b"x").expect("write");
        assert!(bind_listener(&f).is_err());
    }
}
