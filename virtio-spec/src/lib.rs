//! The virtio-vsock wire format as sockbypass speaks it.
//!
//! Everything here follows `virtio-spec/SPEC.md`, the normative description of the device.
//! The crate only parses and builds; it owns no queues and makes no routing decisions.
//!
//! | module | job |
//! |---|---|
//! | [`consts`] | device id, feature bits, queue indices, ops, types, flags and limits |
//! | [`header`] | the 44-byte packet header ([`PacketHeader`]) and its typed fields ([`Op`]) |
//! | [`event`] | the event-queue record (`TRANSPORT_RESET`) |
//! | [`config_space`] | the device config space (`guest_cid`) as GET_CONFIG returns it |
//! | [`segments`] | a bounded, heap-free list of guest buffers, and copies between two guests' buffers |
//! | [`chain`] | validating a descriptor chain into a [`TxPacket`] or an [`RxBuffer`] |
//! | [`fastpath`] | the fast path's window layout, ring arithmetic and control messages (§13, planned) |
//!
//! Why not `virtio-vsock`'s `VsockPacket`: it accepts at most one data descriptor and rejects
//! fragmented payloads, while Linux guests split large packets over several descriptors. The
//! switch must copy those straight from one guest into another without a heap buffer, so this
//! crate keeps a fixed-capacity list of guest segments instead (see SPEC.md §3).

#![cfg_attr(test, allow(clippy::cast_possible_truncation))]

pub mod chain;
pub mod config_space;
pub mod consts;
pub mod event;
pub mod fastpath;
pub mod header;
pub mod segments;

pub use chain::{
    parse_event_chain, parse_rx_chain, parse_rx_chain_into, parse_tx_chain, parse_tx_chain_into,
    ChainError, RxBuffer, TxPacket,
};
pub use config_space::VsockConfigSpace;
pub use header::{Op, PacketHeader};
pub use segments::{copy_between, Segment, SegmentError, Segments};
