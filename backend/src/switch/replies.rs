//! Control packets the device owes a guest that belong to no live connection: mostly RSTs that
//! refuse a request or answer a packet for an unknown connection.
//!
//! The queue is bounded. The TX path checks [`ReplyQueue::has_room`] before it takes a packet
//! that may need a reply, so a guest that floods requests without posting RX buffers stalls its
//! own TX queue instead of growing this one (SPEC.md §7).

use std::collections::VecDeque;

use sockbypass_wire::{Op, PacketHeader};

/// Replies a VM may have waiting before its TX queue stalls.
pub const REPLY_QUEUE_CAP: usize = 256;
/// Replies a VM may have waiting at all, counting RSTs that other VMs' packets caused; past it
/// such RSTs are dropped and counted (SPEC.md §11).
pub const REPLY_QUEUE_HARD_CAP: usize = 4 * REPLY_QUEUE_CAP;

/// A bounded FIFO of headers to send to one guest.
#[derive(Debug, Default)]
pub struct ReplyQueue {
    queue: VecDeque<PacketHeader>,
}

impl ReplyQueue {
    /// Whether the TX path may take another packet (each takes at most one reply).
    pub fn has_room(&self) -> bool {
        self.queue.len() < REPLY_QUEUE_CAP
    }

    /// Queues an RST answering `to` (addresses swapped). RSTs are never answered.
    pub fn rst_for(&mut self, to: &PacketHeader) {
        if to.op() == Some(Op::Rst) {
            return;
        }
        self.push(to.reply(Op::Rst));
    }

    /// Queues a header. Host-side events may exceed the soft cap by at most one per connection,
    /// which `max_conns` bounds.
    pub fn push(&mut self, hdr: PacketHeader) {
        self.queue.push_back(hdr);
    }

    /// Queues a header unless [`REPLY_QUEUE_HARD_CAP`] replies already wait. Returns whether it
    /// was queued.
    pub fn push_bounded(&mut self, hdr: PacketHeader) -> bool {
        if self.queue.len() >= REPLY_QUEUE_HARD_CAP {
            return false;
        }
        self.queue.push_back(hdr);
        true
    }

    /// The next reply.
    pub fn pop(&mut self) -> Option<PacketHeader> {
        self.queue.pop_front()
    }

    /// Puts a reply back at the front (no RX buffer for it after all).
    pub fn unpop(&mut self, hdr: PacketHeader) {
        self.queue.push_front(hdr);
    }

    /// Number of waiting replies.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Forgets everything (the guest is gone).
    pub fn clear(&mut self) {
        self.queue.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rst_answers_swap_addresses_and_never_answer_rst() {
        let mut q = ReplyQueue::default();
        q.rst_for(&PacketHeader::stream(Op::Request, 3, 1000, 9, 80));
        q.rst_for(&PacketHeader::stream(Op::Rst, 3, 1000, 9, 80));
        assert_eq!(q.len(), 1);
        let r = q.pop().expect("one reply");
        assert_eq!(
            (r.src_cid(), r.src_port(), r.dst_cid(), r.dst_port()),
            (9, 80, 3, 1000)
        );
        assert_eq!(r.op(), Some(Op::Rst));
    }

    #[test]
    fn has_room_until_cap() {
        let mut q = ReplyQueue::default();
        for _ in 0..REPLY_QUEUE_CAP {
            assert!(q.has_room());
            q.push(PacketHeader::default());
        }
        assert!(!q.has_room());
    }
}
