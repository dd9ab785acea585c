//! Shared set-up for device tests: an in-process `sockbypassd` with sockets in a temporary
//! directory, host-side helpers, and polling waits (no fixed sleeps).

#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};
use sockbypassd::config::{DaemonConfig, VmConfig, DEFAULT_MAX_CONNS};
use sockbypassd::daemon::{self, DaemonHandle};
use sockbypassd::metrics::VmCountersSnapshot;

/// A VM to configure: name, CID, whether it gets a `uds`.
pub struct VmSpec {
    pub name: &'static str,
    pub cid: u64,
    pub uds: bool,
    pub max_conns: u32,
}

impl VmSpec {
    pub fn new(name: &'static str, cid: u64) -> Self {
        VmSpec {
            name,
            cid,
            uds: true,
            max_conns: DEFAULT_MAX_CONNS,
        }
    }
}

/// A running daemon in a temporary directory. Dropping it stops the daemon and deletes the
/// directory with every socket in it.
pub struct Harness {
    pub daemon: Option<DaemonHandle>,
    pub dir: tempfile::TempDir,
}

impl Harness {
    pub fn start(vms: &[VmSpec]) -> Harness {
        sockbypassd::logging::init(Some(
            &std::env::var("TEST_LOG").unwrap_or_else(|_| "warn".into()),
        ));
        let dir = tempfile::tempdir().expect("temp dir");
        let config = DaemonConfig {
            vms: vms
                .iter()
                .map(|v| VmConfig {
                    name: v.name.to_string(),
                    cid: v.cid,
                    socket: dir.path().join(format!("{}.sock", v.name)),
                    uds: v.uds.then(|| dir.path().join(format!("{}.vsock", v.name))),
                    groups: vec!["test".into()],
                    ports: None,
                    max_conns: v.max_conns,
                })
                .collect(),
            log_level: None,
        };
        config.validate().expect("test config is valid");
        let daemon = daemon::start(config).expect("daemon starts");
        Harness {
            daemon: Some(daemon),
            dir,
        }
    }

    pub fn socket(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.sock"))
    }

    pub fn uds(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.vsock"))
    }

    /// A host program listening where a guest connecting to CID 2 port `port` arrives.
    pub fn host_listener(&self, name: &str, port: u32) -> UnixListener {
        let mut p = self.uds(name).into_os_string();
        p.push(format!("_{port}"));
        UnixListener::bind(PathBuf::from(p)).expect("bind host listener")
    }

    /// A host program connecting to guest port `port` with `CONNECT`; returns the stream after
    /// `OK <host_port>` and the host port.
    pub fn host_connect(&self, name: &str, port: u32) -> std::io::Result<(UnixStream, u32)> {
        let mut s = UnixStream::connect(self.uds(name))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(format!("CONNECT {port}\n").as_bytes())?;
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        while !line.ends_with(b"\n") {
            if s.read(&mut b)? == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionRefused,
                    format!("closed after {:?}", String::from_utf8_lossy(&line)),
                ));
            }
            line.push(b[0]);
        }
        let text = String::from_utf8_lossy(&line);
        let host_port = text
            .strip_prefix("OK ")
            .and_then(|p| p.trim().parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad reply {text:?}")))?;
        Ok((s, host_port))
    }

    pub fn counters(&self, name: &str) -> VmCountersSnapshot {
        self.daemon
            .as_ref()
            .and_then(|d| d.switch().counters(name))
            .expect("known VM")
    }

    pub fn is_attached(&self, name: &str) -> bool {
        self.daemon
            .as_ref()
            .and_then(|d| d.switch().vm_by_name(name).map(|v| v.is_attached()))
            .unwrap_or(false)
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(d) = self.daemon.take() {
            d.shutdown();
        }
    }
}

/// Polls `cond` every millisecond until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// `n` pseudo-random bytes from `seed`.
pub fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut v = vec![0u8; n];
    rng.fill(&mut v[..]);
    v
}

/// Random write sizes in `1..=max` that add up to `total`.
pub fn random_chunks(total: usize, max: usize, seed: u64) -> Vec<usize> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut out = Vec::new();
    let mut left = total;
    while left > 0 {
        let n = rng.gen_range(1..=max.min(left));
        out.push(n);
        left -= n;
    }
    out
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}
