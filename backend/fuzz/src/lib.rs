//! The switch fuzz target's pieces: two simulated guests driving `sockbypassd::switch::Switch`
//! in-process, without vhost-user.
//!
//! | module | job |
//! |---|---|
//! | [`scenario`] | what a fuzz input describes (settings, steps), via `arbitrary` |
//! | [`guest`] | one guest: RAM, the test driver, the vrings the switch binds, raw ring operations |
//! | [`harness`] | one run: the well-behaved stream, the steps, and the properties checked |

// Fuzz inputs are narrowed into ring fields, ports and lengths of every width on purpose.
#![allow(clippy::cast_possible_truncation)]

pub mod guest;
pub mod harness;
pub mod scenario;
