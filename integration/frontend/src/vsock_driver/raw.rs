//! Raw packets: what the device delivered, recorded as it arrived ([`RawPacket`]), and packets
//! or bytes sent exactly as a test wrote them, outside any stream (a hostile guest's view).

use std::collections::VecDeque;

use sockbypass_wire::{Op, PacketHeader};
use vm_memory::ByteValued;

use super::VsockDriver;
use crate::error::DriverError;
use crate::tx::{self, is_no_room, TxLayout};

/// One packet as the device delivered it on the RX queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawPacket {
    /// Arrival number (counts every RX used entry since the driver was created).
    pub seq: u64,
    /// The header (zero-padded if the device wrote less than 44 bytes).
    pub header: PacketHeader,
    /// The length the device put in the used ring.
    pub used_len: u32,
    /// The payload, if [`DriverConfig::record_payloads`] (and the packet is well-formed).
    pub payload: Vec<u8>,
    /// The used length is below 44, beyond the buffer, or shorter than `44 + header.len`.
    pub malformed: bool,
}

impl RawPacket {
    /// The op, if known.
    pub fn op(&self) -> Option<Op> {
        self.header.op()
    }
}

impl VsockDriver {
    /// Sends `header` and `payload` exactly as given (any CIDs, ports, op, type, `len`...),
    /// outside any stream, in `layout`. Returns the head index of the chain.
    pub fn send_raw(
        &mut self,
        header: &PacketHeader,
        payload: &[u8],
        layout: &TxLayout,
    ) -> Result<u16, DriverError> {
        self.send_raw_bytes(&[header.as_slice(), payload].concat(), layout)
    }

    /// Sends arbitrary bytes as one TX chain (e.g. a truncated header). Returns the head index.
    pub fn send_raw_bytes(&mut self, bytes: &[u8], layout: &TxLayout) -> Result<u16, DriverError> {
        let head = match tx::post(&self.ram, &mut self.tx, &[bytes], layout) {
            Err(e) if is_no_room(&e) => {
                self.reclaim_tx()?;
                tx::post(&self.ram, &mut self.tx, &[bytes], layout)?
            }
            other => other?,
        };
        self.tx_posted.insert(head.head, head.allocs);
        self.stats.tx_packets += 1;
        self.kick_tx = true;
        self.finish()?;
        Ok(head.head)
    }

    /// Packets the device delivered, oldest first (at most [`DriverConfig::raw_record_limit`]).
    pub fn received_raw(&self) -> &VecDeque<RawPacket> {
        &self.raw
    }

    /// Takes the recorded packets.
    pub fn take_received_raw(&mut self) -> Vec<RawPacket> {
        self.raw.drain(..).collect()
    }

    /// Event ids received on the event queue, oldest first.
    pub fn events(&self) -> &[u32] {
        &self.events
    }

    /// Takes the received event ids.
    pub fn take_events(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.events)
    }
}
