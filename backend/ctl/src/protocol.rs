//! The control protocol's messages (SPEC.md §14): one JSON [`Request`] per line from the
//! client, one JSON [`Reply`] per line from the daemon, in order.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The longest request line the daemon reads, newline included; a longer one is answered with
/// [`ErrorKind::BadRequest`] and the connection is closed.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// What a client asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Add a VM. `spec` has the syntax of `sockbypassd --vm`, except that `cid` may be left
    /// out: the daemon then gives the VM the lowest free CID (3 or more).
    VmAdd {
        /// `name=..,socket=..[,cid=..][,groups=..]...`
        spec: String,
    },
    /// Remove a VM: its vhost-user socket closes, and every peer it had a connection with
    /// gets an RST.
    VmRemove {
        /// The VM's name.
        name: String,
    },
    /// Every VM, in the order they were added.
    VmList {},
    /// One VM.
    VmGet {
        /// The VM's name.
        name: String,
    },
    /// The counters of every VM and every poll thread.
    Stats {},
    /// Re-read the configuration file and apply the difference (as `SIGHUP` does).
    Reload {},
}

/// The daemon's answer to one [`Request`]: `{"ok": ...}` or `{"error": ...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    /// The request was carried out.
    Ok(Answer),
    /// It was not, and nothing changed.
    Error(ControlError),
}

/// What a successful request returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    /// `vm_add`: the VM as it now runs (with its CID).
    Added(VmInfo),
    /// `vm_remove`: the name of the VM removed.
    Removed(String),
    /// `vm_list`.
    Vms(Vec<VmInfo>),
    /// `vm_get`.
    Vm(VmInfo),
    /// `stats`.
    Stats(Stats),
    /// `reload`.
    Reloaded(ReloadReport),
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ControlError {
    /// The kind, for programs.
    pub kind: ErrorKind,
    /// One line for people, naming the problem.
    pub message: String,
}

impl ControlError {
    /// An error of `kind` saying `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ControlError {
            kind,
            message: message.into(),
        }
    }
}

/// The kinds of [`ControlError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The line is not a request (not JSON, unknown `op`, too long).
    BadRequest,
    /// The VM spec or the configuration file is invalid.
    InvalidConfig,
    /// Another VM has this name.
    NameInUse,
    /// Another VM has this CID.
    CidInUse,
    /// Another VM uses this socket, `uds` or window path.
    PathInUse,
    /// Another VM lists this address in its `ips`.
    IpInUse,
    /// No VM has this name.
    NoSuchVm,
    /// No free CID is left, or the daemon serves as many VMs as it can.
    Exhausted,
    /// The daemon has no configuration file to reload.
    NoConfigFile,
    /// The daemon could not do it (a socket could not be bound, a thread not started...).
    Internal,
}

/// A fast-path window of a VM (SPEC.md §13.1), for QEMU's `ivshmem-plain`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowInfo {
    /// The window file.
    pub path: PathBuf,
    /// Its size in bytes (a power of two).
    pub size: u64,
    /// `None` for the VM's own window; the other VM's name for a direct-pair window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pair_with: Option<String>,
}

/// One VM as the daemon serves it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmInfo {
    /// The VM's name.
    pub name: String,
    /// Its guest CID.
    pub cid: u64,
    /// The vhost-user socket the daemon listens on for its VMM.
    pub socket: PathBuf,
    /// Its host-side Unix socket, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uds: Option<PathBuf>,
    /// Its groups.
    pub groups: Vec<String>,
    /// Its port list, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<u32>>,
    /// The addresses peers reach it at on the ordinary network (`ips`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpAddr>,
    /// Its fast-path windows: its own first, then its direct pairs'.
    #[serde(default)]
    pub windows: Vec<WindowInfo>,
    /// Whether a VMM's driver has attached to its device right now.
    pub attached: bool,
    /// Where it came from: `config` (command line or file) or `control` (`vm_add`).
    pub origin: Origin,
}

/// Where a VM came from; `reload` adds, changes and removes only `config` VMs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// `--vm`, or a `[[vm]]` table of `--config`.
    Config,
    /// A `vm_add` request.
    Control,
}

/// Counters by name, in a stable order.
pub type CounterMap = BTreeMap<String, u64>;

/// The answer to `stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Every VM.
    pub vms: Vec<VmStats>,
    /// Every poll thread, in thread order (none in event mode).
    pub poll_threads: Vec<CounterMap>,
}

/// One VM's counters (monotonic) and gauges (what it holds now).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmStats {
    /// The VM's name.
    pub name: String,
    /// Its CID.
    pub cid: u64,
    /// Device counters (SPEC.md: packets, bytes, RSTs, every drop reason).
    pub counters: CounterMap,
    /// Gauges (connections, held chains, queued packets, host buffers).
    pub gauges: CounterMap,
    /// Fast-path counters, for a VM with the fast path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fastpath: Option<CounterMap>,
}

/// What a reload changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadReport {
    /// VMs added.
    pub added: Vec<String>,
    /// VMs removed.
    pub removed: Vec<String>,
    /// VMs whose settings changed: removed and added again. A running guest loses its device
    /// until its VM restarts, as for a removal (SPEC.md §14.3).
    pub replaced: Vec<String>,
    /// VMs whose `ips` alone changed: updated in place, their guests keep their devices.
    #[serde(default)]
    pub updated: Vec<String>,
    /// VMs left as they were.
    pub unchanged: Vec<String>,
    /// Settings that changed in the file but take effect only when the daemon restarts (the
    /// poll engine, timeouts, seccomp, log level, fast-path pairs).
    #[serde(default)]
    pub needs_restart: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_one_json_object_with_an_op() {
        let r: Request =
            serde_json::from_str(r#"{"op":"vm_add","spec":"name=a,socket=/x"}"#).expect("parses");
        assert_eq!(
            r,
            Request::VmAdd {
                spec: "name=a,socket=/x".into()
            }
        );
        assert_eq!(
            serde_json::to_string(&Request::VmList {}).expect("serializes"),
            r#"{"op":"vm_list"}"#
        );
        assert!(serde_json::from_str::<Request>(r#"{"op":"format_disk"}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"op":"vm_list","x":1}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"op":"vm_remove"}"#).is_err());
    }

    #[test]
    fn replies_say_ok_or_error() {
        let ok = Reply::Ok(Answer::Removed("a".into()));
        assert_eq!(
            serde_json::to_string(&ok).expect("serializes"),
            r#"{"ok":{"removed":"a"}}"#
        );
        let err = Reply::Error(ControlError::new(ErrorKind::CidInUse, "CID 3 is VM `a`'s"));
        let text = serde_json::to_string(&err).expect("serializes");
        assert_eq!(
            text,
            r#"{"error":{"kind":"cid_in_use","message":"CID 3 is VM `a`'s"}}"#
        );
        assert_eq!(serde_json::from_str::<Reply>(&text).expect("parses"), err);
    }
}
