//! The device tests of `sockbypassd` (`tests/`): an in-process daemon, driven through its
//! vhost-user sockets by the test frontend (`sockbypass-frontend`), which plays QEMU and the
//! guest driver. `tests/e2e_guests.rs` does the same with real guests under QEMU
//! (`sockbypass-guests`). This library is their shared set-up: the daemon with sockets in a
//! temporary directory, host-side helpers, and polling waits (no fixed sleeps).
//!
//! | module | job |
//! |---|---|
//! | this file | [`Harness`], [`VmSpec`], waits, random data, checksums |
//! | [`peers`] | driving several guest drivers from one thread: connect two VMs, pump, compare |
//! | [`transfer`] | full-duplex stream jobs with random write sizes, run by one driver |
//! | [`guest_bridge`] | a test VM's fast-path control connections, as Unix sockets |
//! | [`window_file`] | a fast-path window as a guest sees it, through its file |
//! | [`raw_control`] | a fast-path control connection driven message by message |

pub mod guest_bridge;
pub mod peers;
pub mod raw_control;
pub mod transfer;
pub mod window_file;

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};
use sockbypass_frontend::{DriverConfig, StreamId, TestVm, VmOptions};
use sockbypass_wire::consts::HOST_CID;
use sockbypassd::config::{
    DaemonConfig, SeccompMode, VmConfig, DEFAULT_HOST_BUFFER_BYTES, DEFAULT_MAX_CONNS,
};
use sockbypassd::daemon::{self, DaemonHandle};
use sockbypassd::metrics::VmCountersSnapshot;
use sockbypassd::switch::VmGauges;

/// A VM to configure: name, CID, whether it gets a `uds`, its limit and its policy.
#[derive(Debug, Clone)]
pub struct VmSpec {
    pub name: &'static str,
    pub cid: u64,
    pub uds: bool,
    pub max_conns: u32,
    /// Groups (`groups=`); VMs reach each other only within a shared group.
    pub groups: Vec<&'static str>,
    /// Ports peers may connect to (`ports=`); `None` means any.
    pub ports: Option<Vec<u32>>,
    /// `max_conns_per_peer`; `None` for the default.
    pub max_conns_per_peer: Option<u32>,
    /// `host_buffer_bytes`.
    pub host_buffer_bytes: u64,
    /// `fastpath_size` (`fastpath=on`), or `None`.
    pub fastpath: Option<u64>,
}

impl VmSpec {
    /// A VM with a `uds`, the default `max_conns`, in group `test`, open on every port.
    pub fn new(name: &'static str, cid: u64) -> Self {
        VmSpec {
            name,
            cid,
            uds: true,
            max_conns: DEFAULT_MAX_CONNS,
            groups: vec!["test"],
            ports: None,
            max_conns_per_peer: None,
            host_buffer_bytes: DEFAULT_HOST_BUFFER_BYTES,
            fastpath: None,
        }
    }

    /// Turns the fast path on with a window of `size` bytes.
    pub fn fastpath(mut self, size: u64) -> Self {
        self.fastpath = Some(size);
        self
    }

    /// Replaces the groups.
    pub fn groups(mut self, groups: &[&'static str]) -> Self {
        self.groups = groups.to_vec();
        self
    }

    /// Restricts the ports peers may connect to.
    pub fn ports(mut self, ports: &[u32]) -> Self {
        self.ports = Some(ports.to_vec());
        self
    }

    /// Sets the connection limit.
    pub fn max_conns(mut self, n: u32) -> Self {
        self.max_conns = n;
        self
    }

    /// Sets how many connections one other VM may open to this one.
    pub fn max_conns_per_peer(mut self, n: u32) -> Self {
        self.max_conns_per_peer = Some(n);
        self
    }

    /// Sets the byte budget of the VM's host connections.
    pub fn host_buffer_bytes(mut self, n: u64) -> Self {
        self.host_buffer_bytes = n;
        self
    }
}

/// A running daemon in a temporary directory. Dropping it stops the daemon and deletes the
/// directory with every socket in it.
#[derive(Debug)]
pub struct Harness {
    pub daemon: Option<DaemonHandle>,
    pub dir: tempfile::TempDir,
}

impl Harness {
    pub fn start(vms: &[VmSpec]) -> Harness {
        Harness::start_with_poll(vms, test_poll_config())
    }

    /// Like [`Harness::start`] with explicit poll engine settings.
    pub fn start_with_poll(vms: &[VmSpec], poll: sockbypassd::config::PollConfig) -> Harness {
        let dir = tempfile::tempdir().expect("temp dir");
        Harness::start_in(harness_config_in(dir.path(), vms, poll), dir)
    }

    /// A daemon with `config` (from [`harness_config`], then changed), in the directory its
    /// sockets name.
    pub fn start_config(config: (DaemonConfig, tempfile::TempDir)) -> Harness {
        Harness::start_in(config.0, config.1)
    }

    fn start_in(config: DaemonConfig, dir: tempfile::TempDir) -> Harness {
        sockbypassd::logging::init(Some(
            &std::env::var("TEST_LOG").unwrap_or_else(|_| "warn".into()),
        ));
        config.validate().expect("test config is valid");
        let daemon = daemon::start(config).expect("daemon starts");
        Harness {
            daemon: Some(daemon),
            dir,
        }
    }

    /// The fast-path window of VM `name`.
    pub fn window(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.window"))
    }

    /// The fast-path counters of VM `name`.
    pub fn fastpath_counters(&self, name: &str) -> sockbypassd::metrics::FastPathCountersSnapshot {
        self.daemon
            .as_ref()
            .and_then(|d| d.fastpath_counters(name))
            .unwrap_or_else(|| panic!("no fast-path counters for {name}"))
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

    pub fn counters(&self, name: &str) -> VmCountersSnapshot {
        self.daemon
            .as_ref()
            .and_then(|d| d.switch().counters(name))
            .expect("known VM")
    }

    /// The switch's gauges of VM `name` (live state, not counters).
    pub fn gauges(&self, name: &str) -> VmGauges {
        self.daemon
            .as_ref()
            .and_then(|d| d.switch().gauges(name))
            .expect("known VM")
    }

    /// A frontend and guest driver attached to VM `name`, default options.
    pub fn vm(&self, name: &str) -> TestVm {
        self.vm_with(name, DriverConfig::default())
    }

    /// A frontend attached to VM `name` whose guest driver uses `driver`.
    pub fn vm_with(&self, name: &str, driver: DriverConfig) -> TestVm {
        self.vm_with_options(
            name,
            VmOptions {
                driver,
                ..VmOptions::default()
            },
        )
    }

    /// A frontend attached to VM `name` with `options` (guest RAM, negotiation, driver).
    pub fn vm_with_options(&self, name: &str, options: VmOptions) -> TestVm {
        let vm = TestVm::connect(self.socket(name), options).expect("test VM connects");
        self.wait_attached(name);
        vm
    }

    /// A VM whose guest driver posts `initial` RX buffers (for the connection set-up) and no
    /// more until the test says so (`set_rx_refill(true)`, `post_rx_buffers`): packets for it
    /// wait in the switch. `driver` sets the rest of the driver.
    pub fn vm_without_rx_buffers(&self, name: &str, initial: u16, driver: DriverConfig) -> TestVm {
        let mut vm = self.vm_with(
            name,
            DriverConfig {
                rx_buffers: Some(0),
                ..driver
            },
        );
        vm.driver_mut().set_rx_refill(false);
        vm.driver_mut()
            .post_rx_buffers(initial)
            .expect("set-up RX buffers");
        vm
    }

    /// Waits until the daemon has bound VM `name`'s rings. A frontend's connect returns before
    /// that (the daemon binds on the first ring event), and until then peers' REQUESTs to it
    /// are refused, as for any detached VM.
    pub fn wait_attached(&self, name: &str) {
        assert!(
            wait_until(Duration::from_secs(10), || self.is_attached(name)),
            "VM {name} never attached"
        );
    }

    /// Waits until neither `a` nor `b` takes part in a VM-to-VM connection any more; panics
    /// with both VMs' gauges after `timeout`.
    pub fn wait_peer_entries_freed(&self, a: &str, b: &str, timeout: Duration) {
        assert!(
            wait_until(timeout, || self.gauges(a).peer_conns == 0
                && self.gauges(b).peer_conns == 0),
            "entries freed: {a} {:?}, {b} {:?}",
            self.gauges(a),
            self.gauges(b)
        );
    }

    pub fn poll_counters(&self) -> Vec<sockbypassd::poll::PollCountersSnapshot> {
        self.daemon
            .as_ref()
            .map(|d| d.poll_counters())
            .unwrap_or_default()
    }

    pub fn is_attached(&self, name: &str) -> bool {
        self.daemon
            .as_ref()
            .and_then(|d| d.switch().vm_by_name(name).map(|v| v.is_attached()))
            .unwrap_or(false)
    }
}

/// How long a test daemon may take to stop. A daemon that does not stop (a thread spinning
/// on a guest's ring, a deadlock) fails the test instead of hanging the suite.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(20);

impl Drop for Harness {
    fn drop(&mut self) {
        let Some(d) = self.daemon.take() else {
            return;
        };
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        // The daemon stops on its own thread; if it never does, that thread is left behind
        // (the test process ends with the test binary) and the test fails here.
        let _ = std::thread::Builder::new()
            .name("harness-shutdown".into())
            .spawn(move || {
                d.shutdown();
                let _ = done_tx.send(());
            });
        if done_rx.recv_timeout(SHUTDOWN_DEADLINE).is_err() && !std::thread::panicking() {
            panic!("the daemon did not stop within {SHUTDOWN_DEADLINE:?}");
        }
    }
}

/// The configuration [`Harness::start_with_poll`] would use, and the temporary directory its
/// sockets live in, for a test to change before [`Harness::start_config`].
pub fn harness_config(
    vms: &[VmSpec],
    poll: sockbypassd::config::PollConfig,
) -> (DaemonConfig, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    (harness_config_in(dir.path(), vms, poll), dir)
}

fn harness_config_in(
    dir: &std::path::Path,
    vms: &[VmSpec],
    poll: sockbypassd::config::PollConfig,
) -> DaemonConfig {
    DaemonConfig {
        poll,
        seccomp: test_seccomp_mode(),
        ..DaemonConfig::with_vms(
            vms.iter()
                .map(|v| VmConfig {
                    uds: v.uds.then(|| dir.join(format!("{}.vsock", v.name))),
                    groups: v.groups.iter().map(|g| g.to_string()).collect(),
                    ports: v.ports.clone(),
                    max_conns: v.max_conns,
                    max_conns_per_peer: v.max_conns_per_peer,
                    host_buffer_bytes: v.host_buffer_bytes,
                    fastpath_size: v.fastpath,
                    ..VmConfig::new(v.name, v.cid, dir.join(format!("{}.sock", v.name)))
                })
                .collect(),
        )
    }
}

/// The poll engine settings for test daemons: the default (adaptive), or the mode in
/// `SOCKBYPASS_TEST_POLL_MODE` (`ci/test.sh` runs the device tests once per mode).
pub fn test_poll_config() -> sockbypassd::config::PollConfig {
    let mut poll = sockbypassd::config::PollConfig::default();
    if let Ok(mode) = std::env::var("SOCKBYPASS_TEST_POLL_MODE") {
        poll.mode = mode
            .parse()
            .expect("SOCKBYPASS_TEST_POLL_MODE is poll, event or adaptive");
    }
    poll
}

/// Whether this is a CI run (`CI=true`): there, a test that cannot run is a failure.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// A test that cannot run for `reason` (something the project installs is missing, or cannot be
/// built): with `CI=true` that fails the test; on a developer's machine the test is skipped,
/// with the reason printed. Returns `None` for the caller to return early.
pub fn cannot_run<T>(reason: &str) -> Option<T> {
    assert!(
        !in_ci(),
        "CI=true: this test could not run, which is a failure in CI: {reason}"
    );
    eprintln!("SKIPPED (CI would fail): {reason}");
    None
}

/// A host program connecting to guest port `port` through the VM's `uds` socket at `uds`: it
/// writes `CONNECT <port>` and reads the reply byte by byte up to its newline, so nothing after
/// the line is taken from the stream. Returns the stream after `OK <host_port>`, and the host
/// port. The stream has `timeout` as its read and write timeouts; no complete line within
/// `timeout`, a stream that ends first, or any other reply is an error.
pub fn host_connect(
    uds: &Path,
    port: u32,
    timeout: Duration,
) -> std::io::Result<(UnixStream, u32)> {
    let mut s = UnixStream::connect(uds)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(format!("CONNECT {port}\n").as_bytes())?;
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    let deadline = Instant::now() + timeout;
    while !line.ends_with(b"\n") {
        if Instant::now() >= deadline {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "no OK line within {timeout:?}: {:?}",
                    String::from_utf8_lossy(&line)
                ),
            ));
        }
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

/// A connection to `listener` (a host program's), waited for at most `timeout`; panics naming
/// `what` after that. The stream is blocking, with `timeout` as its read and write timeouts, so
/// a host program in a test never waits forever either.
pub fn accept_within(listener: &UnixListener, timeout: Duration, what: &str) -> UnixStream {
    listener
        .set_nonblocking(true)
        .expect("non-blocking listener");
    let end = Instant::now() + timeout;
    loop {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).expect("blocking stream");
                s.set_read_timeout(Some(timeout)).expect("read timeout");
                s.set_write_timeout(Some(timeout)).expect("write timeout");
                return s;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(
                    Instant::now() < end,
                    "{what}: no connection within {timeout:?}"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => panic!("{what}: accept failed: {e}"),
        }
    }
}

/// The guest of `vm` reaches the host program listening on `listener` (CID 2, `port`): it
/// connects, sends `ping`, the host program reads it and answers `pong`, and the guest reads
/// that, each within `timeout`. Returns the guest's stream and the host program's end. Panics
/// naming `what` when a step fails.
pub fn ping_host(
    vm: &mut TestVm,
    listener: &UnixListener,
    port: u32,
    timeout: Duration,
    what: &str,
) -> (StreamId, UnixStream) {
    let d = vm.driver_mut();
    let id = d
        .connect_blocking(HOST_CID, port, timeout)
        .unwrap_or_else(|e| panic!("{what}: connect to host port {port}: {e}"));
    let mut host = accept_within(listener, timeout, what);
    d.send_all(id, b"ping", timeout)
        .unwrap_or_else(|e| panic!("{what}: guest sends: {e}"));
    let mut four = [0u8; 4];
    host.read_exact(&mut four)
        .unwrap_or_else(|e| panic!("{what}: host reads: {e}"));
    assert_eq!(
        &four, b"ping",
        "{what}: the host program got the guest's bytes"
    );
    host.write_all(b"pong")
        .unwrap_or_else(|e| panic!("{what}: host writes: {e}"));
    let back = d
        .recv_exact(id, 4, timeout)
        .unwrap_or_else(|e| panic!("{what}: guest reads: {e}"));
    assert_eq!(
        back, b"pong",
        "{what}: the guest got the host program's bytes"
    );
    (id, host)
}

/// The seccomp mode of test daemons: `kill`, as the daemon ships, so every daemon thread is
/// confined and a system call outside the allowlist kills the test process with SIGSYS. To
/// find which call that was, run the tests again with `SOCKBYPASS_TEST_SECCOMP=log` and read
/// the kernel's log (`dmesg | grep type=1326`).
pub fn test_seccomp_mode() -> SeccompMode {
    match std::env::var("SOCKBYPASS_TEST_SECCOMP") {
        Ok(mode) => mode
            .parse()
            .expect("SOCKBYPASS_TEST_SECCOMP is off, log or kill"),
        Err(_) => SeccompMode::Kill,
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
