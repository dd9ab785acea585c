//! Host endpoints (CID 2), following Firecracker's hybrid vsock convention (SPEC.md §6).
//!
//! | file | job |
//! |---|---|
//! | `uds.rs` | the `CONNECT`/`OK` line protocol, socket paths, non-blocking connects |
//! | `credit.rs` | credit accounting for each direction of a stream |
//! | `connection.rs` | one guest↔host stream and its buffers |
//! | `endpoint.rs` | all host-side state of one VM |
//! | `poller.rs` | the epoll instance watching host sockets, and its tokens |

pub mod connection;
pub mod credit;
pub mod endpoint;
pub mod poller;
pub mod uds;

pub use endpoint::HostEndpoint;
pub use poller::HostPoller;
