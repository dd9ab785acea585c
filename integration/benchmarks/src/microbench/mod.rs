//! The host-only microbenchmark (`sockbypass-microbench`): the switch alone, with simulated VMs
//! in this process, measured against this machine's physical limits.
//!
//! | module | job |
//! |---|---|
//! | [`bench_vm`] | a guest driver with fixed buffers: no allocation per packet |
//! | [`compare`] | A/B statistics for `ci/perf-gate.sh --ab`: change and permutation p-value |
//! | [`pair`] | two VMs and one stream between them: credit, checks of every packet |
//! | [`daemon`] | the in-process `sockbypassd` under test |
//! | [`scenarios`] | latency, packet rate, bulk, scaling, idle CPU, the gate's fixed run |
//! | [`fastpath`] | the fast path's host copy: 64 B messages, one-way latency, bulk, its gate run |
//! | [`reference`] | cache-line round trip, `memcpy` bandwidth, timer cost |
//! | [`report`] | the table, the JSON document and the goals |

pub mod bench_vm;
pub mod compare;
pub mod daemon;
pub mod fastpath;
pub mod pair;
pub mod reference;
pub mod report;
pub mod scenarios;
