//! A work directory, a real `sockbypassd` serving the VMs of a run in it, and the guest image:
//! boots guests on the daemon's sockets. The directory (sockets, serial logs, the daemon's
//! log) is deleted on drop; [`Rig::keep_logs`] copies the logs out first when a run failed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tempfile::TempDir;

use super::process::DaemonProcess;
use super::RealDaemonError;
use crate::accel::{self, Accel};
use crate::image::GuestImage;
use crate::qemu::{qemu_version, GuestSpec, QemuGuest};

/// How long a guest may take to boot (TCG on a busy machine).
pub const BOOT: Duration = Duration::from_secs(180);

/// One VM of the daemon.
#[derive(Debug, Clone)]
pub struct VmDef {
    /// Name (also the socket's and the serial log's).
    pub name: String,
    /// Guest CID.
    pub cid: u32,
    /// More `--vm` keys, e.g. `groups=soak,max_conns=1024`.
    pub keys: String,
}

/// The daemon, its VMs' sockets and the image.
#[derive(Debug)]
pub struct Rig {
    daemon: DaemonProcess,
    image: GuestImage,
    accel: Accel,
    /// What the accelerator choice was based on.
    pub accel_reason: String,
    /// QEMU's version line.
    pub qemu: String,
    dir: TempDir,
}

impl Rig {
    /// Builds (or finds) the guest image, checks QEMU, and starts `daemon_bin` serving `vms`
    /// with the further options `options`.
    pub fn start(
        daemon_bin: &Path,
        vms: &[VmDef],
        options: &[String],
    ) -> Result<Rig, RealDaemonError> {
        let image = GuestImage::ensure().map_err(RealDaemonError::CannotRun)?;
        let qemu = qemu_version().map_err(RealDaemonError::CannotRun)?;
        let cache = image.kernel.parent().map(PathBuf::from).unwrap_or_default();
        let (accel, accel_reason) =
            accel::choose(&image, &cache).map_err(RealDaemonError::CannotRun)?;
        let dir = tempfile::Builder::new()
            .prefix("sockbypass-run-")
            .tempdir()
            .map_err(|source| RealDaemonError::Io {
                what: "cannot create a temporary directory in",
                path: std::env::temp_dir(),
                source,
            })?;
        let socket = |name: &str| dir.path().join(format!("{name}.sock"));
        let mut args: Vec<String> = Vec::new();
        for vm in vms {
            args.push("--vm".into());
            let mut spec = format!(
                "name={},cid={},socket={}",
                vm.name,
                vm.cid,
                socket(&vm.name).display()
            );
            if !vm.keys.is_empty() {
                spec.push(',');
                spec.push_str(&vm.keys);
            }
            args.push(spec);
        }
        args.extend(options.iter().cloned());
        let sockets: Vec<PathBuf> = vms.iter().map(|v| socket(&v.name)).collect();
        let daemon = DaemonProcess::spawn(
            daemon_bin,
            &args,
            vms.iter().map(|v| v.name.clone()).collect(),
            &sockets,
            dir.path().join("sockbypassd.log"),
        )?;
        Ok(Rig {
            daemon,
            image,
            accel,
            accel_reason,
            qemu,
            dir,
        })
    }

    /// The daemon.
    pub fn daemon(&mut self) -> &mut DaemonProcess {
        &mut self.daemon
    }

    /// The work directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The accelerator guests run with.
    pub fn accel(&self) -> Accel {
        self.accel
    }

    /// Starts QEMU for VM `name` with `memory_mib` of RAM running `command`, attached to the
    /// daemon's socket for `name`; does not wait for the boot. The serial log is
    /// `<dir>/<name>.serial.log`, emptied first.
    pub fn spawn(
        &self,
        name: &str,
        memory_mib: u32,
        command: &str,
    ) -> Result<QemuGuest, RealDaemonError> {
        let spec = GuestSpec {
            name: name.into(),
            memory_mib,
            vsock_socket: Some(self.dir.path().join(format!("{name}.sock"))),
            nic: None,
            windows: Vec::new(),
            command: command.into(),
            serial_log: self.dir.path().join(format!("{name}.serial.log")),
        };
        Ok(QemuGuest::spawn(&spec, &self.image, self.accel, None)?)
    }

    /// Copies every log of the run (serial logs, QEMU's stderr, the daemon's log) into `dest`;
    /// returns how many.
    pub fn keep_logs(&self, dest: &Path) -> Result<usize, RealDaemonError> {
        let io = |what, path: &Path| {
            let path = path.to_owned();
            move |source| RealDaemonError::Io { what, path, source }
        };
        std::fs::create_dir_all(dest).map_err(io("cannot create", dest))?;
        let mut n = 0;
        for entry in
            std::fs::read_dir(self.dir.path()).map_err(io("cannot list", self.dir.path()))?
        {
            let path = entry.map_err(io("cannot list", self.dir.path()))?.path();
            let name = path
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default();
            if name.ends_with(".log") || name.ends_with(".qemu-stderr") || name.ends_with(".sh") {
                std::fs::copy(&path, dest.join(&name)).map_err(io("cannot copy", &path))?;
                n += 1;
            }
        }
        Ok(n)
    }
}
