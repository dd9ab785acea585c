//! What the tests that run the real `sockbypassd` binary share: starting it quietly, killing
//! it by PID when the test ends, and waiting for the files it creates.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `sockbypassd`, killed by PID when dropped.
pub struct Daemon(pub Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `sockbypassd` with `args`, output discarded, `RUST_LOG` unset.
pub fn start(args: &[String]) -> Daemon {
    let child = Command::new(env!("CARGO_BIN_EXE_sockbypassd"))
        .args(args)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start sockbypassd");
    Daemon(child)
}

/// Waits (up to 20 s) until every file of `paths` exists, failing if the daemon exits first.
pub fn wait_for_files(daemon: &mut Daemon, paths: &[PathBuf]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !paths.iter().all(|p| p.exists()) {
        assert!(
            daemon.0.try_wait().expect("wait").is_none(),
            "sockbypassd exited before creating {paths:?}"
        );
        assert!(Instant::now() < deadline, "{paths:?} never appeared");
        std::thread::sleep(Duration::from_millis(20));
    }
}
