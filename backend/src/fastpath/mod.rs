//! The fast path (SPEC.md §13): each VM with `fastpath=on` gets its window, and each configured
//! pair its pair window (files the daemon creates, sizes and maps before any thread starts,
//! header written and every ring control zeroed, ready for QEMU's `ivshmem-plain`). Guests
//! open a control connection to CID 2 port `0x5342_5000`, which the host endpoint hands to the
//! fast-path thread; it sets connections up under the switch's policy, copies the host-copied
//! ones between windows, and wakes sleeping guests.
//!
//! | module | job |
//! |---|---|
//! | [`window`] | one window file: created, mapped, header written ([`Window`]) |
//! | [`ring_access`] | one ring of a window: its control fields and its data area |
//! | [`intake`] | new control connections, from the host endpoint to the fast-path thread |
//! | [`control_stream`] | one control connection's 32-byte messages, in and out |
//! | [`slots`] | the free slots of a window |
//! | [`conn`] | one fast-path connection and its two sides |
//! | [`service`] | the state: VMs, windows, control connections, listeners, connections |
//! | [`messages`] | what each guest message does |
//! | [`setup`] | `CONNECT`, `ACCEPT`, `REJECT`: policy, limits, slots, placement |
//! | [`teardown`] | `CLOSE`, resets, control connections that go, freeing slots |
//! | [`copier`] | the host-copied data path: TX ring to RX ring, end of stream, `WAKE`s |
//! | [`thread`] | the fast-path thread and its poll modes |

pub mod conn;
pub mod control_stream;
pub mod copier;
pub mod intake;
pub mod messages;
pub mod ring_access;
pub mod service;
pub mod setup;
pub mod slots;
pub mod teardown;
pub mod thread;
pub mod window;

pub use intake::Intake;
pub use service::Service;
pub use thread::FastPathThread;
pub use window::{pair_window_path, window_path, Window, WindowError};
