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

use sockbypass_wire::PacketHeader;

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
