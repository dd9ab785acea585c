//! A network namespace holding a Linux bridge and taps, for the virtio-net baseline. Guest
//! addresses exist only inside it, so no test packet reaches this machine's own network.
//! Dropping the value deletes the namespace, and with it the bridge and every tap.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use super::{run, GuestError};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// The bridge inside every namespace.
pub const BRIDGE: &str = "sbpbr0";

/// A network namespace owned by this process.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

fn ip(args: &[&str]) -> Result<(), GuestError> {
    run(Command::new("ip").args(args)).map(|_| ())
}

impl NetNs {
    /// Creates a namespace named `sbp-<pid>-<n>` with `lo` up and a bridge.
    pub fn create() -> Result<NetNs, GuestError> {
        let name = format!(
            "sbp-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["netns", "add", &name]).map_err(|e| {
            GuestError::Unavailable(format!("cannot create a network namespace: {e}"))
        })?;
        let ns = NetNs { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        ns.ip(&["link", "add", BRIDGE, "type", "bridge"])?;
        ns.ip(&["link", "set", BRIDGE, "up"])?;
        Ok(ns)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn ip(&self, args: &[&str]) -> Result<(), GuestError> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// Adds a tap named `tap` on the bridge, up.
    pub fn add_tap(&self, tap: &str) -> Result<(), GuestError> {
        self.ip(&["tuntap", "add", "dev", tap, "mode", "tap"])?;
        self.ip(&["link", "set", tap, "master", BRIDGE])?;
        self.ip(&["link", "set", tap, "up"])
    }

    /// `ip netns exec <name>`: the prefix that runs a program inside the namespace.
    pub fn exec_prefix(&self) -> [String; 4] {
        [
            "ip".into(),
            "netns".into(),
            "exec".into(),
            self.name.clone(),
        ]
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "delete", &self.name]) {
            eprintln!(
                "warning: cannot delete network namespace {}: {e}",
                self.name
            );
        }
    }
}
