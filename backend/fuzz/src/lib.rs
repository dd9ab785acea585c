//! The switch fuzz target's pieces: two simulated guests driving `sockbypassd::switch::Switch`
//! in-process, without vhost-user.
//!
//! | module | job |
//! |---|---|
//! | [`scenario`] | what a fuzz input describes (settings, steps), via `arbitrary` |
//! | [`guest`] | one guest: RAM, the test driver, the vrings the switch binds, raw ring operations |
//! | [`harness`] | one run: the well-behaved stream, the steps, and the properties checked |
//! | [`fastpath`] | the fast-path target: control messages and window writes against the service |

// Fuzz inputs are narrowed into ring fields, ports and lengths of every width on purpose.
#![allow(clippy::cast_possible_truncation)]

pub mod fastpath;
pub mod guest;
pub mod harness;
pub mod scenario;
