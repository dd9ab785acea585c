//! The poll engine (see `backend/DESIGN-poller.md`): poll threads that own VMs and drive the
//! switch without waiting for kicks, sleeping only when idle (adaptive mode).
//!
//! | file | job |
//! |---|---|
//! | `engine.rs` | starting, pinning and stopping the poll threads; their loop |
//! | `waker.rs` | the eventfd a sleeping poll thread is woken through |

pub mod engine;
pub mod waker;

pub use engine::{PollCounters, PollCountersSnapshot, PollEngine, BATCH_BUCKETS};
pub use waker::Waker;
