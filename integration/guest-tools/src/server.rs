//! `sbtool serve`: echo and sink services on vsock and/or TCP, one thread per connection.
//!
//! The first byte a client sends picks the service:
//! - [`ECHO`]: every byte is echoed back, the service byte included (so the clients also work
//!   against a plain echo server such as `socat ... EXEC:cat`), until EOF; then close.
//! - [`SINK`]: read until EOF, then reply with [`SINK_REPLY_LEN`] bytes: the number of bytes
//!   received after the service byte and their [`Checksum`], both u64 little endian.
//!
//! With `--fastpath` the same services are also offered through the fast path (the
//! `sockbypass-guest` library listens on the vsock port); each accepted fast-path stream is
//! served by the same code, in its own thread, as a socket is.
//!
//! A connection closed before its first byte (a readiness probe such as `sbtool connect`) is
//! not an error.

use std::convert::Infallible;

use std::net::Shutdown;
use std::thread;
use std::time::Duration;

use serde_json::json;
use sockbypass_guest::{ConnectError, FastPath};

use crate::checksum::Checksum;
use crate::conn::{self, Stream};
use crate::error::{chain, io, Error, Result};
use crate::net::{self, Listener};
use crate::report;

/// Service byte: echo.
pub const ECHO: u8 = b'E';
/// Service byte: sink with a count-and-checksum reply.
pub const SINK: u8 = b'S';
/// Length of the sink's reply.
pub const SINK_REPLY_LEN: usize = 16;

const ECHO_BUF: usize = 64 * 1024;
const SINK_BUF: usize = 256 * 1024;
const CONN_STACK: usize = 256 * 1024;

/// Listens on the given ports, prints the `serve` result line, and serves forever.
///
/// With `fastpath`, also opens the fast-path library and listens on the vsock port through
/// it (`LISTEN`): accepted fast streams get the same services, each in its own thread. The
/// plain vsock listener stays, for peers the daemon sends back to plain vsock.
pub fn run(vsock_port: Option<u32>, tcp_port: Option<u16>, fastpath: bool) -> Result<Infallible> {
    check_args(vsock_port, tcp_port, fastpath)?;
    // The fast-path listener first: once a client can connect to the plain vsock port (what
    // `sbtool connect` waits for), the daemon has confirmed the fast-path one (`LISTENING`),
    // so a fast-path connect never falls back for want of a listener that was about to come.
    let fast = match (fastpath, vsock_port) {
        (true, Some(p)) => {
            let fp = conn::open_fastpath()?;
            fp.listen(p).map_err(|e| Error::Fast {
                op: format!("fast-path listen {p}"),
                errno: e.errno(),
                detail: chain(&e),
            })?;
            Some((fp, p))
        }
        _ => None,
    };
    let mut listeners = Vec::new();
    if let Some(p) = vsock_port {
        listeners.push(net::listen_vsock(p)?);
    }
    if let Some(p) = tcp_port {
        listeners.push(net::listen_tcp(p)?);
    }
    let port_of = |kind: &str| listeners.iter().find(|l| l.kind == kind).map(|l| l.port);
    report::emit(&json!({
        "mode": "serve",
        "vsock_port": port_of("vsock"),
        "tcp_port": port_of("tcp"),
        "fastpath": fast.is_some(),
        "fastpath_port": fast.as_ref().map(|f| f.1),
    }));
    let mut threads = Vec::new();
    if let Some((fp, port)) = fast {
        let t = thread::Builder::new()
            .name("accept-fastpath".into())
            .spawn(move || accept_fast(&fp, port))
            .map_err(io("spawn the fast-path accept thread"))?;
        threads.push(t);
    }
    for l in listeners {
        let kind = l.kind;
        let t = thread::Builder::new()
            .name(format!("accept-{kind}"))
            .spawn(move || accept_loop(l))
            .map_err(io(format!("spawn the {kind} accept thread")))?;
        threads.push(t);
    }
    for t in threads {
        // accept_loop never returns; a panic is reported by the runtime on stderr.
        let _ = t.join();
    }
    Err(Error::Protocol("the accept threads stopped".into()))
}

/// `--fastpath` needs `--vsock-port`; some port is needed at all.
pub fn check_args(vsock_port: Option<u32>, tcp_port: Option<u16>, fastpath: bool) -> Result<()> {
    if vsock_port.is_none() && tcp_port.is_none() {
        return Err(Error::Usage(
            "serve needs --vsock-port and/or --tcp-port".into(),
        ));
    }
    if fastpath && vsock_port.is_none() {
        return Err(Error::Usage(
            "serve --fastpath needs --vsock-port (the fast path is vsock only)".into(),
        ));
    }
    Ok(())
}

/// Accepts fast-path connections until the control channel fails (then only the plain
/// listeners serve).
fn accept_fast(fp: &FastPath, port: u32) {
    loop {
        match fp.accept() {
            Ok(stream) => {
                let path = conn::placement_path(stream.info().placement);
                let spawned = thread::Builder::new()
                    .name("conn-fastpath".into())
                    .stack_size(CONN_STACK)
                    .spawn(move || {
                        let mut stream = stream;
                        if let Err(e) = handle(&mut stream) {
                            eprintln!("sbtool serve: {path} connection: {e}");
                        }
                    });
                if let Err(e) = spawned {
                    eprintln!("sbtool serve: cannot spawn a connection thread: {e}");
                }
            }
            Err(ConnectError::Control(e)) => {
                eprintln!(
                    "sbtool serve: fast-path control channel failed, no more fast-path \
                     connections on port {port}: {}",
                    chain(&e)
                );
                return;
            }
            Err(e) => {
                // One connection's rings could not be set up (it was given back).
                eprintln!(
                    "sbtool serve: fast-path accept on port {port}: {}",
                    chain(&e)
                );
            }
        }
    }
}

fn accept_loop(l: Listener) {
    loop {
        match l.sock.accept() {
            Ok((sock, _)) => {
                if l.kind == "tcp" {
                    if let Err(e) = sock.set_nodelay(true) {
                        eprintln!("sbtool serve: TCP_NODELAY: {e}");
                    }
                }
                let kind = l.kind;
                let spawned = thread::Builder::new()
                    .name(format!("conn-{kind}"))
                    .stack_size(CONN_STACK)
                    .spawn(move || {
                        let mut sock = sock;
                        if let Err(e) = handle(&mut sock) {
                            eprintln!("sbtool serve: {kind} connection: {e}");
                        }
                    });
                if let Err(e) = spawned {
                    eprintln!("sbtool serve: cannot spawn a connection thread: {e}");
                }
            }
            Err(e) => {
                eprintln!("sbtool serve: accept on {} port {}: {e}", l.kind, l.port);
                // Out of descriptors or memory: give the other connections time to finish.
                thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Serves one connection of any kind (socket, fast-path stream, or a test's `UnixStream`):
/// the service byte picks echo or sink.
pub fn handle<S: Stream>(s: &mut S) -> Result<()> {
    let mut first = [0u8; 1];
    if !net::read_full(&mut *s, &mut first, "service byte")? {
        return Ok(());
    }
    match first[0] {
        ECHO => echo(s),
        SINK => sink(s),
        other => Err(Error::Protocol(format!(
            "unknown service byte {other:#04x} (want 'E' or 'S')"
        ))),
    }
}

fn echo<S: Stream>(s: &mut S) -> Result<()> {
    s.write_all(&[ECHO]).map_err(io("echo write"))?;
    let mut buf = vec![0u8; ECHO_BUF];
    loop {
        let n = match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io("echo read")(e)),
        };
        s.write_all(&buf[..n]).map_err(io("echo write"))?;
    }
    s.shutdown(Shutdown::Write).map_err(io("echo shutdown"))
}

fn sink<S: Stream>(s: &mut S) -> Result<()> {
    let mut sum = Checksum::new();
    let mut buf = vec![0u8; SINK_BUF];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => sum.update(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io("sink read")(e)),
        }
    }
    let mut reply = [0u8; SINK_REPLY_LEN];
    reply[..8].copy_from_slice(&sum.len().to_le_bytes());
    reply[8..].copy_from_slice(&sum.finish().to_le_bytes());
    s.write_all(&reply).map_err(io("sink reply"))?;
    s.shutdown(Shutdown::Write).map_err(io("sink shutdown"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    fn serve_pair() -> (UnixStream, thread::JoinHandle<Result<()>>) {
        let (a, mut b) = UnixStream::pair().expect("socketpair");
        let t = thread::spawn(move || handle(&mut b));
        (a, t)
    }

    #[test]
    fn echo_over_a_unix_pair() {
        let (mut a, t) = serve_pair();
        a.write_all(b"Ehello").expect("write");
        a.shutdown(Shutdown::Write).expect("shutdown");
        let mut back = Vec::new();
        a.read_to_end(&mut back).expect("read");
        assert_eq!(back, b"Ehello");
        assert!(t.join().expect("server thread").is_ok());
    }

    #[test]
    fn sink_over_a_unix_pair() {
        let (mut a, t) = serve_pair();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        a.write_all(&[SINK]).expect("write");
        a.write_all(&data).expect("write");
        a.shutdown(Shutdown::Write).expect("shutdown");
        let mut reply = Vec::new();
        a.read_to_end(&mut reply).expect("read");
        let mut sum = Checksum::new();
        sum.update(&data);
        assert_eq!(reply.len(), SINK_REPLY_LEN);
        assert_eq!(reply[..8], (data.len() as u64).to_le_bytes());
        assert_eq!(reply[8..], sum.finish().to_le_bytes());
        assert!(t.join().expect("server thread").is_ok());
    }

    #[test]
    fn a_probe_without_service_byte_is_fine_and_a_bad_byte_is_not() {
        let (a, t) = serve_pair();
        drop(a);
        assert!(t.join().expect("server thread").is_ok());
        let (mut a, t) = serve_pair();
        a.write_all(b"X").expect("write");
        assert!(matches!(
            t.join().expect("server thread"),
            Err(Error::Protocol(_))
        ));
    }
}
