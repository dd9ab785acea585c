//! `sbtool many`: many echo connections at once. All connect before any data moves; then
//! each gets its own seeded data (seed = connection index), chunk by chunk, interleaved:
//! one chunk written on every connection, then every echo read back and compared.
//!
//! With `--fastpath` all connections go through one `FastPath` (one control channel); the
//! result counts the connections per path (`"paths"`).

use std::net::Shutdown;
use std::time::Instant;

use serde_json::{json, Map, Value};

use crate::addr::Addr;
use crate::client::{self, ClientOpts};
use crate::conn::Stream;
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
struct Conns<S> {
    socks: Vec<Option<S>>,
    errors: Vec<Option<Error>>,
}

impl<S: Stream> Conns<S> {
    fn new(opened: impl IntoIterator<Item = Result<S>>) -> Conns<S> {
        let (mut socks, mut errors) = (Vec::new(), Vec::new());
        for o in opened {
            match o {
                Ok(s) => {
                    socks.push(Some(s));
                    errors.push(None);
                }
                Err(e) => {
                    socks.push(None);
                    errors.push(Some(e));
                }
            }
        }
        Conns { socks, errors }
    }

    fn fail(&mut self, i: usize, e: Error) {
        self.socks[i] = None;
        self.errors[i] = Some(e);
    }

    /// Runs `f` on every live connection; a connection whose `f` fails is closed and failed.
    fn each(&mut self, mut f: impl FnMut(usize, &mut S) -> Result<()>) {
        for i in 0..self.socks.len() {
            if let Some(s) = &mut self.socks[i] {
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

/// The echo handshake, then `bytes` of seeded data (seed = index) on every live connection,
/// chunk by chunk, every echo compared; then each echo must end exactly there.
fn exchange<S: Stream>(c: &mut Conns<S>, bytes: u64) {
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
    while offset < bytes {
        let n = chunk_len(offset, bytes);
        c.each(|i, s| {
            pattern::fill(i as u64, offset, &mut out[..n]);
            s.write_all(&out[..n]).map_err(io("write"))
        });
        c.each(|i, s| {
            net::read_exact(&mut *s, &mut back[..n], "echo")?;
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
        loop {
            match s.read(&mut b) {
                Ok(0) => return Ok(()),
                Ok(_) => return Err(Error::Protocol("the echo ran past the data".into())),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io("read (end of echo)")(e)),
            }
        }
    });
}

/// Opens `p.conns` connections and checks every echo.
pub fn run(addr_text: &str, addr: &Addr, p: Params, opts: &ClientOpts) -> Result<Outcome> {
    let fp = opts.fastpath_for(addr)?;
    let started = Instant::now();
    let mut c = Conns::new((0..p.conns).map(|_| opts.connect(addr, fp.as_ref())));
    let connected = c.socks.iter().filter(|s| s.is_some()).count();
    // Paths as connected (before any failure closes a connection).
    let mut paths = Map::new();
    for conn in c.socks.iter().flatten() {
        let n = paths.get(conn.path()).and_then(Value::as_u64).unwrap_or(0);
        paths.insert(conn.path().into(), Value::from(n + 1));
    }
    let first_conn = c.socks.iter().flatten().next();
    let path = first_conn.map(|s| s.path());
    let fallback_reason = first_conn.and_then(|s| s.fallback_reason().map(str::to_owned));

    exchange(&mut c, p.bytes);

    let failed: Vec<usize> = (0..p.conns).filter(|&i| c.errors[i].is_some()).collect();
    let first = c.errors.iter().flatten().next();
    let ok = failed.is_empty();
    let mut value = json!({
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
        "path": path,
        "paths": paths,
    });
    if let (true, Some(o)) = (opts.fastpath, value.as_object_mut()) {
        o.insert("fallback_reason".into(), Value::from(fallback_reason));
    }
    Ok(Outcome { value, ok })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn many_echoes_over_unix_pairs_with_the_real_echo_service() {
        let mut servers = Vec::new();
        let mut opened = Vec::new();
        for _ in 0..5 {
            let (a, mut b) = UnixStream::pair().expect("socketpair");
            servers.push(std::thread::spawn(move || crate::server::handle(&mut b)));
            opened.push(Ok(a));
        }
        opened.push(Err(Error::Protocol("could not connect".into())));
        let mut c = Conns::new(opened);
        exchange(&mut c, 100_000);
        let failed: Vec<usize> = (0..6).filter(|&i| c.errors[i].is_some()).collect();
        assert_eq!(failed, [5]);
        for s in servers {
            assert!(s.join().expect("server thread").is_ok());
        }
    }
}
