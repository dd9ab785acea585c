//! cloud-hypervisor's arguments for a VM of `sockbypassd`:
//! `--memory size=SIZE,shared=on --generic-vhost-user
//! socket=SOCKET,virtio_id=vsock,queue_sizes=[256,256,256]`.
//!
//! What this is based on (cloud-hypervisor's source at the tags `v52.0` and `v53.0`, read for
//! this generator):
//! - `--memory` takes `size=` (digits with an optional `K`, `M` or `G`) and `shared=on`;
//!   vhost-user devices are refused without shared memory or huge pages.
//! - `--generic-vhost-user` (repeatable) takes `socket=`, `queue_sizes=` (a bracketed
//!   list, one size per queue) and the virtio device type. In v52.0 the device type's key is
//!   `virtio_id`, a number or a symbolic name (`vsock` is 19), and `device_type` is an unknown
//!   option there. v53.0 renamed the key to `device_type` and keeps `virtio_id` as a
//!   deprecated alias that logs a warning. So `virtio_id=vsock` is printed by default (it
//!   works in both); [`ChOptions::device_type_key`] prints `device_type=vsock` for v53 on.
//! - Values are split at `,` outside brackets and double quotes; a value in double quotes
//!   may hold `,`, `[` and `]`, and a `"` inside it is written `""`. Values are trimmed, so a
//!   path with leading or trailing blanks is quoted too.
//! - The virtio-vsock device has three queues (RX, TX, event); 256 each, within
//!   `sockbypassd`'s limit of 1024. cloud-hypervisor reads the guest CID from the daemon
//!   (vhost-user GET_CONFIG), so it is no argument.
//! - cloud-hypervisor's release binaries have no ivshmem device: v52's `--ivshmem` exists only
//!   in builds with the non-default `ivshmem` feature, and takes one file. A VM's fast-path
//!   windows are therefore not attached, and its guest uses plain vsock; [`ch_args`] says so in
//!   its notes.
//!
//! cloud-hypervisor needs KVM; it could not be run on this project's machines, so this output
//! is checked against the parser described above, not a running cloud-hypervisor.

use super::{utf8, GenerateError, MemorySize};
use crate::protocol::VmInfo;

/// The queue sizes given to cloud-hypervisor: RX, TX and event queue.
pub const VSOCK_QUEUE_SIZES: [u16; 3] = [256, 256, 256];

/// Options of [`ch_args`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChOptions {
    /// The guest's RAM.
    pub memory: MemorySize,
    /// Name the device type `device_type=` (cloud-hypervisor v53 and later) instead of
    /// `virtio_id=` (v52, and a deprecated alias from v53 on).
    pub device_type_key: bool,
}

/// The arguments, and notes for the person running it (printed on stderr as comments).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChArgs {
    /// The arguments.
    pub args: Vec<String>,
    /// Lines worth knowing, without a leading `#`.
    pub notes: Vec<String>,
}

/// `value` for cloud-hypervisor's option parser: unchanged when it holds no `,`, `"`, `[`,
/// `]` and no leading or trailing blank; else in double quotes with each `"` doubled.
pub fn ch_value(value: &str) -> String {
    let plain = !value.contains([',', '"', '[', ']']) && value.trim() == value;
    if plain {
        value.to_owned()
    } else {
        format!("\"{}\"", value.replace('"', "\"\""))
    }
}

/// cloud-hypervisor's arguments to attach `vm`.
pub fn ch_args(vm: &VmInfo, options: &ChOptions) -> Result<ChArgs, GenerateError> {
    let socket = utf8(vm, &vm.socket)?;
    let key = if options.device_type_key {
        "device_type"
    } else {
        "virtio_id"
    };
    let queues = VSOCK_QUEUE_SIZES.map(|q| q.to_string()).join(",");
    let args = vec![
        "--memory".into(),
        format!("size={},shared=on", options.memory),
        "--generic-vhost-user".into(),
        format!(
            "socket={},{key}=vsock,queue_sizes=[{queues}]",
            ch_value(socket)
        ),
    ];
    let mut notes = Vec::new();
    if !vm.windows.is_empty() {
        notes.push(format!(
            "VM `{}` has {} fast-path window(s), but cloud-hypervisor has no ivshmem device \
             (only in builds with its non-default `ivshmem` feature, for one file): this VM \
             uses plain vsock",
            vm.name,
            vm.windows.len()
        ));
    }
    Ok(ChArgs { args, notes })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::{shell, test_vm, test_vm_with_windows};

    fn options(device_type_key: bool) -> ChOptions {
        ChOptions {
            memory: "1G".parse().expect("size"),
            device_type_key,
        }
    }

    #[test]
    fn a_vm_without_windows() {
        let out = ch_args(&test_vm(), &options(false)).expect("args");
        assert_eq!(
            out.args,
            [
                "--memory",
                "size=1G,shared=on",
                "--generic-vhost-user",
                "socket=/run/sockbypass/vm1.sock,virtio_id=vsock,queue_sizes=[256,256,256]",
            ]
        );
        assert!(out.notes.is_empty());
        assert_eq!(
            shell::join(&out.args),
            "--memory size=1G,shared=on --generic-vhost-user \
             'socket=/run/sockbypass/vm1.sock,virtio_id=vsock,queue_sizes=[256,256,256]'"
        );
    }

    #[test]
    fn v53_spelling_on_request() {
        let out = ch_args(&test_vm(), &options(true)).expect("args");
        assert_eq!(
            out.args[3],
            "socket=/run/sockbypass/vm1.sock,device_type=vsock,queue_sizes=[256,256,256]"
        );
    }

    #[test]
    fn windows_are_not_attached_and_a_note_says_so() {
        let out = ch_args(&test_vm_with_windows(), &options(false)).expect("args");
        assert_eq!(out.args.len(), 4, "{:?}", out.args);
        assert!(!out.args.iter().any(|a| a.contains("window")));
        assert_eq!(out.notes.len(), 1);
        assert!(out.notes[0].contains("no ivshmem"), "{:?}", out.notes);
        assert!(out.notes[0].contains("plain vsock"), "{:?}", out.notes);
    }

    #[test]
    fn socket_paths_with_parser_characters_are_quoted() {
        assert_eq!(ch_value("/run/a.sock"), "/run/a.sock");
        assert_eq!(ch_value("/run/a,b.sock"), "\"/run/a,b.sock\"");
        assert_eq!(ch_value("/run/[x].sock"), "\"/run/[x].sock\"");
        assert_eq!(ch_value("/run/say \"hi\""), "\"/run/say \"\"hi\"\"\"");
        assert_eq!(ch_value("/run/trailing "), "\"/run/trailing \"");
        assert_eq!(ch_value("/run/with space"), "/run/with space");
        let mut vm = test_vm();
        vm.socket = "/run/a,b.sock".into();
        let out = ch_args(&vm, &options(false)).expect("args");
        assert_eq!(
            out.args[3],
            "socket=\"/run/a,b.sock\",virtio_id=vsock,queue_sizes=[256,256,256]"
        );
    }
}
