//! One QEMU process per guest: q35 with shared memfd RAM (vhost-user needs it), the image's
//! kernel and initramfs, a command on the kernel command line, the serial console in a log
//! file, optionally a `vhost-user-vsock-pci` device on a `sockbypassd` socket and a
//! `virtio-net-pci` NIC on a tap. Dropping the value kills QEMU by its PID.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::image::GuestImage;
use super::netns::NetNs;
use super::results::{exit_status, READY};
use super::{interrupt, GuestError};

/// A QEMU accelerator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualisation.
    Kvm,
    /// QEMU's emulator: the guest CPU is emulated, so only ratios carry over to real hosts.
    Tcg,
}

impl Accel {
    /// The `accel=` value.
    pub fn qemu_name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }

    /// The `-cpu` model that goes with it: the host's CPU under KVM; under TCG none, so that
    /// QEMU's default model runs. `-cpu max` makes TCG emulate every feature it knows, which
    /// costs the guests much of their speed (measured on this project's machines: virtio-net
    /// bulk between two guests 4.1 → 1.5 Gb/s, the bypass 1.6 → 0.7 Gb/s).
    pub fn cpu(self) -> Option<&'static str> {
        match self {
            Accel::Kvm => Some("host"),
            Accel::Tcg => None,
        }
    }
}

/// The `-cpu` model guests get: `SOCKBYPASS_QEMU_CPU` when set (e.g. `max`, to compare), else
/// the accelerator's ([`Accel::cpu`]); `None` means QEMU's default model.
pub fn cpu_model(accel: Accel) -> Option<String> {
    match std::env::var("SOCKBYPASS_QEMU_CPU") {
        Ok(model) if !model.is_empty() => Some(model),
        _ => accel.cpu().map(str::to_owned),
    }
}

/// The QEMU binary guests run in.
pub const QEMU: &str = "qemu-system-x86_64";

/// QEMU's version line, or why QEMU cannot run here.
pub fn qemu_version() -> Result<String, GuestError> {
    let out = super::run(Command::new(QEMU).arg("--version").stdin(Stdio::null()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text.lines().next().unwrap_or_default().to_owned())
}

/// A virtio-net NIC on a tap inside a namespace.
#[derive(Debug, Clone)]
pub struct Nic {
    /// The tap (must exist in the namespace).
    pub tap: String,
    /// The guest's MAC address.
    pub mac: String,
    /// The guest's address, `a.b.c.d/prefix`.
    pub ip: String,
    /// `vhost=on` (only where `/dev/vhost-net` exists).
    pub vhost: bool,
}

/// How to start one guest.
#[derive(Debug, Clone)]
pub struct GuestSpec {
    /// A name for logs.
    pub name: String,
    /// Guest RAM in MiB.
    pub memory_mib: u32,
    /// The `sockbypassd` socket of this VM, if it gets the bypass device.
    pub vsock_socket: Option<PathBuf>,
    /// The NIC, if it gets one.
    pub nic: Option<Nic>,
    /// Fast-path windows (SPEC.md §13.1): each file becomes an `ivshmem-plain` device, its
    /// own window first, then its pair windows.
    pub windows: Vec<PathBuf>,
    /// Shell script the guest runs after boot (then it powers off).
    pub command: String,
    /// Where the serial console goes.
    pub serial_log: PathBuf,
}

/// Whether `/dev/vhost-net` exists (then virtio-net NICs use the in-kernel data path).
pub fn vhost_net_available() -> bool {
    Path::new("/dev/vhost-net").exists()
}

/// A running QEMU.
#[derive(Debug)]
pub struct QemuGuest {
    name: String,
    child: Option<Child>,
    log: PathBuf,
    started: Instant,
}

/// Where the guest's command is written for QEMU's fw_cfg.
pub fn script_path(spec: &GuestSpec) -> PathBuf {
    spec.serial_log.with_extension("cmd.sh")
}

/// What boots the guest image, and nothing else: its kernel and initramfs with the kernel
/// command line `append`, no default devices or display, the serial console into the file
/// `serial`, and the command the guest runs from the file `script` (through fw_cfg, not the
/// kernel command line: a command line over 2048 bytes hangs the Debian kernel before it prints
/// anything).
pub fn boot_args(image: &GuestImage, append: &str, serial: &Path, script: &Path) -> Vec<String> {
    vec![
        "-kernel".into(),
        image.kernel.display().to_string(),
        "-initrd".into(),
        image.initrd.display().to_string(),
        "-append".into(),
        append.into(),
        "-nodefaults".into(),
        "-no-user-config".into(),
        "-display".into(),
        "none".into(),
        "-no-reboot".into(),
        "-serial".into(),
        format!("file:{}", serial.display()),
        "-fw_cfg".into(),
        format!("name=opt/sockbypass/cmd,file={}", script.display()),
    ]
}

/// The QEMU command line for `spec` (without any namespace prefix). The command itself is in
/// the file [`script_path`], which [`QemuGuest::spawn`] writes.
pub fn command_line(spec: &GuestSpec, image: &GuestImage, accel: Accel) -> Vec<String> {
    let mut append = vec![
        "console=ttyS0".to_owned(),
        "panic=-1".to_owned(),
        "quiet".to_owned(),
    ];
    if let Some(nic) = &spec.nic {
        append.push(format!("sb.ip={}", nic.ip));
    }
    let mut args: Vec<String> = vec![
        QEMU.into(),
        "-machine".into(),
        format!("q35,accel={},memory-backend=mem", accel.qemu_name()),
        "-smp".into(),
        "1".into(),
        "-m".into(),
        format!("{}M", spec.memory_mib),
        "-object".into(),
        format!(
            "memory-backend-memfd,id=mem,size={}M,share=on",
            spec.memory_mib
        ),
    ];
    args.extend(boot_args(
        image,
        &append.join(" "),
        &spec.serial_log,
        &script_path(spec),
    ));
    if let Some(cpu) = cpu_model(accel) {
        args.extend(["-cpu".into(), cpu]);
    }
    if let Some(sock) = &spec.vsock_socket {
        args.extend([
            "-chardev".into(),
            format!("socket,id=sbp,path={}", sock.display()),
            "-device".into(),
            "vhost-user-vsock-pci,chardev=sbp".into(),
        ]);
    }
    for (i, window) in spec.windows.iter().enumerate() {
        // ivshmem maps the whole file; its size must be given and is a power of two.
        let size = std::fs::metadata(window).map_or(0, |m| m.len());
        args.extend([
            "-object".into(),
            format!(
                "memory-backend-file,id=sbw{i},mem-path={},size={size},share=on",
                window.display()
            ),
            "-device".into(),
            format!("ivshmem-plain,memdev=sbw{i}"),
        ]);
    }
    if let Some(nic) = &spec.nic {
        let vhost = if nic.vhost { "on" } else { "off" };
        args.extend([
            "-netdev".into(),
            format!(
                "tap,id=n0,ifname={},script=no,downscript=no,vhost={vhost}",
                nic.tap
            ),
            "-device".into(),
            format!("virtio-net-pci,netdev=n0,mac={}", nic.mac),
        ]);
    }
    args
}

impl QemuGuest {
    /// Starts QEMU for `spec`, inside `netns` when given (needed for a NIC on its taps).
    pub fn spawn(
        spec: &GuestSpec,
        image: &GuestImage,
        accel: Accel,
        netns: Option<&NetNs>,
    ) -> Result<QemuGuest, GuestError> {
        let mut argv: Vec<String> = Vec::new();
        if let Some(ns) = netns {
            argv.extend(ns.exec_prefix());
        }
        argv.extend(command_line(spec, image, accel));
        let stderr_path = spec.serial_log.with_extension("qemu-stderr");
        let stderr = File::create(&stderr_path).map_err(|source| GuestError::Io {
            what: "cannot create",
            path: stderr_path.display().to_string(),
            source,
        })?;
        let script = script_path(spec);
        std::fs::write(&script, &spec.command).map_err(|source| GuestError::Io {
            what: "cannot write",
            path: script.display().to_string(),
            source,
        })?;
        // An empty log now, so that waiting never reads a previous run's.
        File::create(&spec.serial_log).map_err(|source| GuestError::Io {
            what: "cannot create",
            path: spec.serial_log.display().to_string(),
            source,
        })?;
        let child = Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|source| GuestError::Spawn {
                command: argv.join(" "),
                source,
            })?;
        Ok(QemuGuest {
            name: spec.name.clone(),
            child: Some(child),
            log: spec.serial_log.clone(),
            started: Instant::now(),
        })
    }

    /// The guest's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// QEMU's PID.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The serial console so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The serial log's path.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Time since QEMU started.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    fn error(&self, what: String) -> GuestError {
        let stderr =
            std::fs::read_to_string(self.log.with_extension("qemu-stderr")).unwrap_or_default();
        let what = match stderr.trim().lines().last() {
            Some(l) if !l.is_empty() => format!("{what}; QEMU said: {l}"),
            _ => what,
        };
        GuestError::Guest {
            guest: self.name.clone(),
            what,
            log: self.log.display().to_string(),
        }
    }

    /// Whether QEMU is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    /// Polls the serial log until `cond` holds on it; fails when QEMU exits first, on
    /// `timeout`, or on Ctrl-C.
    pub fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        mut cond: impl FnMut(&str) -> bool,
    ) -> Result<String, GuestError> {
        let end = Instant::now() + timeout;
        loop {
            let log = self.log();
            if cond(&log) {
                return Ok(log);
            }
            if interrupt::interrupted() {
                return Err(self.error(format!("interrupted while waiting for {what}")));
            }
            if !self.is_running() {
                // One last look: the marker may have been written just before exit.
                let log = self.log();
                if cond(&log) {
                    return Ok(log);
                }
                return Err(self.error(format!("QEMU exited before {what}")));
            }
            if Instant::now() >= end {
                return Err(self.error(format!("no {what} within {timeout:?}")));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the guest booted (`SB-READY`).
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<Duration, GuestError> {
        self.wait_for("SB-READY", timeout, |l| l.contains(READY))?;
        Ok(self.uptime())
    }

    /// Waits until the guest's command finished; returns its exit status and the log.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<(i32, String), GuestError> {
        let log = self.wait_for("SB-EXIT", timeout, |l| exit_status(l).is_some())?;
        let status = exit_status(&log).unwrap_or(-1);
        Ok((status, log))
    }

    /// Kills QEMU (SIGKILL, by PID) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for QemuGuest {
    fn drop(&mut self) {
        self.kill();
    }
}
