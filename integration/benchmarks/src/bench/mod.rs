//! The benchmark of sockbypass against virtio-net (`sockbypass-bench`, run by
//! `integration/bench.sh`): RTT p50/p99 at 64 B and bulk throughput between two guests over
//! the bypass (`AF_VSOCK` through `sockbypassd`), virtio-net, and the fast path (SPEC.md §13)
//! in both placements, host-copied and direct, with the CPU the daemon and the guests used.
//!
//! | module | job |
//! |---|---|
//! | [`plan`] | what the client guest runs: repetitions over the four paths, in rotating order |
//! | [`aggregate`] | per-path figures from the guests' `SBRESULT` lines, the ratios and goals |
//! | [`report`] | the table, the JSON files and the plot |
//! | [`through_daemon`] | the daemon's counters must show every bypass and host-copied fast-path byte the guests measured, and no direct one |

pub mod aggregate;
pub mod plan;
pub mod report;
pub mod through_daemon;
