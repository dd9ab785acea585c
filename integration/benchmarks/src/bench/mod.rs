//! The bypass-vs-virtio-net benchmark (`sockbypass-bench`, run by `integration/bench.sh`).
//!
//! | module | job |
//! |---|---|
//! | [`plan`] | what the client guest runs: interleaved repetitions over both paths |
//! | [`aggregate`] | per-path figures from the guests' `SBRESULT` lines, and the ratios |
//! | [`report`] | the table, the JSON files and the plot |
//! | [`through_daemon`] | the daemon's counters must show every bypass byte the guests measured |

pub mod aggregate;
pub mod plan;
pub mod report;
pub mod through_daemon;
