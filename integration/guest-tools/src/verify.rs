//! `sbtool verify`: send seeded data over an echo connection while reading the echo back
//! (a writer thread and this thread), and compare byte for byte.

use std::io::Read;
use std::net::Shutdown;
use std::thread;
use std::time::Instant;

use serde_json::json;

use crate::addr::Addr;
use crate::client::{self, ClientOpts};
use crate::conn::Stream;
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

/// Compares an echo, piece by piece, with the seeded data.
struct Checker {
    p: Params,
    echo: Echo,
    want: Vec<u8>,
}

impl Checker {
    fn new(p: Params) -> Checker {
        Checker {
            p,
            echo: Echo::default(),
            want: vec![0u8; CHUNK],
        }
    }

    /// Compares the next `got` (at most [`CHUNK`] bytes); true once a mismatch was found
    /// (then stop reading).
    fn feed(&mut self, got: &[u8]) -> bool {
        let n = got.len();
        let valid = chunk_len(self.echo.received, self.p.bytes).min(n);
        pattern::fill(self.p.seed, self.echo.received, &mut self.want[..valid]);
        if let Some(i) = first_difference(&got[..valid], &self.want[..valid]) {
            self.echo.mismatch_at = Some(self.echo.received + i as u64);
            self.echo.wrong_byte = true;
            return true;
        }
        self.echo.received += n as u64;
        if valid < n {
            // More came back than was sent.
            self.echo.mismatch_at = Some(self.p.bytes);
            return true;
        }
        false
    }

    /// The comparison at the end of the echo (or after a mismatch).
    fn finish(mut self) -> Echo {
        if self.echo.mismatch_at.is_none() && self.echo.received < self.p.bytes {
            self.echo.mismatch_at = Some(self.echo.received);
        }
        self.echo
    }
}

fn write_all_data<S: Stream>(s: &mut S, p: Params) -> Result<()> {
    let mut buf = vec![0u8; CHUNK];
    let mut offset = 0u64;
    while offset < p.bytes {
        let n = chunk_len(offset, p.bytes);
        pattern::fill(p.seed, offset, &mut buf[..n]);
        s.write_all(&buf[..n]).map_err(io("write"))?;
        offset += n as u64;
    }
    s.shutdown(Shutdown::Write).map_err(io("shutdown"))
}

fn read_and_compare<S: Read>(s: &mut S, p: Params) -> Result<Echo> {
    let mut chk = Checker::new(p);
    let mut got = vec![0u8; CHUNK];
    loop {
        let n = match s.read(&mut got) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io("read")(e)),
        };
        if chk.feed(&got[..n]) {
            break;
        }
    }
    Ok(chk.finish())
}

/// Writes and reads at once: a writer thread on a second handle (sockets), or, for a
/// connection one thread at a time can use (a fast-path stream), one thread interleaving
/// non-blocking writes and reads.
fn exchange<S: Stream + 'static>(mut s: S, p: Params) -> Result<Echo> {
    let Some(second) = s.try_clone() else {
        return interleaved(&mut s, p);
    };
    let mut w = second.map_err(io("dup"))?;
    let writer = thread::Builder::new()
        .name("verify-writer".into())
        .spawn(move || write_all_data(&mut w, p))
        .map_err(io("spawn the writer thread"))?;
    let read = read_and_compare(&mut s, p);
    if !matches!(
        read,
        Ok(Echo {
            mismatch_at: None,
            ..
        })
    ) {
        // Unblock the writer: it may be stuck on a peer that stopped reading.
        let _ = s.shutdown(Shutdown::Both);
    }
    let wrote = writer
        .join()
        .map_err(|_| Error::Protocol("the writer thread panicked".into()))?;
    let echo = read?;
    // A wrong byte is the finding, whatever the writer hit after the shutdown above; a short
    // echo is usually explained by the writer's error.
    if !echo.wrong_byte {
        wrote?;
    }
    Ok(echo)
}

/// What one read gave.
enum Got {
    Data,
    Nothing,
    /// End of the echo, or a mismatch: stop.
    Over,
}

fn take_read(r: std::io::Result<usize>, got: &[u8], chk: &mut Checker) -> Result<Got> {
    match r {
        Ok(0) => Ok(Got::Over),
        Ok(n) if chk.feed(&got[..n]) => Ok(Got::Over),
        Ok(_) => Ok(Got::Data),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
            ) =>
        {
            Ok(Got::Nothing)
        }
        Err(e) => Err(io("read")(e)),
    }
}

/// One thread: non-blocking writes and reads in turn; when neither moves, a blocking read.
/// That read cannot wait forever on a working peer: a write blocks only while the peer has
/// unread data, and the echo of it comes back.
fn interleaved<S: Stream>(s: &mut S, p: Params) -> Result<Echo> {
    s.set_nonblocking(true)
        .map_err(io("set non-blocking mode"))?;
    let mut chk = Checker::new(p);
    let (mut out, mut got) = (vec![0u8; CHUNK], vec![0u8; CHUNK]);
    let (mut sent, mut pending, mut shut) = (0u64, 0..0, false);
    loop {
        let mut moved = false;
        if pending.is_empty() && sent < p.bytes {
            let n = chunk_len(sent, p.bytes);
            pattern::fill(p.seed, sent, &mut out[..n]);
            pending = 0..n;
        }
        if !pending.is_empty() {
            match s.write(&out[pending.clone()]) {
                Ok(n) => {
                    pending.start += n;
                    sent += n as u64;
                    moved = n > 0;
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(io("write")(e)),
            }
        } else if !shut {
            s.shutdown(Shutdown::Write).map_err(io("shutdown"))?;
            shut = true;
            moved = true;
        }
        match take_read(s.read(&mut got), &got, &mut chk)? {
            Got::Over => return Ok(chk.finish()),
            Got::Data => moved = true,
            Got::Nothing => {}
        }
        if !moved {
            s.set_nonblocking(false).map_err(io("set blocking mode"))?;
            let r = s.read(&mut got);
            s.set_nonblocking(true)
                .map_err(io("set non-blocking mode"))?;
            if let Got::Over = take_read(r, &got, &mut chk)? {
                return Ok(chk.finish());
            }
        }
    }
}

/// Sends `p.bytes` of seeded data and checks the echo.
pub fn run(addr_text: &str, addr: &Addr, p: Params, opts: &ClientOpts) -> Result<Outcome> {
    let fp = opts.fastpath_for(addr)?;
    let mut conn = opts.connect(addr, fp.as_ref())?;
    client::hello_echo(&mut conn)?;
    let mut value = json!({});
    conn.describe(opts.fastpath, &mut value);
    let started = Instant::now();
    let echo = exchange(conn, p)?;
    let seconds = started.elapsed().as_secs_f64();
    let ok = echo.mismatch_at.is_none();
    let mut result = json!({
        "mode": "verify",
        "addr": addr_text,
        "bytes": p.bytes,
        "received": echo.received,
        "seed": p.seed,
        "ok": ok,
        "mismatch_at": echo.mismatch_at,
        "seconds": seconds,
        "gbps": report::gbps(echo.received, seconds),
    });
    if let (Some(r), Some(d)) = (result.as_object_mut(), value.as_object_mut()) {
        r.append(d);
    }
    Ok(Outcome { value: result, ok })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn chunking_and_difference() {
        assert_eq!(chunk_len(0, 10), 10);
        assert_eq!(chunk_len(0, 1 << 40), CHUNK);
        assert_eq!(chunk_len(10, 10), 0);
        assert_eq!(chunk_len(11, 10), 0);
        assert_eq!(first_difference(b"abc", b"abc"), None);
        assert_eq!(first_difference(b"abc", b"abd"), Some(2));
    }

    /// A `UnixStream` that cannot be cloned: takes the one-thread path of fast streams.
    struct OneThread(std::os::unix::net::UnixStream);

    impl Read for OneThread {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.0.read(buf)
        }
    }
    impl Write for OneThread {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.write(buf)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    impl Stream for OneThread {
        fn shutdown(&mut self, how: Shutdown) -> std::io::Result<()> {
            self.0.shutdown(how)
        }
        fn set_nonblocking(&mut self, on: bool) -> std::io::Result<()> {
            self.0.set_nonblocking(on)
        }
        fn try_clone(&self) -> Option<std::io::Result<Self>> {
            None
        }
    }

    fn against_echo<S: Stream + 'static>(
        wrap: impl FnOnce(std::os::unix::net::UnixStream) -> S,
        bytes: u64,
    ) -> Echo {
        let (mut a, mut b) = std::os::unix::net::UnixStream::pair().expect("socketpair");
        let server = thread::spawn(move || crate::server::handle(&mut b));
        client::hello_echo(&mut a).expect("handshake");
        let echo = exchange(wrap(a), Params { bytes, seed: 7 }).expect("exchange");
        assert!(server.join().expect("server thread").is_ok());
        echo
    }

    #[test]
    fn verify_over_the_real_echo_service_both_ways() {
        // 3 MB: far more than a Unix socket buffers, so a naive one-thread loop would hang.
        for bytes in [0, 1, 3_000_001] {
            let e = against_echo(|s| s, bytes);
            assert_eq!((e.received, e.mismatch_at), (bytes, None));
            let e = against_echo(OneThread, bytes);
            assert_eq!((e.received, e.mismatch_at), (bytes, None));
        }
    }

    #[test]
    fn a_wrong_or_short_echo_is_found() {
        let p = Params {
            bytes: 100,
            seed: 3,
        };
        let mut data = vec![0u8; 100];
        pattern::fill(3, 0, &mut data);
        let mut c = Checker::new(p);
        assert!(!c.feed(&data[..40]));
        let mut bad = data[40..].to_vec();
        bad[10] ^= 1;
        assert!(c.feed(&bad));
        let e = c.finish();
        assert_eq!((e.mismatch_at, e.wrong_byte), (Some(50), true));
        let mut c = Checker::new(p);
        assert!(!c.feed(&data[..60]));
        let e = c.finish();
        assert_eq!((e.mismatch_at, e.wrong_byte), (Some(60), false));
    }
}
