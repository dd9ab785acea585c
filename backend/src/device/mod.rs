//! The vhost-user side: one virtio-vsock device per VM.
//!
//! | file | job |
//! |---|---|
//! | `vsock_device.rs` | [`VsockDevice`]: the `VhostUserBackend` implementation (features, config space, events) |
//! | `server.rs` | one thread per VM that serves its vhost-user socket across reconnects |

pub mod server;
pub mod vsock_device;

pub use vsock_device::VsockDevice;
