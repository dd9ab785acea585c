//! The switch: takes packets from each VM's TX queue, routes them, and fills RX queues.
//!
//! Start with `packet_path.rs`: it follows one packet from a TX ring to an RX ring (or to the
//! host, or back as an RST) top to bottom.
//!
//! | file | job |
//! |---|---|
//! | `hub.rs` | [`Switch`] itself: the VMs, the CID map, the connection table; building it, lookups, gauges |
//! | `device_port.rs` | [`SwitchPort`]: one VM's port as its vhost-user device sees it ([`crate::device::VsockBackend`]) |
//! | `drive.rs` | what the daemon's threads call: service a VM, kicks, host events, the sweep |
//! | `packet_path.rs` | [`Switch::process_tx`]: a packet's way from a TX ring to a peer's RX ring, the host or an RST |
//! | `rx_fill.rs` | [`Switch::fill_rx`]: deliver what is owed to one VM (replies, held packets, host data) into its RX queue |
//! | `events.rs` | the event queue (`TRANSPORT_RESET`) |
//! | `lifecycle.rs` | attach and detach, and the clean-up a detach owes the other VMs |
//! | `rx_stall.rs` | resetting the connections of a VM that posts no RX buffer while packets wait |
//! | `vm_port.rs` | per-VM state: config, counters, the attachment, TX and RX sides and their locks |
//! | `attachment.rs` | a VM's live vrings and memory; every raw queue operation |
//! | `peer_table.rs` | VM-to-VM connections: state, credit, limits, verdicts |
//! | `policy.rs` | groups and port lists: who may connect to whom |
//! | `inbound.rs` | packets from peers held for a VM's RX buffers |
//! | `replies.rs` | the bounded queue of RSTs owed to a guest, and the RST builder |
//!
//! No file here imports a file that imports it. The device (`device/`), the host endpoints
//! (`host/`) and the poll threads (`poll/`) meet the switch through narrow interfaces: the
//! device calls it only through [`crate::device::VsockBackend`] (implemented by
//! [`SwitchPort`]), a host endpoint answers its guest only through
//! [`crate::host::GuestReplies`], and the switch tells a poll thread of a kick only through
//! [`PollOwner`].
//!
//! ## Threads and locks
//! Any thread may drive any VM: the vhost-user worker of the VM (on kicks), the host I/O thread
//! (on socket events), and the poll threads. The locks and their order are in SPEC.md §12:
//!
//! 0. a VM's lifecycle lock ([`VmPort::lifecycle`]: attach, detach, and detaching a VM whose
//!    queue broke; one VM's at a time),
//! 1. a VM's TX lock ([`VmPort::tx`]: one walker of its TX queue at a time; never two TX locks
//!    at once),
//! 2. a VM's RX lock ([`VmPort::rx`]: replies, inbound packets, host connections; one filler at
//!    a time; never two RX locks at once, but a walker of X's TX queue may take Y's RX lock to
//!    deliver),
//! 3. innermost, each held only for one call and never while taking another lock: the peer
//!    table, a VM's attachment lock (an `RwLock`), a VM's memory slot (the frontend
//!    connection's guest memory, [`VmPort::set_memory`]), the vring locks, and the VM table's
//!    `RwLock`s (a slot, the CID map, the member list: read for one lookup, written only by
//!    [`Switch::add_vm`] and [`Switch::remove_vm`]).
//!
//! Nothing here blocks on I/O: host sockets are non-blocking, and a full RX queue or a full
//! reply queue stops the work until a kick or an event resumes it. A packet for a peer with no
//! RX buffer is held, so one stalled receiver never stops its sender's other traffic. Every
//! walk and fill has a budget (SPEC.md §9.2); what is left is handed back through the VM's
//! resume eventfd ([`VmPort::request_resume`]), so no guest keeps a thread.

pub mod attachment;
pub mod device_port;
pub mod drive;
pub mod events;
pub mod hub;
pub mod inbound;
pub mod lifecycle;
pub mod packet_path;
pub mod peer_table;
pub mod policy;
pub mod replies;
pub mod rx_fill;
pub mod rx_stall;
pub mod vm_port;

pub use crate::device::DetachReason;
pub use crate::memory::{AtomicMem, Vring};
pub use device_port::SwitchPort;
pub use hub::{PollOwner, Switch, SwitchError, VmGauges};
pub use packet_path::TxReport;
pub use rx_fill::RxReport;
pub use vm_port::VmPort;
