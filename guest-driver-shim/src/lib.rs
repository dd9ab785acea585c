//! `sockbypass_guest`: the guest side of sockbypass's fast path (SPEC.md §13).
//!
//! A guest process maps the shared-memory windows the host gave its VM (ivshmem BAR 2 of the
//! PCI devices `1af4:1110`), opens a control channel to the daemon (AF_VSOCK, CID 2, port
//! `0x5342_5000`), and moves stream bytes through per-connection rings in those windows,
//! without syscalls or VM exits on the data path. Setup, policy and wake-ups go through the
//! control channel; everything a window holds is checked before it is used (§13.9).
//!
//! | module | job |
//! |---|---|
//! | [`window`] | find, enable, map and check windows; atomic and bounds-checked access (§13.1, §13.2) |
//! | [`ring`] | one direction of one connection: checked indices, ordering, `closed`, sleeping flags (§13.3) |
//! | [`control`] | control-channel client: framing, strict decoding, handshake, request numbers, queue (§13.7) |
//! | `session` | the control channel shared by a `FastPath` and its streams: dispatch, waits from several threads |
//! | [`stream`] | [`FastStream`]: blocking and non-blocking read/write, wake-ups (§13.5), readiness |
//! | [`fastpath`] | [`FastPath`]: connect, listen, accept, reject; placement → window and rings (§13.4) |
//! | [`connection`] | [`Connection`]: a fast stream or the plain vsock fallback (§13.6) |
//! | [`error`] | open, connect and stream errors and their `errno`s |
//! | [`capi`] | the C ABI of `include/sockbypass.h` |
//!
//! # Threading
//!
//! A [`FastPath`] is `Send + Sync`: its control channel sits behind a mutex, and any thread
//! may connect, accept or use streams. A [`FastStream`] is used by one thread at a time
//! (`&mut self`), but different streams may block in different threads at once: the first
//! thread that has to wait polls the control socket without holding the lock and dispatches
//! what arrives to every connection, the others wait on a condition variable (see
//! `session`). Streams keep the control channel open as long as they live.
//!
//! # Readiness (for the later LD_PRELOAD shim)
//!
//! [`FastPath`]'s `as_raw_fd()` is the control socket, readable when a daemon message is
//! pending; [`FastStream::poll_ready`] says, from the rings and the messages already
//! dispatched, whether a read or write would proceed. A shim builds its fd/`epoll`
//! integration on these two (a non-blocking read or write dispatches pending messages).

#![cfg_attr(test, allow(clippy::cast_possible_truncation))]

pub mod capi;
pub mod connection;
pub mod control;
pub mod error;
pub mod fastpath;
pub mod ring;
mod session;
pub mod stream;
pub mod window;

pub use connection::Connection;
pub use control::{ControlChannel, ControlChannelError, Transport, CONTROL_PORT};
pub use error::{ConnectError, OpenError, StreamError};
pub use fastpath::{FastPath, Incoming};
pub use ring::{NoSuchRing, RingError, RingRx, RingTx};
pub use sockbypass_wire::fastpath::control::{Placement, Reason};
pub use stream::{FastStream, Readiness, SpinBudget, StreamInfo};
pub use window::{Window, WindowError};
