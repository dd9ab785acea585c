//! `sockbypassd`: one host process that serves every VM's virtio-vsock device over vhost-user
//! and switches streams between them. `virtio-spec/SPEC.md` is the normative description.
//!
//! | module | job |
//! |---|---|
//! | [`affinity`] | pinning poll threads to CPUs |
//! | [`cli`] | the `clap` command line |
//! | [`config`] | `--vm` specs and `--config` TOML into a checked [`config::DaemonConfig`] |
//! | [`credit`] | the credit formula and the credit state of a stream's direction |
//! | [`logging`] | `tracing` setup and rate-limited warnings |
//! | [`daemon`] | starts the switch, one vhost-user server per VM, and the host I/O thread |
//! | [`device`] | the vhost-user virtio-vsock device of each VM, served across reconnects; it reaches the switch only through [`device::VsockBackend`] |
//! | [`exporter`] | `--metrics-listen`: the Prometheus `/metrics` endpoint, one bounded HTTP thread reading the counters at each scrape |
//! | [`failure`] | a panicking daemon thread stops the daemon with a non-zero exit |
//! | [`fastpath`] | the fast path (SPEC.md §13): windows, control channel, setup and teardown, the host-copied copier |
//! | [`switch`] | a packet's way (TX walk, routing, delivery, RSTs), RX fills, per-VM state and locks |
//! | [`host`] | host endpoints (CID 2): Unix sockets in Firecracker's hybrid vsock convention; they answer the guest only through [`host::GuestReplies`] |
//! | [`memory`] | the guest memory and vring types of the vhost-user layer, named once |
//! | [`metrics`] | per-VM counters, one per drop reason |
//! | [`runtime`] | the VM set while the daemon runs: VMs added and removed, reloads, the control socket (SPEC.md §14) |
//! | [`poll`] | the poll engine: poll threads that drive the switch (see `DESIGN-poller.md`) |
//! | [`seccomp`] | the seccomp filter each daemon thread installs at its start |
//! | [`signals`] | waiting for SIGINT/SIGTERM |

#![cfg_attr(test, allow(clippy::cast_possible_truncation))]

pub mod affinity;
pub mod cli;
pub mod config;
pub mod credit;
pub mod daemon;
pub mod device;
pub mod exporter;
pub mod failure;
pub mod fastpath;
pub mod host;
pub mod logging;
pub mod memory;
pub mod metrics;
pub mod poll;
pub mod runtime;
pub mod seccomp;
pub mod signals;
pub mod switch;

/// Formats an error and all its causes on one line: `outer: inner: innermost`.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(cause) = cur {
        let msg = cause.to_string();
        if !out.ends_with(&msg) {
            out.push_str(": ");
            out.push_str(&msg);
        }
        cur = cause.source();
    }
    out.replace('\n', " ")
}
