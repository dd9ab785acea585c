//! Attach generators: what a VMM needs to attach a VM to `sockbypassd`, computed from the
//! [`VmInfo`] the running daemon serves. Every generator is a pure function of a `VmInfo` and
//! its options, so that other programs (the KubeVirt hook) can call them unchanged.
//!
//! | module | job |
//! |---|---|
//! | [`qemu`] | QEMU's argument list: shared memfd RAM, the vhost-user chardev and device, `ivshmem-plain` windows |
//! | [`cloud_hypervisor`] | cloud-hypervisor's `--memory` and `--generic-vhost-user` arguments |
//! | [`libvirt`] | libvirt domain XML: `<memoryBacking>` and `<qemu:commandline>`, or a whole minimal domain |
//! | [`size`] | the guest memory size all three read ([`MemorySize`]) |
//! | [`shell`] | printing an argument list for a POSIX shell, or one argument per line |
//! | [`xml`] | escaping text for XML attributes and comments |

pub mod cloud_hypervisor;
pub mod libvirt;
pub mod qemu;
pub mod shell;
pub mod size;
pub mod xml;

use std::path::{Path, PathBuf};

pub use size::MemorySize;

use crate::protocol::VmInfo;

/// Why arguments could not be generated or printed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GenerateError {
    /// A path is not UTF-8: no VMM command line could name it faithfully.
    #[error("the path {} of VM `{vm}` is not UTF-8", path.display())]
    NotUtf8 {
        /// The VM.
        vm: String,
        /// The path.
        path: PathBuf,
    },
    /// An argument holds a newline, which one-argument-per-line output cannot carry.
    #[error("the argument {arg:?} holds a newline, which --one-per-line cannot print")]
    Newline {
        /// The argument.
        arg: String,
    },
    /// A string holds a character that XML 1.0 cannot carry.
    #[error("{value:?} holds the character U+{code:04X}, which XML cannot carry")]
    NotXml {
        /// The string.
        value: String,
        /// The character's code point.
        code: u32,
    },
}

/// `path` as UTF-8, or [`GenerateError::NotUtf8`] naming `vm`.
fn utf8<'a>(vm: &VmInfo, path: &'a Path) -> Result<&'a str, GenerateError> {
    path.to_str().ok_or_else(|| GenerateError::NotUtf8 {
        vm: vm.name.clone(),
        path: path.to_owned(),
    })
}

/// A VM as tests build it: CID 3, socket `/run/sockbypass/vm1.sock`, no window.
#[cfg(test)]
pub(crate) fn test_vm() -> VmInfo {
    VmInfo {
        name: "vm1".into(),
        cid: 3,
        socket: "/run/sockbypass/vm1.sock".into(),
        uds: None,
        groups: vec!["prod".into()],
        ports: None,
        ips: Vec::new(),
        windows: Vec::new(),
        attached: false,
        origin: crate::protocol::Origin::Config,
    }
}

/// [`test_vm`] with its own window and a pair window.
#[cfg(test)]
pub(crate) fn test_vm_with_windows() -> VmInfo {
    let mut vm = test_vm();
    vm.windows = vec![
        crate::protocol::WindowInfo {
            path: "/run/sockbypass/vm1.window".into(),
            size: 16 << 20,
            pair_with: None,
        },
        crate::protocol::WindowInfo {
            path: "/run/sockbypass/vm1+vm2.window".into(),
            size: 1 << 20,
            pair_with: Some("vm2".into()),
        },
    ];
    vm
}
