//! The benchmarks of sockbypass: the bypass and the fast path (host-copied and direct) against
//! virtio-net with real guests (`sockbypass-bench`, run by `integration/bench.sh`), and the switch alone on the host, with
//! simulated VMs driven by the test frontend (`sockbypass-microbench`, also `ci/perf-gate.sh`).
//!
//! | module | job |
//! |---|---|
//! | [`bench`] | the bypass and fast path vs virtio-net benchmark: plan, aggregation, report |
//! | [`microbench`] | the host-only switch microbenchmark: simulated VMs, scenarios, report |
//! | [`error`] | the microbenchmark's error type |

// The microbenchmark plays the guest: it writes ring fields and lengths of the widths the
// rings have, so narrowing casts are intended here.
#![allow(clippy::cast_possible_truncation)]
#![warn(missing_docs)]

pub mod bench;
pub mod error;
pub mod microbench;
