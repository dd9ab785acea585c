//! The guest image: a Debian kernel and a busybox initramfs with the vsock and virtio-net
//! modules and `sbtool`, built by `integration/guest/build-image.sh` into a cache directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{run, GuestError};

/// Kernel and initramfs of the guest.
#[derive(Debug, Clone)]
pub struct GuestImage {
    /// The kernel: the uncompressed `vmlinux` when there is one (QEMU boots it directly as a
    /// PVH kernel, which halves a TCG boot), else `vmlinuz`.
    pub kernel: PathBuf,
    /// The initramfs.
    pub initrd: PathBuf,
}

/// The image builder script of this repository.
pub fn builder_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest/build-image.sh")
}

impl GuestImage {
    /// Builds the image if needed (the script is idempotent and reuses its cache) and returns
    /// it. The script's progress goes to this process's stderr.
    pub fn ensure() -> Result<GuestImage, GuestError> {
        let script = builder_script();
        if !script.exists() {
            return Err(GuestError::Unavailable(format!(
                "no image builder at {}",
                script.display()
            )));
        }
        let out = run(Command::new("bash")
            .arg(&script)
            .stdin(Stdio::null())
            .stderr(Stdio::inherit()))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        for line in stdout.lines() {
            eprintln!("{line}");
        }
        let dir = stdout
            .lines()
            .last()
            .map(|l| PathBuf::from(l.trim()))
            .ok_or_else(|| GuestError::Unavailable("image builder printed nothing".into()))?;
        GuestImage::in_dir(&dir)
    }

    /// The image in `dir`, if complete. The kernel's directory is the image cache.
    pub fn in_dir(dir: &Path) -> Result<GuestImage, GuestError> {
        let kernel = ["vmlinux", "vmlinuz"]
            .iter()
            .map(|n| dir.join(n))
            .find(|p| p.exists())
            .unwrap_or_else(|| dir.join("vmlinuz"));
        let initrd = ["initramfs.cpio.gz", "initramfs.cpio.zst", "initramfs.cpio"]
            .iter()
            .map(|n| dir.join(n))
            .find(|p| p.exists())
            .ok_or_else(|| GuestError::Unavailable(format!("no initramfs in {}", dir.display())))?;
        if !kernel.exists() {
            return Err(GuestError::Unavailable(format!(
                "no kernel in {}",
                dir.display()
            )));
        }
        Ok(GuestImage { kernel, initrd })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builder_script_is_found() {
        let script = builder_script();
        assert!(script.is_file(), "no image builder at {}", script.display());
    }
}
