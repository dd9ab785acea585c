//! The run-time control of `sockbypassd` (SPEC.md §14): the messages of its control socket,
//! a client, and what the `sockbypass` command prints.
//!
//! | module | job |
//! |---|---|
//! | [`protocol`] | requests, replies and their JSON shape |
//! | [`client`] | one connection to the control socket |

pub mod client;
pub mod protocol;

pub use client::{Client, ClientError};
pub use protocol::{Answer, ControlError, ErrorKind, Reply, Request, VmInfo};
