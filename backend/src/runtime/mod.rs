//! The running daemon's VM set, changed while it runs (SPEC.md §14): VMs added and removed
//! through the control socket, and the configuration reloaded on `SIGHUP`.
//!
//! | file | job |
//! |---|---|
//! | `vm_set.rs` | [`VmSet`]: the VMs served now, each with its vhost-user server thread; adding and removing one |
//! | `describe.rs` | what `vm_list`, `vm_get` and `stats` answer: a VM's [`VmInfo`](sockbypass_ctl::VmInfo) and the counters |
//! | `reload.rs` | building the configuration again and applying the difference |
//! | `control_socket.rs` | the control socket's thread: JSON lines in, replies out, bounded |
//! | `notify.rs` | telling systemd that the daemon is ready or reloading |
//!
//! Every change to the VM set goes through [`VmSet`], one at a time. The switch keeps each
//! VM's packets moving meanwhile: adding or removing a VM never stops another.

mod control_socket;
mod describe;
mod notify;
mod reload;
mod vm_set;

pub use control_socket::{ControlSocket, ControlSocketError, MAX_CLIENTS};
pub use notify::{notify_systemd, Readiness};
pub use vm_set::VmSet;
