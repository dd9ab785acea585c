//! The `sockbypass-kubevirt-hook` binary itself: it listens where it is told, answers Info,
//! and exits with status 0 on Shutdown, removing its socket.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sockbypass_kubevirt_hook::proto::info::info_client::InfoClient;
use sockbypass_kubevirt_hook::proto::info::InfoParams;
use sockbypass_kubevirt_hook::proto::v1alpha3;

/// The hook process, killed by PID if the test fails before it exits.
struct Hook(std::process::Child);

impl Drop for Hook {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_and_exits_on_shutdown() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hooks = dir.path().join("kubevirt-hooks");
    let mut hook = Hook(
        Command::new(env!("CARGO_BIN_EXE_sockbypass-kubevirt-hook"))
            .arg("--hook-dir")
            .arg(&hooks)
            .args(["--version", "v1alpha3"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the hook"),
    );
    let socket = hooks.join("sockbypass.sock");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !socket.exists() {
        assert!(
            hook.0.try_wait().expect("wait").is_none(),
            "the hook exited early"
        );
        assert!(Instant::now() < deadline, "no hook socket after 20 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    let channel = support::connect(&socket).await;
    let info = InfoClient::new(channel.clone())
        .info(InfoParams {})
        .await
        .expect("Info")
        .into_inner();
    assert_eq!(info.versions, ["v1alpha3"]);
    v1alpha3::callbacks_client::CallbacksClient::new(channel)
        .shutdown(v1alpha3::ShutdownParams {})
        .await
        .expect("Shutdown");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = hook.0.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the hook still runs 10 s after Shutdown"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit status {status}");
    assert!(!socket.exists(), "the hook socket was removed");
}
