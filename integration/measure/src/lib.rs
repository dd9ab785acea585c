//! Measurement helpers shared by the benchmarks, the real-daemon runs and the device tests.
//!
//! | module | job |
//! |---|---|
//! | [`cpu_time`] | CPU time of a process and steal time, from `/proc` |
//! | [`proc_status`] | fields of `/proc/PID/status` (resident memory) |
//! | [`host`] | this host (CPU, cores, memory) and this checkout (commit) for results files |

#![warn(missing_docs)]

pub mod cpu_time;
pub mod host;
pub mod proc_status;
