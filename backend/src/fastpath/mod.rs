//! The fast path (SPEC.md §13, planned; issue 12). So far: each VM with `fastpath=on` gets its
//! window, and each configured pair its pair window: files the daemon creates, sizes and maps
//! before any thread starts, with the header of §13.2 written and every ring control zeroed,
//! ready for QEMU's `ivshmem-plain`. The rings,
//! the control channel and the host poller come next.
//!
//! | module | job |
//! |---|---|
//! | [`window`] | one window file: created, mapped, header written ([`Window`]) |

pub mod window;

pub use window::{pair_window_path, window_path, Window, WindowError};
