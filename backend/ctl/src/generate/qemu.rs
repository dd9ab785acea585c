//! QEMU's arguments for a VM of `sockbypassd`:
//!
//! - the guest RAM in a shared memfd (vhost-user needs the daemon to map guest memory):
//!   `-object memory-backend-memfd,id=sbmem,size=SIZE,share=on -machine memory-backend=sbmem`.
//!   QEMU then takes the RAM size from the backend: a `-m` given as well must be equal;
//! - the vhost-user socket and the device: `-chardev socket,id=sbvsock,path=SOCKET -device
//!   vhost-user-vsock-pci,chardev=sbvsock`. The guest CID comes from the daemon (vhost-user
//!   GET_CONFIG), so it is no argument. No `reconnect=`: QEMU's `vhost-user-vsock-pci` cannot
//!   reconnect in any release up to 10.x and refuses to start with it;
//! - each fast-path window (SPEC.md §13.1), its own first: `-object
//!   memory-backend-file,id=sbwinN,mem-path=PATH,size=BYTES,share=on -device
//!   ivshmem-plain,memdev=sbwinN`, as the end-to-end tests attach them
//!   (`integration/guests/src/qemu.rs`).
//!
//! QEMU's option syntax splits values at `,`; a `,` inside a path is written `,,`.

use super::{utf8, GenerateError, MemorySize};
use crate::protocol::VmInfo;

/// The `id` of the guest RAM's memory backend.
pub const MEMORY_ID: &str = "sbmem";
/// The `id` of the vhost-user chardev.
pub const CHARDEV_ID: &str = "sbvsock";
/// The `id` of window `N`'s memory backend is this followed by `N`.
pub const WINDOW_ID_PREFIX: &str = "sbwin";

/// Options of [`qemu_args`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QemuOptions {
    /// The guest's RAM.
    pub memory: MemorySize,
}

/// `value` for a QEMU option list: every `,` doubled.
pub fn opt_value(value: &str) -> String {
    value.replace(',', ",,")
}

/// The guest RAM in a shared memfd: `-object memory-backend-memfd,... -machine
/// memory-backend=sbmem`.
pub fn memory_args(memory: MemorySize) -> Vec<String> {
    vec![
        "-object".into(),
        format!("memory-backend-memfd,id={MEMORY_ID},size={memory},share=on"),
        "-machine".into(),
        format!("memory-backend={MEMORY_ID}"),
    ]
}

/// The vhost-user chardev and device, then the `ivshmem-plain` device of each window: what
/// a VMM whose guest RAM is already shared (libvirt's memfd `memoryBacking`) adds.
pub fn device_args(vm: &VmInfo) -> Result<Vec<String>, GenerateError> {
    let socket = utf8(vm, &vm.socket)?;
    let mut args = vec![
        "-chardev".into(),
        format!("socket,id={CHARDEV_ID},path={}", opt_value(socket)),
        "-device".into(),
        format!("vhost-user-vsock-pci,chardev={CHARDEV_ID}"),
    ];
    for (i, window) in vm.windows.iter().enumerate() {
        let path = utf8(vm, &window.path)?;
        args.extend([
            "-object".into(),
            format!(
                "memory-backend-file,id={WINDOW_ID_PREFIX}{i},mem-path={},size={},share=on",
                opt_value(path),
                window.size
            ),
            "-device".into(),
            format!("ivshmem-plain,memdev={WINDOW_ID_PREFIX}{i}"),
        ]);
    }
    Ok(args)
}

/// Everything QEMU needs to attach `vm`: [`memory_args`], then [`device_args`].
pub fn qemu_args(vm: &VmInfo, options: &QemuOptions) -> Result<Vec<String>, GenerateError> {
    let mut args = memory_args(options.memory);
    args.extend(device_args(vm)?);
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::{shell, test_vm, test_vm_with_windows};
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;

    fn options(memory: &str) -> QemuOptions {
        QemuOptions {
            memory: memory.parse().expect("size"),
        }
    }

    #[test]
    fn a_vm_without_windows() {
        let args = qemu_args(&test_vm(), &options("1G")).expect("args");
        assert_eq!(
            args,
            [
                "-object",
                "memory-backend-memfd,id=sbmem,size=1G,share=on",
                "-machine",
                "memory-backend=sbmem",
                "-chardev",
                "socket,id=sbvsock,path=/run/sockbypass/vm1.sock",
                "-device",
                "vhost-user-vsock-pci,chardev=sbvsock",
            ]
        );
        assert_eq!(
            shell::join(&args),
            "-object memory-backend-memfd,id=sbmem,size=1G,share=on -machine memory-backend=sbmem \
             -chardev socket,id=sbvsock,path=/run/sockbypass/vm1.sock \
             -device vhost-user-vsock-pci,chardev=sbvsock"
        );
        assert!(!args.iter().any(|a| a.contains("reconnect")));
    }

    #[test]
    fn a_vm_with_its_own_and_a_pair_window() {
        let args = qemu_args(&test_vm_with_windows(), &options("512M")).expect("args");
        assert_eq!(
            args[8..],
            [
                "-object",
                "memory-backend-file,id=sbwin0,mem-path=/run/sockbypass/vm1.window,size=16777216,share=on",
                "-device",
                "ivshmem-plain,memdev=sbwin0",
                "-object",
                "memory-backend-file,id=sbwin1,mem-path=/run/sockbypass/vm1+vm2.window,size=1048576,share=on",
                "-device",
                "ivshmem-plain,memdev=sbwin1",
            ]
        );
        assert_eq!(args[1], "memory-backend-memfd,id=sbmem,size=512M,share=on");
    }

    #[test]
    fn commas_in_paths_are_doubled_and_spaces_quoted_for_the_shell() {
        let mut vm = test_vm_with_windows();
        vm.socket = "/run/my vms/a,b.sock".into();
        vm.windows[0].path = "/run/it's,here.window".into();
        let args = device_args(&vm).expect("args");
        assert_eq!(args[1], "socket,id=sbvsock,path=/run/my vms/a,,b.sock");
        assert_eq!(
            args[5],
            "memory-backend-file,id=sbwin0,mem-path=/run/it's,,here.window,size=16777216,share=on"
        );
        let line = shell::join(&args);
        assert!(
            line.starts_with("-chardev 'socket,id=sbvsock,path=/run/my vms/a,,b.sock' -device "),
            "{line}"
        );
        assert!(
            line.contains("'memory-backend-file,id=sbwin0,mem-path=/run/it'\\''s,,here.window,size=16777216,share=on'"),
            "{line}"
        );
    }

    #[test]
    fn a_path_that_is_not_utf8_is_an_error() {
        let mut vm = test_vm();
        vm.socket = OsStr::from_bytes(b"/run/\xff.sock").into();
        assert!(matches!(
            device_args(&vm),
            Err(GenerateError::NotUtf8 { vm, .. }) if vm == "vm1"
        ));
    }
}
