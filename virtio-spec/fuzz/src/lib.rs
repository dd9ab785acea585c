//! Shared pieces of the wire crate's fuzz targets.
//!
//! | module | job |
//! |---|---|
//! | [`checks`] | the properties asserted on segment reads, writes and copies |
//! | [`layout`] | guest memory laid out for the targets, and a split queue written into it |
//! | [`model`] | a byte-by-byte reference of guest memory and of a segment list |
//! | [`spec`] | fuzz-input descriptions (addresses, lengths, descriptors) resolved into the layout |

// Fuzz inputs are narrowed into ring fields, ports and lengths of every width on purpose.
#![allow(clippy::cast_possible_truncation)]

pub mod checks;
pub mod layout;
pub mod model;
pub mod spec;
