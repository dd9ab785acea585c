//! The vhost-user side: one virtio-vsock device per VM.
//!
//! | file | job |
//! |---|---|
//! | `backend.rs` | [`VsockBackend`]: what the device needs from the switch, and nothing more |
//! | `vsock_device.rs` | [`VsockDevice`]: the `VhostUserBackend` implementation (features, config space, events) |
//! | `server.rs` | one thread per VM that serves its vhost-user socket across reconnects |

pub mod backend;
pub mod server;
pub mod vsock_device;

pub use backend::{DetachReason, VsockBackend};
pub use vsock_device::VsockDevice;
