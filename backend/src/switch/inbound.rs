//! Packets from other VMs that wait for this VM's RX buffers (SPEC.md §5.3).
//!
//! A held packet is only a reference: its header copy and the guest addresses of its payload,
//! still in the sender's TX descriptors, which the sender gets back once the last byte is
//! delivered. So the queue costs no payload memory, and it is bounded by the senders' TX queue
//! sizes: a chain is held only after its head was claimed in the sender's in-flight bitmap
//! ([`super::attachment::Attachment::claim_tx`]), a head below the queue size that is not
//! already in flight, so a sender has at most its TX queue size of chains held, however often
//! it publishes the same head.

use std::collections::VecDeque;

use sockbypass_wire::{PacketHeader, TxPacket};

use super::peer_table::same_connection;

/// A sender's TX packet waiting for the receiver.
#[derive(Debug)]
pub struct Held {
    /// Switch index of the sending VM.
    pub sender: usize,
    /// The sender's attachment the chain belongs to ([`super::attachment::Attachment::generation`]).
    pub generation: u64,
    /// The packet, validated when it was taken from the sender's TX queue.
    pub packet: TxPacket,
    /// Payload bytes already delivered (a packet split over several RX buffers).
    pub offset: u32,
}

/// The FIFO of packets held for one receiver, from every sender. One FIFO keeps each
/// connection's packets in order; fairness between senders follows their arrival.
#[derive(Debug, Default)]
pub struct InboundQueue {
    queue: VecDeque<Held>,
}

impl InboundQueue {
    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Packets waiting.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Queues a packet behind the others.
    pub fn push(&mut self, held: Held) {
        self.queue.push_back(held);
    }

    /// The packet to deliver next.
    pub fn front_mut(&mut self) -> Option<&mut Held> {
        self.queue.front_mut()
    }

    /// Removes the packet at the front.
    pub fn pop(&mut self) -> Option<Held> {
        self.queue.pop_front()
    }

    /// Removes and returns every packet, for a receiver that went away.
    pub fn drain_all(&mut self) -> Vec<Held> {
        self.queue.drain(..).collect()
    }

    /// Removes every packet of the connection `h` names (either direction) and appends them to
    /// `out`: the connection is being reset, and its RST must not overtake them (SPEC.md §10).
    pub fn take_connection(&mut self, h: &PacketHeader, out: &mut Vec<Held>) {
        let mine = |held: &Held| same_connection(&held.packet.header, h);
        if !self.queue.iter().any(mine) {
            return;
        }
        let (gone, kept): (VecDeque<Held>, VecDeque<Held>) =
            std::mem::take(&mut self.queue).into_iter().partition(mine);
        self.queue = kept;
        out.extend(gone);
    }

    /// Removes every packet of `sender`'s attachment `generation` (the sender went away; its
    /// chains need not be returned). Returns how many were removed.
    pub fn remove_sender(&mut self, sender: usize, generation: u64) -> usize {
        let before = self.queue.len();
        self.queue
            .retain(|h| !(h.sender == sender && h.generation == generation));
        before - self.queue.len()
    }
}
