//! `sbtool serve`: echo and sink services on vsock and/or TCP, one thread per connection.
//!
//! The first byte a client sends picks the service:
//! - [`ECHO`]: every byte is echoed back, the service byte included (so the clients also work
//!   against a plain echo server such as `socat ... EXEC:cat`), until EOF; then close.
//! - [`SINK`]: read until EOF, then reply with [`SINK_REPLY_LEN`] bytes: the number of bytes
//!   received after the service byte and their [`Checksum`], both u64 little endian.
//!
//! A connection closed before its first byte (a readiness probe such as `sbtool connect`) is
//! not an error.

use std::convert::Infallible;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::thread;
use std::time::Duration;

use serde_json::json;
use socket2::Socket;

use crate::checksum::Checksum;
use crate::error::{io, Error, Result};
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
pub fn run(vsock_port: Option<u32>, tcp_port: Option<u16>) -> Result<Infallible> {
    if vsock_port.is_none() && tcp_port.is_none() {
        return Err(Error::Usage(
            "serve needs --vsock-port and/or --tcp-port".into(),
        ));
    }
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
    }));
    let mut threads = Vec::new();
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
                        if let Err(e) = handle(&sock) {
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

fn handle(sock: &Socket) -> Result<()> {
    let mut first = [0u8; 1];
    if !net::read_full(sock, &mut first, "service byte")? {
        return Ok(());
    }
    match first[0] {
        ECHO => echo(sock),
        SINK => sink(sock),
        other => Err(Error::Protocol(format!(
            "unknown service byte {other:#04x} (want 'E' or 'S')"
        ))),
    }
}

fn echo(sock: &Socket) -> Result<()> {
    let mut s = sock;
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
    sock.shutdown(Shutdown::Write).map_err(io("echo shutdown"))
}

fn sink(sock: &Socket) -> Result<()> {
    let mut s = sock;
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
    sock.shutdown(Shutdown::Write).map_err(io("sink shutdown"))
}
