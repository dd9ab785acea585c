//! The attach generators against the real programs (issue 13): the real `sockbypassd` serves a
//! VM (with a fast-path window) and its control socket; the real `sockbypass qemu-args` prints
//! the QEMU arguments for it; real QEMU starts with exactly those arguments, plus only the
//! guest image's boot arguments (kernel, initramfs, serial console, the accelerator), and the
//! guest's vsock device attaches: the daemon reports the VM `attached: true` through
//! `sockbypass vm list --json`, the guest sees the window's `ivshmem-plain` device, and a
//! stock `AF_VSOCK` connect from the guest reaches a host program on the VM's `uds` socket.
//!
//! A second test runs the client against the real daemon without a guest (in every `cargo
//! test`).
//!
//! The tests build both binaries first (`cargo build -p sockbypassd -p sockbypass-ctl
//! --bins`), so they run the code of this tree. Like the other QEMU tests the first boots a
//! guest, so `cargo test` skips it (`#[ignore]`) and `ci/e2e.sh` runs it; without the guest image or
//! QEMU it fails with `CI=true` and is skipped with the reason elsewhere. The accelerator is
//! chosen like the other end-to-end tests (KVM when a boot probe passes, else TCG).

use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use harness::cannot_run;
use serde_json::Value;
use sockbypass_guests::accel::{self, Accel};
use sockbypass_guests::image::GuestImage;
use sockbypass_guests::qemu::{boot_args, cpu_model, qemu_version, QEMU};
use sockbypass_guests::realdaemon::process::DaemonProcess;
use sockbypass_guests::results::{exit_status, results_of, READY};

const BOOT: Duration = Duration::from_secs(180);
const RUN: Duration = Duration::from_secs(120);
/// Where the host program listens (the guest connects to CID 2 on this port).
const HOST_PORT: u32 = 6000;
/// The guest's RAM, given to `qemu-args --memory`.
const MEMORY: &str = "256M";

/// Builds `sockbypassd` and `sockbypass` into this test's own target directory and profile
/// (it runs from `<target>/<profile>/deps/`) and returns the directory holding them.
fn build_binaries() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("<target>/<profile>")
        .to_path_buf();
    let target = dir.parent().expect("<target>");
    let profile = match dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev",
        Some(other) => other,
    };
    let status = Command::new(env!("CARGO"))
        .args([
            "build",
            "-p",
            "sockbypassd",
            "-p",
            "sockbypass-ctl",
            "--bins",
        ])
        .args(["--profile", profile])
        .arg("--target-dir")
        .arg(target)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."))
        .status()
        .expect("run cargo build");
    assert!(status.success(), "cargo build of the two binaries failed");
    for bin in ["sockbypassd", "sockbypass"] {
        assert!(dir.join(bin).is_file(), "no {bin} in {}", dir.display());
    }
    dir
}

/// Runs `sockbypass --control CONTROL args...`; returns its stdout, failing on any error.
fn sockbypass(bin: &Path, control: &Path, args: &[&str]) -> String {
    let out = Command::new(bin.join("sockbypass"))
        .arg("--control")
        .arg(control)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run sockbypass");
    assert!(
        out.status.success(),
        "sockbypass {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// The arguments a POSIX shell makes of `line` with `eval set -- LINE`.
fn shell_words(line: &str) -> Vec<String> {
    let out = Command::new("sh")
        .args([
            "-c",
            "eval \"set -- $1\"; for a in \"$@\"; do printf '%s\\0' \"$a\"; done",
            "sh",
            line,
        ])
        .output()
        .expect("run sh");
    assert!(out.status.success(), "sh: {out:?}");
    String::from_utf8(out.stdout)
        .expect("UTF-8")
        .split_terminator('\0')
        .map(str::to_owned)
        .collect()
}

/// A QEMU process, killed by its PID on drop.
struct Qemu {
    child: Child,
    serial: PathBuf,
    stderr: PathBuf,
}

impl Qemu {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.serial).unwrap_or_default()
    }

    /// Waits until `cond` holds on the serial log; panics with QEMU's stderr when QEMU exits
    /// first or on `timeout`.
    fn wait_for(&mut self, what: &str, timeout: Duration, cond: impl Fn(&str) -> bool) -> String {
        let end = Instant::now() + timeout;
        loop {
            let log = self.log();
            if cond(&log) {
                return log;
            }
            let exited = self.child.try_wait().expect("try_wait").is_some();
            if exited || Instant::now() >= end {
                let log = self.log();
                if cond(&log) {
                    return log;
                }
                let stderr = std::fs::read_to_string(&self.stderr).unwrap_or_default();
                panic!(
                    "{}: {what}\nQEMU's stderr:\n{stderr}\nserial:\n{log}",
                    if exited {
                        "QEMU exited before"
                    } else {
                        "timed out waiting for"
                    }
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `sockbypass --control CONTROL args...` and returns its status and stderr.
fn sockbypass_fails(bin: &Path, control: &Path, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(bin.join("sockbypass"))
        .arg("--control")
        .arg(control)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run sockbypass");
    assert!(out.stdout.is_empty(), "{args:?}: {out:?}");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The client against the real daemon, without a guest: a VM added without a CID gets the
/// lowest free one, the generators print its paths, a refusal is status 1 with its kind, and
/// a removed VM is gone.
#[test]
fn the_client_against_the_real_daemon() {
    let bin = build_binaries();
    let dir = tempfile::Builder::new()
        .prefix("sockbypass-client-")
        .tempdir()
        .expect("temp dir");
    let d = dir.path().display().to_string();
    let control = dir.path().join("control.sock");
    let _daemon = DaemonProcess::spawn(
        &bin.join("sockbypassd"),
        &[
            "--vm".to_owned(),
            format!("name=vm1,cid=3,socket={d}/vm1.sock,fastpath=on"),
            "--control".to_owned(),
            control.display().to_string(),
        ],
        vec!["vm1".into()],
        &[dir.path().join("vm1.sock"), control.clone()],
        dir.path().join("sockbypassd.log"),
    )
    .expect("sockbypassd starts");

    let added = sockbypass(
        &bin,
        &control,
        &[
            "vm",
            "add",
            &format!("name=vm2,socket={d}/vm2.sock,groups=a+b"),
        ],
    );
    assert_eq!(
        added,
        format!("added VM vm2 with CID 4: its VMM attaches to {d}/vm2.sock\n")
    );
    let (status, err) = sockbypass_fails(
        &bin,
        &control,
        &["vm", "add", &format!("name=vm2,socket={d}/other.sock")],
    );
    assert_eq!(status, Some(1), "{err}");
    assert!(
        err.starts_with("sockbypass: ")
            && err.ends_with("(name_in_use)\n")
            && err.lines().count() == 1,
        "{err:?}"
    );

    let args: Vec<String> =
        serde_json::from_str(&sockbypass(&bin, &control, &["qemu-args", "vm2", "--json"]))
            .expect("JSON array");
    assert_eq!(
        args,
        [
            "-object".to_owned(),
            "memory-backend-memfd,id=sbmem,size=1G,share=on".to_owned(),
            "-machine".to_owned(),
            "memory-backend=sbmem".to_owned(),
            "-chardev".to_owned(),
            format!("socket,id=sbvsock,path={d}/vm2.sock"),
            "-device".to_owned(),
            "vhost-user-vsock-pci,chardev=sbvsock".to_owned(),
        ]
    );
    let vm1: Vec<String> =
        serde_json::from_str(&sockbypass(&bin, &control, &["qemu-args", "vm1", "--json"]))
            .expect("JSON array");
    assert_eq!(
        vm1[8..],
        [
            "-object".to_owned(),
            format!("memory-backend-file,id=sbwin0,mem-path={d}/vm1.window,size=16777216,share=on"),
            "-device".to_owned(),
            "ivshmem-plain,memdev=sbwin0".to_owned(),
        ],
        "vm1's window, as the daemon created it"
    );
    let xml = sockbypass(&bin, &control, &["libvirt-xml", "vm2"]);
    assert!(
        xml.contains(&format!(
            "<qemu:arg value='socket,id=sbvsock,path={d}/vm2.sock'/>"
        )),
        "{xml}"
    );

    assert_eq!(
        sockbypass(&bin, &control, &["vm", "remove", "vm2"]),
        "removed VM vm2\n"
    );
    let (status, err) = sockbypass_fails(&bin, &control, &["qemu-args", "vm2"]);
    assert_eq!(status, Some(1), "{err}");
    assert!(err.ends_with("(no_such_vm)\n"), "{err:?}");
    let stats: Value =
        serde_json::from_str(&sockbypass(&bin, &control, &["stats", "--json"])).expect("JSON");
    assert_eq!(stats["vms"].as_array().map(Vec::len), Some(1), "{stats}");
    assert_eq!(stats["vms"][0]["name"], "vm1");
}

#[test]
#[ignore = "boots a QEMU guest: run by ci/e2e.sh with --ignored"]
fn qemu_starts_from_qemu_args_and_its_vsock_device_attaches() {
    let image = match GuestImage::ensure() {
        Ok(image) => image,
        Err(e) => {
            let _: Option<()> = cannot_run(&format!(
                "the guest image could not be built (integration/guest/build-image.sh): {e}"
            ));
            return;
        }
    };
    match qemu_version() {
        Ok(v) => eprintln!("QEMU: {v}"),
        Err(e) => {
            let _: Option<()> = cannot_run(&format!("QEMU cannot run: {e}"));
            return;
        }
    }
    let cache = image.kernel.parent().expect("cache dir").to_path_buf();
    let (accel, why) = accel::choose(&image, &cache).expect("accelerator");
    eprintln!("accelerator: {why}");
    let bin = build_binaries();

    let dir = tempfile::Builder::new()
        .prefix("sockbypass-attach-")
        .tempdir()
        .expect("temp dir");
    let socket = dir.path().join("vm1.sock");
    let uds = dir.path().join("vm1.vsock");
    let control = dir.path().join("control.sock");
    let daemon_args = vec![
        "--vm".to_owned(),
        format!(
            "name=vm1,cid=3,socket={},uds={},fastpath=on",
            socket.display(),
            uds.display()
        ),
        "--control".to_owned(),
        control.display().to_string(),
    ];
    let _daemon = DaemonProcess::spawn(
        &bin.join("sockbypassd"),
        &daemon_args,
        vec!["vm1".into()],
        &[socket.clone(), control.clone()],
        dir.path().join("sockbypassd.log"),
    )
    .expect("sockbypassd starts");

    // What the generator prints, as a list and as one shell line: the same arguments.
    let args: Vec<String> = sockbypass(
        &bin,
        &control,
        &["qemu-args", "vm1", "--memory", MEMORY, "--one-per-line"],
    )
    .lines()
    .map(str::to_owned)
    .collect();
    let line = sockbypass(&bin, &control, &["qemu-args", "vm1", "--memory", MEMORY]);
    assert_eq!(shell_words(line.trim_end()), args, "eval of {line:?}");
    assert!(
        args.iter().any(|a| a.starts_with("ivshmem-plain,")),
        "the VM's window is attached: {args:?}"
    );
    assert!(!args.iter().any(|a| a.contains("reconnect")), "{args:?}");

    // A host program the guest reaches at CID 2, port HOST_PORT.
    let mut listen_path = uds.clone().into_os_string();
    listen_path.push(format!("_{HOST_PORT}"));
    let listener = UnixListener::bind(&listen_path).expect("bind the host listener");
    listener.set_nonblocking(true).expect("non-blocking");

    // The guest: the window's PCI device (1af4:1110) is there, then a stock AF_VSOCK connect.
    let serial = dir.path().join("vm1.serial.log");
    let script = dir.path().join("vm1.cmd.sh");
    std::fs::write(
        &script,
        format!(
            "grep -l 0x1110 /sys/bus/pci/devices/*/device && echo SB-IVSHMEM-FOUND; \
             sbtool connect vsock:2:{HOST_PORT}"
        ),
    )
    .expect("write the guest's script");
    std::fs::write(&serial, "").expect("create the serial log");
    let qemu_stderr = dir.path().join("vm1.qemu-stderr");
    // Only what the image needs to boot; everything about the device is the generator's.
    let mut boot: Vec<String> = vec![
        "-machine".into(),
        "q35".into(),
        "-accel".into(),
        accel.qemu_name().into(),
        "-smp".into(),
        "1".into(),
    ];
    boot.extend(boot_args(
        &image,
        "console=ttyS0 panic=-1 quiet",
        &serial,
        &script,
    ));
    if let Some(cpu) = cpu_model(accel) {
        boot.extend(["-cpu".into(), cpu]);
    }
    eprintln!("{QEMU} {} {}", args.join(" "), boot.join(" "));
    let child = Command::new(QEMU)
        .args(&args)
        .args(&boot)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&qemu_stderr).expect("QEMU's stderr file"))
        .spawn()
        .expect("start QEMU");
    let mut qemu = Qemu {
        child,
        serial,
        stderr: qemu_stderr,
    };

    let started = Instant::now();
    qemu.wait_for("SB-READY", BOOT, |l| l.contains(READY));
    eprintln!(
        "booted in {:.1?} ({})",
        started.elapsed(),
        if accel == Accel::Kvm { "KVM" } else { "TCG" }
    );

    // The daemon sees the guest's driver on the device.
    let vms: Value = serde_json::from_str(&sockbypass(&bin, &control, &["vm", "list", "--json"]))
        .expect("vm list JSON");
    assert_eq!(vms[0]["name"], "vm1", "{vms}");
    assert_eq!(
        vms[0]["attached"], true,
        "the VM's device is attached: {vms}"
    );

    // The guest's connect reaches the host program.
    let end = Instant::now() + RUN;
    let accepted = loop {
        match listener.accept() {
            Ok((conn, _)) => break conn,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= end {
                    panic!("the guest's connection did not arrive:\n{}", qemu.log());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("accept: {e}"),
        }
    };
    let log = qemu.wait_for("SB-EXIT", RUN, |l| exit_status(l).is_some());
    drop(accepted);
    assert!(
        log.contains("SB-IVSHMEM-FOUND"),
        "no ivshmem device in the guest:\n{log}"
    );
    let connect = results_of(&log, "connect");
    assert_eq!(connect.len(), 1, "one connect result:\n{log}");
    assert_eq!(connect[0]["ok"], true, "{}", connect[0]);
    assert_eq!(exit_status(&log), Some(0), "{log}");
}
