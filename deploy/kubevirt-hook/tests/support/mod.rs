//! What the gRPC tests share: the real `sockbypassd` (found beside this test's binary, or
//! built), the hook server on a temporary Unix socket, and a tonic client for it.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use sockbypass_kubevirt_hook::config::Settings;
use sockbypass_kubevirt_hook::grpc::{self, Hook, ServeError};
use tokio::net::UnixStream;
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint, Uri};

pub const DOMAIN: &str = include_str!("../fixtures/domain-default_vmi-x.xml");
pub const VMI: &str = include_str!("../fixtures/vmi-x.json");

/// The `sockbypassd` binary: `$SOCKBYPASSD` if set, else the one cargo built into this test's
/// target directory (`cargo test --workspace` builds it), else built now with
/// `cargo build -p sockbypassd`.
pub fn daemon_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("SOCKBYPASSD") {
        return PathBuf::from(path);
    }
    // target/debug/deps/THIS_TEST -> target/debug/sockbypassd
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary in target/PROFILE/deps");
    let binary = profile_dir.join("sockbypassd");
    if !binary.exists() {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml");
        let status = Command::new(cargo)
            .args(["build", "-p", "sockbypassd", "--manifest-path"])
            .arg(&manifest)
            .status()
            .expect("run cargo build -p sockbypassd");
        assert!(status.success(), "cargo build -p sockbypassd failed");
    }
    assert!(binary.exists(), "{} was not built", binary.display());
    binary
}

/// A running `sockbypassd --control`, killed by PID when dropped; its log is kept in the
/// temporary directory and printed if the test fails while it runs.
pub struct Daemon {
    child: Child,
    /// The control socket.
    pub control: PathBuf,
    log: PathBuf,
}

impl Daemon {
    /// Starts the daemon with no VM and a control socket in `dir`.
    pub fn start(dir: &Path) -> Daemon {
        Daemon::start_with(dir, &[])
    }

    /// Starts the daemon with `args` and a control socket in `dir`.
    pub fn start_with(dir: &Path, args: &[&std::ffi::OsStr]) -> Daemon {
        let control = dir.join("control.sock");
        let log = dir.join("sockbypassd.log");
        let log_file = std::fs::File::create(&log).expect("daemon log");
        let child = Command::new(daemon_binary())
            .arg("--control")
            .arg(&control)
            .args(args)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("start sockbypassd");
        let mut daemon = Daemon {
            child,
            control,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !daemon.control.exists() {
            assert!(
                daemon.child.try_wait().expect("wait").is_none(),
                "sockbypassd exited before creating its control socket: {}",
                daemon.log()
            );
            assert!(Instant::now() < deadline, "no control socket after 20 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        daemon
    }

    /// What the daemon logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("sockbypassd log:\n{}", self.log());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The hook server running on a socket in a temporary directory.
pub struct Server {
    /// The hook socket.
    pub socket: PathBuf,
    /// The server task; it ends on Shutdown.
    pub task: JoinHandle<Result<(), ServeError>>,
}

impl Server {
    /// Starts the hook with `settings` on `dir/hook.sock`.
    pub fn start(dir: &Path, settings: Settings) -> Server {
        let socket = dir.join("hooks").join("hook.sock");
        let listener = grpc::bind(&socket).expect("bind the hook socket");
        let task = tokio::spawn(grpc::serve(
            listener,
            Hook::new(settings),
            std::future::pending(),
        ));
        Server { socket, task }
    }

    /// A client channel to the hook.
    pub async fn channel(&self) -> Channel {
        connect(&self.socket).await
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A tonic channel over the Unix socket at `path`.
pub async fn connect(path: &Path) -> Channel {
    let path = path.to_owned();
    Endpoint::from_static("http://kubevirt-hook.invalid")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
        .expect("connect to the hook socket")
}
