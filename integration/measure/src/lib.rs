//! Measurement helpers shared by the benchmarks, the real-daemon runs, the device tests and
//! `sbtool` in the guests (so it stays free of anything a static guest binary cannot have).
//!
//! | module | job |
//! |---|---|
//! | [`stats`] | the one definition of median and percentiles (nearest rank) |
//! | [`cpu_time`] | CPU time of a process and steal time, from `/proc` |
//! | [`proc_status`] | fields of `/proc/PID/status` (resident memory) |
//! | [`host`] | this host (CPU, cores, memory) and this checkout (commit) for results files |

#![warn(missing_docs)]

pub mod cpu_time;
pub mod host;
pub mod proc_status;
pub mod stats;
