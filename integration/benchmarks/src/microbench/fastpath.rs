//! The fast path's host copy alone (SPEC.md §13.4): the daemon's fast-path thread over two VMs'
//! windows, with this thread playing both guests through the guest library
//! (`sockbypass-guest`) on window files and control connections handed straight to the
//! service (no vhost-user device: the control channel's bytes are not what is measured).
//!
//! Figures: nanoseconds per 64 B message with the rings kept full (the copier moves whatever
//! the TX ring holds), one-way latency of one 64 B message, and bulk throughput in 64 KiB
//! writes against this machine's `memcpy`. Every byte that arrives is checked.

use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use sockbypass_guest::{FastPath, FastStream, StreamError, Window};
use sockbypass_measure::stats;
use sockbypassd::config::{DaemonConfig, PollMode, SeccompMode, VmConfig};
use sockbypassd::failure::Failure;
use sockbypassd::fastpath::{window_path, FastPathThread, Intake, Service};
use sockbypassd::host::ControlSink;
use sockbypassd::seccomp::ThreadFilter;

use crate::error::MicrobenchError;

const WINDOW: u64 = 16 << 20;
const PORT: u32 = 5000;
/// One message.
pub const MESSAGE: usize = 64;

fn err(what: &str, e: impl std::fmt::Display) -> MicrobenchError {
    MicrobenchError::Thread(format!("fast path: {what}: {e}"))
}

/// Two VMs' fast path, one connection from A to B, and the daemon's thread copying.
pub struct FastRig {
    /// A's end (writes first).
    pub a: FastStream<UnixStream>,
    /// B's end.
    pub b: FastStream<UnixStream>,
    _libraries: (FastPath<UnixStream>, FastPath<UnixStream>),
    thread: FastPathThread,
    _dir: tempfile::TempDir,
}

impl std::fmt::Debug for FastRig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FastRig")
    }
}

impl FastRig {
    /// Starts the fast-path thread in `mode` (poll budget `budget`) and connects A to B.
    pub fn start(mode: PollMode, budget: Duration) -> Result<FastRig, MicrobenchError> {
        let dir = tempfile::tempdir().map_err(MicrobenchError::TempDir)?;
        let vm = |name: &str, cid| VmConfig {
            fastpath_size: Some(WINDOW),
            groups: vec!["bench".into()],
            ..VmConfig::new(name, cid, dir.path().join(format!("{name}.sock")))
        };
        let config = DaemonConfig::with_vms(vec![vm("a", 3), vm("b", 4)]);
        let paths: Vec<_> = config
            .vms
            .iter()
            .map(|v| window_path(&v.socket, &v.name))
            .collect();
        let windows: Arc<[sockbypassd::fastpath::Window]> = config
            .vms
            .iter()
            .zip(&paths)
            .map(|(v, p)| sockbypassd::fastpath::Window::create_own(p, WINDOW, v.cid))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| err("window", e))?
            .into();
        let epoll = vmm_sys_util::epoll::Epoll::new().map_err(|e| err("epoll", e))?;
        let service = Service::new(&config, windows, epoll);
        let (intake, queue) = Intake::new().map_err(|e| err("intake", e))?;
        let intake = Arc::new(intake);
        let filter = ThreadFilter::build(SeccompMode::Off).map_err(|e| err("filter", e))?;
        let thread = FastPathThread::start(
            service,
            intake.clone(),
            queue,
            mode,
            budget,
            &filter,
            Failure::new(),
        )
        .map_err(|e| err("thread", e))?;
        let library = |vm: usize| -> Result<FastPath<UnixStream>, MicrobenchError> {
            let (guest, daemon) = UnixStream::pair().map_err(|e| err("socket pair", e))?;
            intake
                .take(vm, 1000, daemon)
                .map_err(|e| err("control", e))?;
            let window = Window::open_path(&paths[vm]).map_err(|e| err("map window", e))?;
            FastPath::new(vec![window], guest).map_err(|e| err("library", e))
        };
        let (la, lb) = (library(0)?, library(1)?);
        lb.listen(PORT).map_err(|e| err("listen", e))?;
        let (a, b) = thread::scope(|s| {
            let accept = s.spawn(|| lb.accept());
            let a = la.connect_fast(4, PORT);
            (a, accept.join())
        });
        let a = a.map_err(|e| err("connect", e))?;
        let b = b
            .map_err(|_| err("accept", "panicked"))?
            .map_err(|e| err("accept", e))?;
        Ok(FastRig {
            a,
            b,
            _libraries: (la, lb),
            thread,
            _dir: dir,
        })
    }
}

impl Drop for FastRig {
    fn drop(&mut self) {
        self.thread.stop();
    }
}

/// Writes what it can of `buf` without blocking.
fn try_write(s: &mut FastStream<UnixStream>, buf: &[u8]) -> Result<usize, MicrobenchError> {
    s.set_nonblocking(true);
    match s.write(buf) {
        Ok(n) => Ok(n),
        Err(StreamError::WouldBlock) => Ok(0),
        Err(e) => Err(err("write", e)),
    }
}

/// Reads what is there without blocking.
fn try_read(s: &mut FastStream<UnixStream>, buf: &mut [u8]) -> Result<usize, MicrobenchError> {
    s.set_nonblocking(true);
    match s.read(buf) {
        Ok(0) => Err(err("read", "end of stream")),
        Ok(n) => Ok(n),
        Err(StreamError::WouldBlock) => Ok(0),
        Err(e) => Err(err("read", e)),
    }
}

/// The byte at stream position `at`: what the receiver checks.
fn pattern(at: u64) -> u8 {
    (at % 251) as u8
}

/// Streams A → B for `duration` in writes of `write` bytes, every byte checked; returns the
/// bytes that arrived and the time taken.
pub fn stream(
    rig: &mut FastRig,
    write: usize,
    duration: Duration,
) -> Result<(u64, Duration), MicrobenchError> {
    const READ: usize = 256 << 10;
    // The pattern repeats every 251 bytes: any stream position's bytes are a slice of this.
    let out: Vec<u8> = (0..READ.max(write) + 251)
        .map(|i| pattern(i as u64))
        .collect();
    let mut inb = vec![0u8; READ];
    let (mut sent, mut got) = (0u64, 0u64);
    let start = Instant::now();
    // Fill A's ring with messages, then drain B's; after `duration`, only drain, so that the
    // stream is empty when the next figure starts.
    while got < sent || start.elapsed() < duration {
        while start.elapsed() < duration {
            let at = (sent % 251) as usize;
            let n = try_write(&mut rig.a, &out[at..at + write])?;
            sent += n as u64;
            if n < write {
                break;
            }
        }
        let n = try_read(&mut rig.b, &mut inb)?;
        let at = (got % 251) as usize;
        if inb[..n] != out[at..at + n] {
            return Err(err("check", format!("bytes from {got} on are wrong")));
        }
        got += n as u64;
        if start.elapsed() > duration + Duration::from_secs(30) {
            return Err(err("stream", "the last bytes took over 30 s"));
        }
    }
    Ok((got, start.elapsed()))
}

/// One-way latency of one 64 B message, A → B, `count` times (median, nanoseconds).
pub fn one_way(rig: &mut FastRig, count: u32) -> Result<f64, MicrobenchError> {
    let msg = [7u8; MESSAGE];
    let mut inb = [0u8; MESSAGE];
    let mut samples = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let t = Instant::now();
        if try_write(&mut rig.a, &msg)? != MESSAGE {
            return Err(err("latency", "the ring was not empty"));
        }
        let mut got = 0;
        while got < MESSAGE {
            got += try_read(&mut rig.b, &mut inb[got..])?;
            if t.elapsed() > Duration::from_secs(5) {
                return Err(err("latency", "a message took over 5 s"));
            }
        }
        samples.push(t.elapsed().as_nanos() as f64);
    }
    samples.sort_by(f64::total_cmp);
    Ok(stats::percentile(&samples, 500).unwrap_or(f64::NAN))
}

/// The fast path's figures in one poll mode.
#[derive(Debug, Clone, Copy)]
pub struct FastFigures {
    /// Nanoseconds per 64 B message, rings kept full.
    pub ns_per_message: f64,
    /// One-way latency of one 64 B message, median, nanoseconds.
    pub one_way_ns: f64,
    /// Bulk in 64 KiB writes, bytes per second.
    pub bulk_bytes_per_s: f64,
}

/// Measures the fast path in `mode`.
pub fn measure(
    mode: PollMode,
    budget: Duration,
    seconds: f64,
    latency: u32,
) -> Result<FastFigures, MicrobenchError> {
    let mut rig = FastRig::start(mode, budget)?;
    let d = Duration::from_secs_f64(seconds);
    let (bytes, t) = stream(&mut rig, MESSAGE, d)?;
    let ns_per_message = t.as_nanos() as f64 / (bytes as f64 / MESSAGE as f64);
    let one_way_ns = one_way(&mut rig, latency)?;
    let (bytes, t) = stream(&mut rig, 64 << 10, d)?;
    Ok(FastFigures {
        ns_per_message,
        one_way_ns,
        bulk_bytes_per_s: bytes as f64 / t.as_secs_f64(),
    })
}

/// The perf gate's fixed run: `rounds` rounds of one write of `batch` 64 B messages from A,
/// each read whole by B before the next. Returns the messages moved.
pub fn gate(rounds: u32, batch: u16) -> Result<u64, MicrobenchError> {
    let mut rig = FastRig::start(PollMode::Event, Duration::ZERO)?;
    let len = usize::from(batch) * MESSAGE;
    let out = vec![3u8; len];
    let mut inb = vec![0u8; len];
    for _ in 0..rounds {
        if try_write(&mut rig.a, &out)? != len {
            return Err(err("gate", "the ring did not take a whole batch"));
        }
        let mut got = 0;
        let t = Instant::now();
        while got < len {
            got += try_read(&mut rig.b, &mut inb[got..])?;
            if got < len {
                thread::yield_now();
            }
            if t.elapsed() > Duration::from_secs(60) {
                return Err(err("gate", "a batch took over 60 s"));
            }
        }
    }
    Ok(u64::from(rounds) * u64::from(batch))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rig_moves_checked_bytes_in_every_mode() {
        for mode in [PollMode::Poll, PollMode::Adaptive, PollMode::Event] {
            let mut rig = FastRig::start(mode, Duration::from_micros(100)).expect("rig");
            let (bytes, _) = stream(&mut rig, 1000, Duration::from_millis(100)).expect("stream");
            assert!(bytes > 0, "{mode:?}: bytes arrived");
            assert!(one_way(&mut rig, 10).expect("latency") > 0.0);
        }
        assert_eq!(gate(5, 32).expect("gate"), 160);
    }
}
