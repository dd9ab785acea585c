//! QEMU accepts what the hook puts in `<qemu:commandline>` and reaches the real daemon with
//! it: the hook registers the VM through gRPC, and QEMU, started with the returned `qemu:arg`
//! values and shared memfd guest memory (what libvirt makes of the returned `<memoryBacking>`),
//! connects to the VM's vhost-user socket. libvirt itself is not run here.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sockbypass_kubevirt_hook::config::Settings;
use sockbypass_kubevirt_hook::domain::QEMU_NS;
use sockbypass_kubevirt_hook::proto::v1alpha3;
use support::{Daemon, Server, DOMAIN, VMI};

const QEMU: &str = "qemu-system-x86_64";

/// A QEMU process, killed by PID when dropped.
struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether QEMU can run; in CI (`CI=true`) its absence is a failure.
fn have_qemu() -> bool {
    let found = Command::new(QEMU).arg("--version").output().is_ok();
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{QEMU} is missing: ci/install-deps.sh installs qemu-system-x86"
        );
        eprintln!("skipped: {QEMU} is not installed");
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_connects_to_the_daemon_with_the_hooks_arguments() {
    if !have_qemu() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(dir.path());
    let server = Server::start(dir.path(), Settings::new(&daemon.control, dir.path()));
    let reply = v1alpha3::callbacks_client::CallbacksClient::new(server.channel().await)
        .on_define_domain(v1alpha3::OnDefineDomainParams {
            domain_xml: DOMAIN.as_bytes().to_vec(),
            vmi: VMI.as_bytes().to_vec(),
        })
        .await
        .expect("OnDefineDomain")
        .into_inner();
    let xml = String::from_utf8(reply.domain_xml).expect("UTF-8");
    let doc = roxmltree::Document::parse(&xml).expect("XML");
    let args: Vec<String> = doc
        .descendants()
        .filter(|n| n.tag_name().namespace() == Some(QEMU_NS) && n.tag_name().name() == "arg")
        .filter_map(|n| n.attribute("value").map(str::to_owned))
        .collect();
    assert_eq!(args.len(), 4, "{args:?}");

    let qemu_log = dir.path().join("qemu.log");
    let mut qemu = Qemu(
        Command::new(QEMU)
            .args(["-machine", "q35,accel=tcg,memory-backend=mem", "-m", "128M"])
            .args(["-object", "memory-backend-memfd,id=mem,size=128M,share=on"])
            .args(["-nodefaults", "-display", "none", "-S"])
            .args(&args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&qemu_log).expect("qemu log"))
            .spawn()
            .expect("start QEMU"),
    );
    // vhost-user-vsock-pci talks to the daemon when it is realized, before the guest runs.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = daemon.log();
        if log.contains("frontend connected") && log.contains("default.vmi-x") {
            break;
        }
        if let Some(status) = qemu.0.try_wait().expect("wait") {
            panic!(
                "QEMU exited ({status}) with the hook's arguments {args:?}: {}",
                std::fs::read_to_string(&qemu_log).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "QEMU did not connect within 30 s; daemon log:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        qemu.0.try_wait().expect("wait").is_none(),
        "QEMU is still running with the device"
    );
}
