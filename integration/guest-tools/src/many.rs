//! `sbtool many`: many echo connections at once. All connect before any data moves; then
//! each gets its own seeded data (seed = connection index), chunk by chunk, interleaved:
//! one chunk written on every connection, then every echo read back and compared.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::time::Instant;

use serde_json::json;
use socket2::Socket;

use crate::addr::Addr;
use crate::client::{self, ClientOpts};
use crate::error::{io, Error, Result};
use crate::outcome::Outcome;
use crate::server::ECHO;
use crate::{net, pattern};

/// Bytes in flight per connection per round: small enough for any socket buffer, so the
/// writes of a round never wait for the reads.
const CHUNK: usize = 16 * 1024;

/// Parameters of a run.
#[derive(Debug, Clone, Copy)]
pub struct Params {
    /// Connections.
    pub conns: usize,
    /// Bytes per connection.
    pub bytes: u64,
}

/// The connections and the first error of each failed one.
struct Conns {
    socks: Vec<Option<Socket>>,
    errors: Vec<Option<Error>>,
}

impl Conns {
    fn fail(&mut self, i: usize, e: Error) {
        self.socks[i] = None;
        self.errors[i] = Some(e);
    }

    /// Runs `f` on every live connection; a connection whose `f` fails is closed and failed.
    fn each(&mut self, mut f: impl FnMut(usize, &Socket) -> Result<()>) {
        for i in 0..self.socks.len() {
            if let Some(s) = &self.socks[i] {
                if let Err(e) = f(i, s) {
                    self.fail(i, e);
                }
            }
        }
    }
}

fn chunk_len(offset: u64, total: u64) -> usize {
    usize::try_from(total.saturating_sub(offset)).map_or(CHUNK, |left| left.min(CHUNK))
}

/// Opens `p.conns` connections and checks every echo.
pub fn run(addr_text: &str, addr: &Addr, p: Params, opts: &ClientOpts) -> Result<Outcome> {
    let started = Instant::now();
    let mut c = Conns {
        socks: Vec::with_capacity(p.conns),
        errors: Vec::with_capacity(p.conns),
    };
    for _ in 0..p.conns {
        match opts.open(addr) {
            Ok(s) => {
                c.socks.push(Some(s));
                c.errors.push(None);
            }
            Err(e) => {
                c.socks.push(None);
                c.errors.push(Some(e));
            }
        }
    }
    let connected = c.socks.iter().filter(|s| s.is_some()).count();

    c.each(|_, s| client::hello(s, ECHO));
    c.each(|_, s| {
        let mut b = [0u8; 1];
        net::read_exact(s, &mut b, "echo of the service byte")?;
        if b[0] == ECHO {
            Ok(())
        } else {
            Err(Error::Protocol("wrong echo of the service byte".into()))
        }
    });

    let (mut out, mut back, mut want) = (vec![0u8; CHUNK], vec![0u8; CHUNK], vec![0u8; CHUNK]);
    let mut offset = 0u64;
    while offset < p.bytes {
        let n = chunk_len(offset, p.bytes);
        c.each(|i, s| {
            pattern::fill(i as u64, offset, &mut out[..n]);
            let mut s = s;
            s.write_all(&out[..n]).map_err(io("write"))
        });
        c.each(|i, s| {
            net::read_exact(s, &mut back[..n], "echo")?;
            pattern::fill(i as u64, offset, &mut want[..n]);
            if back[..n] == want[..n] {
                Ok(())
            } else {
                Err(Error::Protocol(format!(
                    "echo differs within bytes {offset}..{}",
                    offset + n as u64
                )))
            }
        });
        offset += n as u64;
    }
    // Every echo must end exactly here.
    c.each(|_, s| s.shutdown(Shutdown::Write).map_err(io("shutdown")));
    c.each(|_, s| {
        let mut b = [0u8; 1];
        let mut r = s;
        loop {
            match r.read(&mut b) {
                Ok(0) => return Ok(()),
                Ok(_) => return Err(Error::Protocol("the echo ran past the data".into())),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io("read (end of echo)")(e)),
            }
        }
    });

    let failed: Vec<usize> = (0..p.conns).filter(|&i| c.errors[i].is_some()).collect();
    let first = c.errors.iter().flatten().next();
    let ok = failed.is_empty();
    Ok(Outcome {
        value: json!({
            "mode": "many",
            "addr": addr_text,
            "conns": p.conns,
            "connected": connected,
            "bytes": p.bytes,
            "ok": ok,
            "failed": failed,
            "error": first.map(ToString::to_string),
            "errno": first.and_then(Error::errno),
            "seconds": started.elapsed().as_secs_f64(),
        }),
        ok,
    })
}
