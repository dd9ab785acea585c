//! The fast path's shared-memory format (SPEC.md §13, version 1): what the daemon and the guest
//! library both need to agree on, with no memory access of its own. Each side reads and writes
//! its windows with its own primitives (the daemon through `vm-memory`, the guest library
//! through its `mmap` of the ivshmem BAR) and uses this module for every offset, every index
//! check and every control message.
//!
//! | module | job |
//! |---|---|
//! | [`layout`] | window geometry: header fields, slots, ring controls and data areas (§13.2) |
//! | [`ring`] | ring index arithmetic: what a reader checks, free space, where bytes go (§13.3) |
//! | [`control`] | the 32-byte control messages on the control channel (§13.7) |
//! | [`wake_gate`] | when to wake a sleeping side: once per sleep, index read before flag (§13.5) |

pub mod control;
pub mod layout;
pub mod ring;
pub mod wake_gate;
