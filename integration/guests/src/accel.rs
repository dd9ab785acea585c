//! KVM or TCG. KVM is used when `/dev/kvm` opens and a short boot probe reaches `SB-READY`
//! (nested KVM on some hosts opens fine and then hangs at boot); otherwise TCG, with a message.
//! `SOCKBYPASS_ACCEL=kvm|tcg` forces either. The probe's verdict is cached per host boot.

use std::fs::OpenOptions;
use std::path::Path;
use std::time::Duration;

use super::image::GuestImage;
pub use super::qemu::Accel;
use super::qemu::{GuestSpec, QemuGuest};
use super::GuestError;

/// How long the KVM probe may take to reach `SB-READY`.
pub const KVM_PROBE_TIMEOUT: Duration = Duration::from_secs(20);

/// The accelerator to use, and why.
pub fn choose(image: &GuestImage, cache_dir: &Path) -> Result<(Accel, String), GuestError> {
    match std::env::var("SOCKBYPASS_ACCEL").ok().as_deref() {
        Some("kvm") => return Ok((Accel::Kvm, "forced by SOCKBYPASS_ACCEL=kvm".into())),
        Some("tcg") => return Ok((Accel::Tcg, "forced by SOCKBYPASS_ACCEL=tcg".into())),
        Some("") | None => {}
        Some(other) => {
            return Err(GuestError::Unavailable(format!(
                "SOCKBYPASS_ACCEL={other}: expected kvm or tcg"
            )))
        }
    }
    if let Err(e) = OpenOptions::new().read(true).write(true).open("/dev/kvm") {
        return Ok((Accel::Tcg, format!("TCG: /dev/kvm unusable ({e})")));
    }
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .unwrap_or_default()
        .trim()
        .to_owned();
    let cache = cache_dir.join("kvm-probe");
    if let Ok(text) = std::fs::read_to_string(&cache) {
        if let Some(verdict) = text.strip_prefix(&format!("{boot_id} ")) {
            return Ok(match verdict.trim() {
                "kvm" => (Accel::Kvm, "KVM (boot probe passed earlier)".into()),
                _ => (
                    Accel::Tcg,
                    "TCG: KVM hung at guest boot in an earlier probe on this host boot".into(),
                ),
            });
        }
    }
    let ok = probe_kvm(image, cache_dir);
    let _ = std::fs::write(
        &cache,
        format!("{boot_id} {}\n", if ok { "kvm" } else { "tcg" }),
    );
    Ok(if ok {
        (Accel::Kvm, "KVM (boot probe passed)".into())
    } else {
        (
            Accel::Tcg,
            format!(
                "TCG: /dev/kvm opens but a guest did not boot under KVM within {KVM_PROBE_TIMEOUT:?} (nested KVM?)"
            ),
        )
    })
}

/// Boots the image under KVM with nothing attached and waits for `SB-READY`.
fn probe_kvm(image: &GuestImage, dir: &Path) -> bool {
    let spec = GuestSpec {
        name: "kvm-probe".into(),
        memory_mib: 256,
        vsock_socket: None,
        nic: None,
        windows: Vec::new(),
        command: "true".into(),
        serial_log: dir.join("kvm-probe.log"),
    };
    match QemuGuest::spawn(&spec, image, Accel::Kvm, None) {
        Ok(mut g) => g.wait_ready(KVM_PROBE_TIMEOUT).is_ok(),
        Err(_) => false,
    }
}
