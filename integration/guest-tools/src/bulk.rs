//! `sbtool bulk`: stream pseudo-random data to a sink for a while, then compare the
//! receiver's byte count and checksum with the sender's.

use std::net::Shutdown;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::addr::Addr;
use crate::checksum::Checksum;
use crate::client::{self, ClientOpts};
use crate::conn::Stream;
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

/// What the sender saw and the sink replied.
#[derive(Debug)]
pub struct Measured {
    /// Bytes written.
    pub bytes: u64,
    /// Writes.
    pub writes: u64,
    /// Checksum of what was written.
    pub checksum: u64,
    /// The sink's byte count.
    pub receiver_bytes: u64,
    /// The sink's checksum.
    pub receiver_checksum: u64,
    /// Until the sink's reply was in.
    pub seconds: f64,
    /// Until the last write returned.
    pub write_seconds: f64,
}

impl Measured {
    /// The sink counted exactly what was sent.
    pub fn verified(&self) -> bool {
        self.receiver_bytes == self.bytes && self.receiver_checksum == self.checksum
    }
}

/// Writes to a sink (after its service byte) for `duration`, shuts down writing and reads
/// the sink's reply.
pub fn measure<S: Stream>(s: &mut S, duration: Duration, write_size: usize) -> Result<Measured> {
    let mut buf = vec![0u8; write_size + SPREAD];
    pattern::fill(0x5B, 0, &mut buf);
    let mut sum = Checksum::new();
    let (mut offset, mut writes) = (0usize, 0u64);
    let started = Instant::now();
    let deadline = started + duration;
    loop {
        let chunk = &mut buf[offset..offset + write_size];
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
    s.shutdown(Shutdown::Write).map_err(io("shutdown"))?;
    let mut reply = [0u8; SINK_REPLY_LEN];
    net::read_exact(&mut *s, &mut reply, "sink reply")?;
    // Everything sent has been received and counted once the reply is here.
    let seconds = started.elapsed().as_secs_f64();
    let mut word = [0u8; 8];
    word.copy_from_slice(&reply[..8]);
    let receiver_bytes = u64::from_le_bytes(word);
    word.copy_from_slice(&reply[8..]);
    let receiver_checksum = u64::from_le_bytes(word);
    Ok(Measured {
        bytes: sum.len(),
        writes,
        checksum: sum.finish(),
        receiver_bytes,
        receiver_checksum,
        seconds,
        write_seconds,
    })
}

/// Writes for `p.seconds`, then checks the sink's reply.
pub fn run(addr_text: &str, addr: &Addr, p: Params, opts: &ClientOpts) -> Result<Outcome> {
    let duration = Duration::try_from_secs_f64(p.seconds)
        .map_err(|_| Error::Usage(format!("--seconds {} is not a duration", p.seconds)))?;
    let fp = opts.fastpath_for(addr)?;
    let mut conn = opts.connect(addr, fp.as_ref())?;
    client::hello(&mut conn, SINK)?;
    let m = measure(&mut conn, duration, p.write_size)?;
    let verified = m.verified();
    let mut value = json!({
        "mode": "bulk",
        "addr": addr_text,
        "bytes": m.bytes,
        "seconds": m.seconds,
        "write_seconds": m.write_seconds,
        "gbps": report::gbps(m.bytes, m.seconds),
        "write_size": p.write_size,
        "writes": m.writes,
        "verified": verified,
        "receiver_bytes": m.receiver_bytes,
        "checksum": format!("{:016x}", m.checksum),
        "receiver_checksum": format!("{:016x}", m.receiver_checksum),
        "ok": verified,
    });
    conn.describe(opts.fastpath, &mut value);
    Ok(Outcome {
        value,
        ok: verified,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn the_real_sink_service_verifies_over_a_unix_pair() {
        let (mut a, mut b) = UnixStream::pair().expect("socketpair");
        let server = std::thread::spawn(move || crate::server::handle(&mut b));
        client::hello(&mut a, SINK).expect("service byte");
        let m = measure(&mut a, Duration::from_millis(50), 10_000).expect("bulk");
        assert!(m.writes > 0);
        assert_eq!(m.bytes, m.writes * 10_000);
        assert!(m.verified(), "{m:?}");
        assert!(server.join().expect("server thread").is_ok());
    }
}
