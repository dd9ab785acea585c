//! `sbtool soak`: many connections at once for a long time, mixed sizes, every byte verified.
//!
//! `--conns N` slots, one thread each. Slot `i` talks to target `i % targets`. A slot holds one
//! connection at a time and runs one session on it; then it opens its next connection and
//! only then closes the old one, so all N stay open the whole run (N + 1 for a moment).
//! Sessions:
//! - **messages** (every slot but each `--bulk-every`-th): a random number of echo round
//!   trips of random sizes (most under 256 B, some up to 4 KiB, a few up to 64 KiB); each echo
//!   is compared byte for byte with what was sent;
//! - **bulk** (every `--bulk-every`-th slot): seeded data in writes of random sizes to a sink,
//!   a random total up to `--bulk-max`; the sink's byte count and checksum of what it received
//!   must equal the sender's.
//!
//! Every connection's data comes from its own seed (from `--seed`, the slot and the
//! connection's number), so bytes of one connection showing up in another fail the check.
//! After `--seconds` every slot finishes: a message session after its current round trip, a
//! bulk session stops writing and has what it sent checked. Each connection then ends in order
//! (this side shuts down, the peer's end of file must follow with no extra byte).
//!
//! `bytes_verified` counts the bytes the checks covered: echoed message bytes as compared, bulk
//! bytes as confirmed by the sink's count and checksum.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;
use socket2::Socket;

use crate::addr::Addr;
use crate::checksum::Checksum;
use crate::client::{self, ClientOpts};
use crate::error::{io, Error, Result};
use crate::outcome::Outcome;
use crate::server::{SINK, SINK_REPLY_LEN};
use crate::{net, pattern};

/// Largest echo message.
const MAX_MSG: usize = 64 * 1024;
/// Largest bulk write.
const MAX_WRITE: usize = 64 * 1024;
/// Errors kept for the report.
const KEEP_ERRORS: usize = 10;
/// Stack of a slot thread (its buffers are on the heap).
const SLOT_STACK: usize = 128 * 1024;

/// Parameters of a run.
#[derive(Debug, Clone, Copy)]
pub struct Params {
    /// Slots (connections open at once).
    pub conns: usize,
    /// How long to run.
    pub seconds: f64,
    /// Every this-many-th slot streams bulk data; the others exchange messages.
    pub bulk_every: usize,
    /// Largest bulk session, bytes.
    pub bulk_max: u64,
    /// Base seed.
    pub seed: u64,
}

/// Totals of all slots.
#[derive(Debug, Default)]
struct Totals {
    opened: AtomicU64,
    completed: AtomicU64,
    failed: AtomicU64,
    messages: AtomicU64,
    bulk_sessions: AtomicU64,
    bytes_verified: AtomicU64,
    open_now: AtomicU64,
    max_open: AtomicU64,
    /// Slowest successful connect, µs.
    connect_max_us: AtomicU64,
    /// Sum of successful connects' times, µs.
    connect_sum_us: AtomicU64,
    errors: Mutex<Vec<(String, Option<i32>)>>,
}

impl Totals {
    fn fail(&self, slot: usize, e: &Error) {
        self.failed.fetch_add(1, Ordering::SeqCst);
        if let Ok(mut errors) = self.errors.lock() {
            if errors.len() < KEEP_ERRORS {
                errors.push((format!("slot {slot}: {e}"), e.errno()));
            }
        }
    }

    fn opened(&self, took: Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.connect_max_us.fetch_max(us, Ordering::SeqCst);
        self.connect_sum_us.fetch_add(us, Ordering::SeqCst);
        self.opened.fetch_add(1, Ordering::SeqCst);
        let now = self.open_now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_open.fetch_max(now, Ordering::SeqCst);
    }

    fn closed(&self) {
        self.open_now.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A small deterministic generator (SplitMix64 steps).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(1);
        pattern::splitmix(self.0)
    }

    /// Uniform in `lo..=hi` (slightly biased; fine for sizes).
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    fn size(&mut self, lo: usize, hi: usize) -> usize {
        usize::try_from(self.range(lo as u64, hi as u64)).unwrap_or(lo)
    }

    /// An echo message size: 70% up to 256 B, 25% up to 4 KiB, 5% up to 64 KiB.
    fn message_size(&mut self) -> usize {
        match self.next() % 100 {
            0..=69 => self.size(1, 256),
            70..=94 => self.size(257, 4096),
            _ => self.size(4097, MAX_MSG),
        }
    }
}

/// Buffers a slot reuses across its connections.
struct Buffers {
    out: Vec<u8>,
    back: Vec<u8>,
    want: Vec<u8>,
}

/// Echo round trips until a random count or the deadline; returns the bytes compared.
fn messages(
    sock: &Socket,
    seed: u64,
    rng: &mut Rng,
    deadline: Instant,
    b: &mut Buffers,
) -> Result<(u64, u64)> {
    client::hello_echo(sock)?;
    let count = rng.range(10, 200);
    let (mut offset, mut done) = (0u64, 0u64);
    let mut s = sock;
    while done < count && Instant::now() < deadline {
        let n = rng.message_size();
        pattern::fill(seed, offset, &mut b.out[..n]);
        s.write_all(&b.out[..n]).map_err(io("write (message)"))?;
        net::read_exact(sock, &mut b.back[..n], "echo of a message")?;
        pattern::fill(seed, offset, &mut b.want[..n]);
        if b.back[..n] != b.want[..n] {
            return Err(Error::Protocol(format!(
                "echo differs within bytes {offset}..{} of the connection",
                offset + n as u64
            )));
        }
        offset += n as u64;
        done += 1;
    }
    Ok((offset, done))
}

/// Seeded data to a sink until a random total or the deadline; returns the bytes the sink
/// confirmed.
fn bulk(
    sock: &Socket,
    seed: u64,
    rng: &mut Rng,
    max: u64,
    deadline: Instant,
    b: &mut Buffers,
) -> Result<u64> {
    client::hello(sock, SINK)?;
    let total = rng.range(1, max.max(1));
    let mut sum = Checksum::new();
    let mut offset = 0u64;
    let mut s = sock;
    while offset < total && Instant::now() < deadline {
        let left = usize::try_from(total - offset).unwrap_or(MAX_WRITE);
        let n = rng.size(1, MAX_WRITE).min(left);
        pattern::fill(seed, offset, &mut b.out[..n]);
        s.write_all(&b.out[..n]).map_err(io("write (bulk)"))?;
        sum.update(&b.out[..n]);
        offset += n as u64;
    }
    sock.shutdown(Shutdown::Write)
        .map_err(io("shutdown (bulk)"))?;
    let mut reply = [0u8; SINK_REPLY_LEN];
    net::read_exact(sock, &mut reply, "sink reply")?;
    let word = |r: &[u8]| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&r[..8]);
        u64::from_le_bytes(w)
    };
    let (their_bytes, their_sum) = (word(&reply[..8]), word(&reply[8..]));
    if their_bytes != sum.len() || their_sum != sum.finish() {
        return Err(Error::Protocol(format!(
            "the sink got {their_bytes} bytes with checksum {their_sum:016x}; \
             {} bytes with checksum {:016x} were sent",
            sum.len(),
            sum.finish()
        )));
    }
    Ok(sum.len())
}

/// Ends a connection in order: shut down this side (unless the session did), then the peer's
/// end of file must come with nothing before it.
fn finish(sock: &Socket, shut_down: bool) -> Result<()> {
    // Not twice: on Linux vsock a second shutdown() clears the "peer closed in order" flag
    // (SOCK_DONE), and the read below then fails with ENOTCONN instead of seeing end of file.
    if !shut_down {
        sock.shutdown(Shutdown::Write)
            .map_err(io("shutdown (end of connection)"))?;
    }
    let mut b = [0u8; 1];
    let mut r = sock;
    loop {
        match r.read(&mut b) {
            Ok(0) => return Ok(()),
            Ok(_) => return Err(Error::Protocol("bytes after the end of the session".into())),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io("read (end of connection)")(e)),
        }
    }
}

/// One slot: sessions back to back until the deadline, the next connection opened before the
/// previous one closes.
fn slot(i: usize, target: Addr, p: Params, opts: ClientOpts, deadline: Instant, t: &Totals) {
    let is_bulk = p.bulk_every > 0 && i % p.bulk_every == p.bulk_every - 1;
    let mut rng = Rng(pattern::splitmix(
        p.seed ^ (i as u64).wrapping_mul(0x9E37_79B9),
    ));
    let mut b = Buffers {
        out: vec![0u8; MAX_MSG.max(MAX_WRITE)],
        back: vec![0u8; if is_bulk { 0 } else { MAX_MSG }],
        want: vec![0u8; if is_bulk { 0 } else { MAX_MSG }],
    };
    let open = || {
        let started = Instant::now();
        let s = opts.open(&target);
        if s.is_ok() {
            t.opened(started.elapsed());
        }
        s
    };
    let mut current = open();
    let mut number = 0u64;
    loop {
        let sock = match current {
            Ok(s) => s,
            Err(e) => {
                t.fail(i, &e);
                if Instant::now() >= deadline {
                    return;
                }
                // Do not spin on a peer that refuses; try again shortly.
                thread::sleep(Duration::from_millis(100));
                current = open();
                continue;
            }
        };
        let seed = pattern::splitmix(p.seed ^ ((i as u64) << 32) ^ number);
        number += 1;
        let session = if is_bulk {
            bulk(&sock, seed, &mut rng, p.bulk_max, deadline, &mut b).inspect(|_| {
                t.bulk_sessions.fetch_add(1, Ordering::SeqCst);
            })
        } else {
            messages(&sock, seed, &mut rng, deadline, &mut b).map(|(bytes, count)| {
                t.messages.fetch_add(count, Ordering::SeqCst);
                bytes
            })
        };
        let last = Instant::now() >= deadline;
        // The next connection first, so the slot never holds none.
        let next = (!last).then(&open);
        // A bulk session shut its side down to get the sink's reply.
        let ended = session.and_then(|bytes| finish(&sock, is_bulk).map(|()| bytes));
        drop(sock);
        t.closed();
        match ended {
            Ok(bytes) => {
                t.bytes_verified.fetch_add(bytes, Ordering::SeqCst);
                t.completed.fetch_add(1, Ordering::SeqCst);
            }
            Err(e) => t.fail(i, &e),
        }
        match next {
            Some(n) => current = n,
            None => return,
        }
    }
}

/// Runs `p.conns` slots against `targets` for `p.seconds`.
pub fn run(targets: &[(String, Addr)], p: Params, opts: &ClientOpts) -> Result<Outcome> {
    if targets.is_empty() {
        return Err(Error::Usage("soak needs at least one target".into()));
    }
    let duration = Duration::try_from_secs_f64(p.seconds)
        .map_err(|_| Error::Usage(format!("--seconds {} is not a duration", p.seconds)))?;
    let started = Instant::now();
    let deadline = started + duration;
    let totals = Arc::new(Totals::default());
    let mut threads = Vec::with_capacity(p.conns);
    for i in 0..p.conns {
        let (t, target, opts) = (totals.clone(), targets[i % targets.len()].1, *opts);
        let spawned = thread::Builder::new()
            .name(format!("soak-{i}"))
            .stack_size(SLOT_STACK)
            .spawn(move || slot(i, target, p, opts, deadline, &t));
        match spawned {
            Ok(h) => threads.push(h),
            Err(e) => totals.fail(i, &io("spawn a slot thread")(e)),
        }
    }
    let mut panicked = 0u64;
    for h in threads {
        if h.join().is_err() {
            panicked += 1;
        }
    }
    let t = &totals;
    let get = |a: &AtomicU64| a.load(Ordering::SeqCst);
    let errors = t.errors.lock().map(|e| e.clone()).unwrap_or_default();
    let (opened, completed, failed) =
        (get(&t.opened), get(&t.completed), get(&t.failed) + panicked);
    let ok = failed == 0 && opened == completed && opened >= p.conns as u64;
    Ok(Outcome {
        value: json!({
            "mode": "soak",
            "targets": targets.iter().map(|(text, _)| text.as_str()).collect::<Vec<_>>(),
            "conns": p.conns,
            "seconds": started.elapsed().as_secs_f64(),
            "opened": opened,
            "completed": completed,
            "failed": failed,
            "max_open": get(&t.max_open),
            "connect_ms_max": get(&t.connect_max_us) as f64 / 1e3,
            "connect_ms_mean": if opened > 0 { get(&t.connect_sum_us) as f64 / 1e3 / opened as f64 } else { 0.0 },
            "messages": get(&t.messages),
            "bulk_sessions": get(&t.bulk_sessions),
            "bytes_verified": get(&t.bytes_verified),
            "errors": errors.iter().map(|(e, _)| e.as_str()).collect::<Vec<_>>(),
            "errno": errors.first().and_then(|(_, n)| *n),
            "ok": ok,
        }),
        ok,
    })
}
