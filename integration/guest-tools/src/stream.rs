//! `sbtool stream`: one echo connection that streams seeded data until the connection breaks
//! or `--seconds` pass, comparing every echoed byte. Made for fault tests, where the peer dies
//! mid-stream and what matters is how the stream ends, and when.
//!
//! Once `--flowing-after` bytes came back intact it prints [`FLOWING`] on a line of its own
//! on stderr, so that a host watching the console knows the stream is under way.
//!
//! How a broken connection shows: Linux's virtio vsock (6.1, the test guests' kernel) turns a
//! peer's RST on an established stream into end of file for a read and EPIPE for a write
//! (ECONNRESET only for a refused connect); TCP gives ECONNRESET. The echo server never ends a
//! stream before the client's own shutdown, so the stream ended `"reset"` when it ends while
//! this side is still sending: end of file from the echo, or ECONNRESET or EPIPE on either
//! direction. Every other end is `"error"` (a timeout, any other errno), `"mismatch"` (a wrong
//! byte came back) or `"done"` (`--seconds` passed and the whole echo came back).
//!
//! `stall_ms` is measured on this machine's monotonic clock: from the last read that returned
//! echo data to the moment the end was seen (the earliest of the reader's and the writer's).

use std::io::{Read, Write};
use std::net::Shutdown;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;
use socket2::Socket;

use crate::addr::Addr;
use crate::client::{self, ClientOpts};
use crate::error::{errno_of, io, Error, Result};
use crate::outcome::Outcome;
use crate::pattern;

/// The line printed on stderr once the stream flows.
pub const FLOWING: &str = "SB-STREAM-FLOWING";

const CHUNK: usize = 16 * 1024;

/// Parameters of a run.
#[derive(Debug, Clone, Copy)]
pub struct Params {
    /// Stop sending after this long (then the echo must come back whole).
    pub seconds: f64,
    /// Print [`FLOWING`] once this many bytes came back intact.
    pub flowing_after: u64,
    /// Seed of the data.
    pub seed: u64,
}

/// How one direction ended.
#[derive(Debug)]
enum Stop {
    /// The writer sent everything and shut its side down; the reader read the whole echo.
    Finished,
    /// End of file from the echo while this side was still sending.
    PeerEnded,
    /// An OS error.
    Failed(std::io::Error),
    /// A wrong byte at this offset.
    Mismatch(u64),
    /// More bytes came back than were sent.
    TooLong,
}

/// What the writer thread shares with the reader.
#[derive(Debug, Default)]
struct Shared {
    /// Bytes written so far.
    sent: AtomicU64,
    /// The writer sent everything and shut down its side.
    finished: AtomicBool,
    /// The writer's error and when it happened.
    failure: Mutex<Option<(Instant, std::io::Error)>>,
}

fn write_until(sock: &Socket, p: Params, deadline: Instant, shared: &Shared) {
    let mut s = sock;
    let mut buf = vec![0u8; CHUNK];
    let mut offset = 0u64;
    while Instant::now() < deadline {
        pattern::fill(p.seed, offset, &mut buf);
        if let Err(e) = s.write_all(&buf) {
            let failed = (Instant::now(), e);
            if let Ok(mut f) = shared.failure.lock() {
                *f = Some(failed);
            }
            // Wake the reader if it waits on a connection that can no longer end normally.
            let _ = sock.shutdown(Shutdown::Read);
            return;
        }
        offset += CHUNK as u64;
        shared.sent.store(offset, Ordering::SeqCst);
    }
    match sock.shutdown(Shutdown::Write) {
        Ok(()) => shared.finished.store(true, Ordering::SeqCst),
        Err(e) => {
            if let Ok(mut f) = shared.failure.lock() {
                *f = Some((Instant::now(), e));
            }
        }
    }
}

/// What the reader saw.
struct ReadEnd {
    stop: Stop,
    at: Instant,
    verified: u64,
    last_data: Instant,
}

fn read_and_check(sock: &Socket, p: Params, shared: &Shared, started: Instant) -> ReadEnd {
    let mut s = sock;
    let (mut got, mut want) = (vec![0u8; CHUNK], vec![0u8; CHUNK]);
    let mut verified = 0u64;
    let mut last_data = started;
    let mut announced = false;
    let end = |stop, verified, last_data| ReadEnd {
        stop,
        at: Instant::now(),
        verified,
        last_data,
    };
    loop {
        let n = match s.read(&mut got) {
            Ok(0) => {
                let sent = shared.sent.load(Ordering::SeqCst);
                let stop = if shared.finished.load(Ordering::SeqCst) && verified == sent {
                    Stop::Finished
                } else {
                    Stop::PeerEnded
                };
                return end(stop, verified, last_data);
            }
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return end(Stop::Failed(e), verified, last_data),
        };
        last_data = Instant::now();
        // Bytes past what the writer reported sent cannot be an echo yet, unless the count
        // was read just before the writer updated it: compare against the pattern anyway,
        // and call it too long only once the writer has finished.
        pattern::fill(p.seed, verified, &mut want[..n]);
        if let Some(i) = got[..n].iter().zip(&want[..n]).position(|(a, b)| a != b) {
            return end(Stop::Mismatch(verified + i as u64), verified, last_data);
        }
        verified += n as u64;
        if shared.finished.load(Ordering::SeqCst) && verified > shared.sent.load(Ordering::SeqCst) {
            return end(Stop::TooLong, verified, last_data);
        }
        if !announced && verified >= p.flowing_after {
            announced = true;
            eprintln!("\n{FLOWING} verified={verified}");
        }
    }
}

/// Whether `e` is how a connection reset shows (see the module documentation).
fn is_reset(e: &std::io::Error) -> bool {
    matches!(errno_of(e), Some(libc::ECONNRESET | libc::EPIPE))
}

/// Streams until the connection breaks or `p.seconds` pass; reports how it ended.
pub fn run(addr_text: &str, addr: &Addr, p: Params, opts: &ClientOpts) -> Result<Outcome> {
    let duration = Duration::try_from_secs_f64(p.seconds)
        .map_err(|_| Error::Usage(format!("--seconds {} is not a duration", p.seconds)))?;
    let sock = opts.open(addr)?;
    client::hello_echo(&sock)?;
    let started = Instant::now();
    let shared = Arc::new(Shared::default());
    let wsock = sock.try_clone().map_err(io("dup"))?;
    let wshared = shared.clone();
    let writer = thread::Builder::new()
        .name("stream-writer".into())
        .spawn(move || write_until(&wsock, p, started + duration, &wshared))
        .map_err(io("spawn the writer thread"))?;
    let read = read_and_check(&sock, p, &shared, started);
    if !matches!(read.stop, Stop::Finished) {
        // Unblock the writer: it may wait for credit the peer will never give.
        let _ = sock.shutdown(Shutdown::Both);
    }
    writer
        .join()
        .map_err(|_| Error::Protocol("the writer thread panicked".into()))?;
    let seconds = started.elapsed().as_secs_f64();
    let write_failure = shared.failure.lock().ok().and_then(|mut f| f.take());

    // The end as seen first: a writer's error that came before the reader's end explains it.
    let classify = |side: &str, e: &std::io::Error, t: Instant| {
        let kind = if is_reset(e) { "reset" } else { "error" };
        (kind, format!("{side}: {e}"), errno_of(e), t)
    };
    let (ended, how, errno, at) = match (&read.stop, &write_failure) {
        (Stop::Mismatch(_) | Stop::TooLong, _) => {
            ("mismatch", "wrong echo".to_owned(), None, read.at)
        }
        (Stop::Failed(e), Some((t, _))) if read.at < *t => classify("read", e, read.at),
        (_, Some((t, e))) => classify("write", e, *t),
        (Stop::Finished, None) => ("done", "finished".to_owned(), None, read.at),
        (Stop::PeerEnded, None) => ("reset", "read: end of file".to_owned(), None, read.at),
        (Stop::Failed(e), None) => classify("read", e, read.at),
    };
    let mismatch_at = match read.stop {
        Stop::Mismatch(at) => Some(at),
        Stop::TooLong => Some(shared.sent.load(Ordering::SeqCst)),
        _ => None,
    };
    let stall_ms = at.saturating_duration_since(read.last_data).as_secs_f64() * 1e3;
    let ok = ended == "done" || ended == "reset";
    Ok(Outcome {
        value: json!({
            "mode": "stream",
            "addr": addr_text,
            "ok": ok,
            "ended": ended,
            "how": how,
            "errno": errno,
            "sent": shared.sent.load(Ordering::SeqCst),
            "verified": read.verified,
            "mismatch_at": mismatch_at,
            "stall_ms": stall_ms,
            "seconds": seconds,
        }),
        ok,
    })
}
