//! The run-time control of `sockbypassd` (SPEC.md §14): the messages of its control socket,
//! a client, and what the `sockbypass` command prints.
//!
//! | module | job |
//! |---|---|
//! | [`protocol`] | requests, replies and their JSON shape |
//! | [`client`] | one connection to the control socket |
//! | [`cli`] | the `clap` command line of `sockbypass` |
//! | [`command`] | carrying out one `sockbypass` command: request, output, error line |
//! | [`render`] | what `sockbypass` prints for people: the VM table, non-zero counters |
//! | [`generate`] | the attach generators: QEMU arguments, cloud-hypervisor arguments, libvirt XML |

pub mod cli;
pub mod client;
pub mod command;
pub mod generate;
pub mod protocol;
pub mod render;

pub use client::{Client, ClientError};
pub use protocol::{Answer, ControlError, ErrorKind, Reply, Request, VmInfo};
