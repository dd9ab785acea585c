//! `sbtool verify`: send seeded data over an echo connection while reading the echo back
//! (a writer thread and this thread), and compare byte for byte.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::thread;
use std::time::Instant;

use serde_json::json;

use crate::addr::Addr;
use crate::client::{self, ClientOpts};
use crate::error::{io, Error, Result};
use crate::outcome::Outcome;
use crate::{pattern, report};

const CHUNK: usize = 64 * 1024;

/// Parameters of a run.
#[derive(Debug, Clone, Copy)]
pub struct Params {
    /// Bytes to send.
    pub bytes: u64,
    /// Seed of the data.
    pub seed: u64,
}

/// How the echo compared.
#[derive(Debug, Default)]
struct Echo {
    received: u64,
    /// First offset where the echo differs from what was sent (or ends early, or runs over).
    mismatch_at: Option<u64>,
    /// The mismatch is a wrong byte (not a short or long echo).
    wrong_byte: bool,
}

/// Length of the next chunk starting at `offset` of `total`.
fn chunk_len(offset: u64, total: u64) -> usize {
    usize::try_from(total.saturating_sub(offset)).map_or(CHUNK, |left| left.min(CHUNK))
}

/// First index where `a` and `b` differ.
fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    if a == b {
        return None;
    }
    a.iter().zip(b).position(|(x, y)| x != y)
}

fn write_all_data(sock: &socket2::Socket, p: Params) -> Result<()> {
    let mut s = sock;
    let mut buf = vec![0u8; CHUNK];
    let mut offset = 0u64;
    while offset < p.bytes {
        let n = chunk_len(offset, p.bytes);
        pattern::fill(p.seed, offset, &mut buf[..n]);
        s.write_all(&buf[..n]).map_err(io("write"))?;
        offset += n as u64;
    }
    sock.shutdown(Shutdown::Write).map_err(io("shutdown"))
}

fn read_and_compare(sock: &socket2::Socket, p: Params) -> Result<Echo> {
    let mut s = sock;
    let mut echo = Echo::default();
    let (mut got, mut want) = (vec![0u8; CHUNK], vec![0u8; CHUNK]);
    loop {
        let n = match s.read(&mut got) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io("read")(e)),
        };
        let valid = chunk_len(echo.received, p.bytes).min(n);
        pattern::fill(p.seed, echo.received, &mut want[..valid]);
        if let Some(i) = first_difference(&got[..valid], &want[..valid]) {
            echo.mismatch_at = Some(echo.received + i as u64);
            echo.wrong_byte = true;
            return Ok(echo);
        }
        echo.received += n as u64;
        if valid < n {
            // More came back than was sent.
            echo.mismatch_at = Some(p.bytes);
            return Ok(echo);
        }
    }
    if echo.received < p.bytes {
        echo.mismatch_at = Some(echo.received);
    }
    Ok(echo)
}

/// Sends `p.bytes` of seeded data and checks the echo.
pub fn run(addr_text: &str, addr: &Addr, p: Params, opts: &ClientOpts) -> Result<Outcome> {
    let sock = opts.open(addr)?;
    client::hello_echo(&sock)?;
    let started = Instant::now();
    let wsock = sock.try_clone().map_err(io("dup"))?;
    let writer = thread::Builder::new()
        .name("verify-writer".into())
        .spawn(move || write_all_data(&wsock, p))
        .map_err(io("spawn the writer thread"))?;
    let read = read_and_compare(&sock, p);
    if !matches!(
        read,
        Ok(Echo {
            mismatch_at: None,
            ..
        })
    ) {
        // Unblock the writer: it may be stuck on a peer that stopped reading.
        let _ = sock.shutdown(Shutdown::Both);
    }
    let wrote = writer
        .join()
        .map_err(|_| Error::Protocol("the writer thread panicked".into()))?;
    let seconds = started.elapsed().as_secs_f64();
    let echo = read?;
    // A wrong byte is the finding, whatever the writer hit after the shutdown above; a short
    // echo is usually explained by the writer's error.
    if !echo.wrong_byte {
        wrote?;
    }
    let ok = echo.mismatch_at.is_none();
    Ok(Outcome {
        value: json!({
            "mode": "verify",
            "addr": addr_text,
            "bytes": p.bytes,
            "received": echo.received,
            "seed": p.seed,
            "ok": ok,
            "mismatch_at": echo.mismatch_at,
            "seconds": seconds,
            "gbps": report::gbps(echo.received, seconds),
        }),
        ok,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunking_and_difference() {
        assert_eq!(chunk_len(0, 10), 10);
        assert_eq!(chunk_len(0, 1 << 40), CHUNK);
        assert_eq!(chunk_len(10, 10), 0);
        assert_eq!(chunk_len(11, 10), 0);
        assert_eq!(first_difference(b"abc", b"abc"), None);
        assert_eq!(first_difference(b"abc", b"abd"), Some(2));
    }
}
