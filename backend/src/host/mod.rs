//! Host endpoints (CID 2), following Firecracker's hybrid vsock convention (SPEC.md §6).
//!
//! The switch drives an endpoint (guest packets in, RX buffers to fill, socket events); the
//! endpoint answers the guest only through [`GuestReplies`], so this module uses nothing of
//! the switch.
//!
//! | file | job |
//! |---|---|
//! | `uds.rs` | the `CONNECT`/`OK` line protocol, socket paths, non-blocking connects |
//! | `connection.rs` | one guest↔host stream and its buffers |
//! | `endpoint.rs` | all host-side state of one VM |
//! | `poller.rs` | the epoll instance watching host sockets, and its tokens |

pub mod connection;
pub mod endpoint;
pub mod poller;
pub mod uds;

pub use endpoint::HostEndpoint;
pub use poller::HostPoller;

use std::os::unix::net::UnixStream;

use sockbypass_wire::PacketHeader;

/// Where a guest's connections to the fast-path control port (CID 2, port
/// [`sockbypass_wire::fastpath::control::CONTROL_PORT`], SPEC.md §13.7) go: the daemon
/// terminates them itself. The endpoint keeps the guest side of the connection like any
/// other host connection (credit, buffers, RST), and hands the other end of a socket pair to
/// the sink; the fast-path service implements it.
pub trait ControlSink: Send + Sync + std::fmt::Debug {
    /// Takes the daemon's end of a new control connection from VM `vm_index`'s port
    /// `guest_port`. An error refuses the connection (the guest gets an RST).
    fn take(&self, vm_index: usize, guest_port: u32, stream: UnixStream) -> std::io::Result<()>;
}

/// What a host endpoint needs from the switch that serves its guest: a way to send the guest an
/// RST (a refused connect, a connection reset from the host side, SPEC.md §10). The switch
/// implements it over the guest's reply queue, which the endpoint never sees; what is sent is
/// counted in the VM's `rst_sent`.
pub trait GuestReplies {
    /// Sends `rst` to the guest, after the replies already owed to it.
    fn send_rst(&mut self, rst: PacketHeader);

    /// Answers the guest's packet `h` with an RST, unless `h` is an RST itself (an RST is never
    /// answered, SPEC.md §10).
    fn refuse(&mut self, h: &PacketHeader);
}
