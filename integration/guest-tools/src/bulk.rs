//! `sbtool bulk`: stream pseudo-random data to a sink for a while, then compare the
//! receiver's byte count and checksum with the sender's.

use std::io::Write;
use std::net::Shutdown;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::addr::Addr;
use crate::checksum::Checksum;
use crate::client::{self, ClientOpts};
use crate::error::{io, Error, Result};
use crate::outcome::Outcome;
use crate::server::{SINK, SINK_REPLY_LEN};
use crate::{net, pattern, report};

/// Extra bytes past one write in the source buffer: each write starts at another offset in
/// it, and carries its sequence number in its first 8 bytes, so no two writes are alike.
const SPREAD: usize = 4096;
/// Offset step between writes (a multiple of 8, coprime with SPREAD / 8).
const STEP: usize = 8 * 97;

/// Parameters of a run.
#[derive(Debug, Clone, Copy)]
pub struct Params {
    /// How long to write.
    pub seconds: f64,
    /// Bytes per write.
    pub write_size: usize,
}

/// Writes for `p.seconds`, then checks the sink's reply.
pub fn run(addr_text: &str, addr: &Addr, p: Params, opts: &ClientOpts) -> Result<Outcome> {
    let duration = Duration::try_from_secs_f64(p.seconds)
        .map_err(|_| Error::Usage(format!("--seconds {} is not a duration", p.seconds)))?;
    let sock = opts.open(addr)?;
    client::hello(&sock, SINK)?;
    let mut buf = vec![0u8; p.write_size + SPREAD];
    pattern::fill(0x5B, 0, &mut buf);
    let mut sum = Checksum::new();
    let mut s = &sock;
    let (mut offset, mut writes) = (0usize, 0u64);
    let started = Instant::now();
    let deadline = started + duration;
    loop {
        let chunk = &mut buf[offset..offset + p.write_size];
        let stamp = writes.to_le_bytes();
        let n = stamp.len().min(chunk.len());
        chunk[..n].copy_from_slice(&stamp[..n]);
        s.write_all(chunk).map_err(io("write"))?;
        sum.update(chunk);
        writes += 1;
        offset = (offset + STEP) % SPREAD;
        if Instant::now() >= deadline {
            break;
        }
    }
    let write_seconds = started.elapsed().as_secs_f64();
    sock.shutdown(Shutdown::Write).map_err(io("shutdown"))?;
    let mut reply = [0u8; SINK_REPLY_LEN];
    net::read_exact(&sock, &mut reply, "sink reply")?;
    // Everything sent has been received and counted once the reply is here.
    let seconds = started.elapsed().as_secs_f64();
    let mut word = [0u8; 8];
    word.copy_from_slice(&reply[..8]);
    let their_bytes = u64::from_le_bytes(word);
    word.copy_from_slice(&reply[8..]);
    let their_sum = u64::from_le_bytes(word);
    let (bytes, mine) = (sum.len(), sum.finish());
    let verified = their_bytes == bytes && their_sum == mine;
    Ok(Outcome {
        value: json!({
            "mode": "bulk",
            "addr": addr_text,
            "bytes": bytes,
            "seconds": seconds,
            "write_seconds": write_seconds,
            "gbps": report::gbps(bytes, seconds),
            "write_size": p.write_size,
            "writes": writes,
            "verified": verified,
            "receiver_bytes": their_bytes,
            "checksum": format!("{mine:016x}"),
            "receiver_checksum": format!("{their_sum:016x}"),
            "ok": verified,
        }),
        ok: verified,
    })
}
