//! Control packets the device owes a guest that belong to no live connection: mostly RSTs that
//! refuse a request or answer a packet for an unknown connection. The switch's RSTs are all
//! built here ([`rst`], [`rst_to_sender`], [`rst_to_receiver`]).
//!
//! Two bounded FIFOs, by who caused the reply (SPEC.md §11):
//! - **the VM's own**: answers to its own packets and host-side events. The TX path checks
//!   [`ReplyQueue::has_room`] before it takes a packet that may need a reply, so a guest that
//!   floods requests without posting RX buffers stalls its own TX queue instead of growing
//!   this one.
//! - **caused by other VMs**: RSTs a peer's packet provoked. They never count against the VM's
//!   own room, so a peer cannot stall the VM's TX queue; past [`PEER_REPLY_CAP`] they are
//!   dropped and counted.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;

use sockbypass_wire::{Op, PacketHeader};

use crate::host::GuestReplies;
use crate::metrics::VmCounters;

/// The VM's own replies that may wait before its TX queue stalls.
pub const REPLY_QUEUE_CAP: usize = 256;
/// Replies caused by other VMs that may wait; past it they are dropped and counted in
/// `drop_reply_overflow`.
pub const PEER_REPLY_CAP: usize = 1024;

/// The RST builder: an RST from `from` to `to`, each a (CID, port).
pub fn rst(from: (u64, u32), to: (u64, u32)) -> PacketHeader {
    PacketHeader::stream(Op::Rst, from.0, from.1, to.0, to.1)
}

/// The RST that answers the packet `h` to its sender, or `None` when `h` is an RST itself: an
/// RST is never answered (SPEC.md §10).
pub fn rst_to_sender(h: &PacketHeader) -> Option<PacketHeader> {
    (h.op() != Some(Op::Rst)).then(|| rst((h.dst_cid(), h.dst_port()), (h.src_cid(), h.src_port())))
}

/// The RST that tells the receiver of the packet `h` that its connection is gone.
pub fn rst_to_receiver(h: &PacketHeader) -> PacketHeader {
    rst((h.src_cid(), h.src_port()), (h.dst_cid(), h.dst_port()))
}

/// Who caused a reply, which decides the queue it goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The receiving VM's own packet (or a host event of its own).
    Own,
    /// Another VM's packet, or another VM leaving.
    Peer,
}

/// The replies waiting for one guest's RX buffers.
#[derive(Debug, Default)]
pub struct ReplyQueue {
    own: VecDeque<PacketHeader>,
    from_peers: VecDeque<PacketHeader>,
}

impl ReplyQueue {
    /// Whether the TX path may take another packet (each takes at most one reply).
    pub fn has_room(&self) -> bool {
        self.own.len() < REPLY_QUEUE_CAP
    }

    /// Queues a reply the VM's own packet or a host event caused. Host-side events may exceed
    /// the cap by at most one per connection, which `max_conns` bounds.
    pub fn push(&mut self, hdr: PacketHeader) {
        self.own.push_back(hdr);
    }

    /// Queues a reply another VM's packet caused, unless [`PEER_REPLY_CAP`] already wait.
    /// Returns whether it was queued.
    pub fn push_from_peer(&mut self, hdr: PacketHeader) -> bool {
        if self.from_peers.len() >= PEER_REPLY_CAP {
            return false;
        }
        self.from_peers.push_back(hdr);
        true
    }

    /// The next reply: the VM's own first.
    pub fn pop(&mut self) -> Option<PacketHeader> {
        self.own.pop_front().or_else(|| self.from_peers.pop_front())
    }

    /// Number of waiting replies.
    pub fn len(&self) -> usize {
        self.own.len() + self.from_peers.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.own.is_empty() && self.from_peers.is_empty()
    }

    /// Forgets everything (the guest is gone).
    pub fn clear(&mut self) {
        self.own.clear();
        self.from_peers.clear();
    }
}

/// The guest's own reply queue as its host endpoint sees it ([`GuestReplies`]): what the
/// endpoint sends is queued as the VM's own and counted in `rst_sent`.
#[derive(Debug)]
pub struct HostReplies<'a> {
    /// The guest's replies.
    pub queue: &'a mut ReplyQueue,
    /// The guest's counters.
    pub counters: &'a VmCounters,
}

impl GuestReplies for HostReplies<'_> {
    fn send_rst(&mut self, rst: PacketHeader) {
        self.queue.push(rst);
        self.counters.rst_sent.fetch_add(1, Ordering::Relaxed);
    }

    fn refuse(&mut self, h: &PacketHeader) {
        if let Some(rst) = rst_to_sender(h) {
            self.send_rst(rst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sockbypass_wire::Op;

    #[test]
    fn own_replies_fill_the_room_and_peer_replies_do_not() {
        let mut q = ReplyQueue::default();
        for _ in 0..PEER_REPLY_CAP {
            assert!(q.push_from_peer(PacketHeader::default()));
        }
        assert!(!q.push_from_peer(PacketHeader::default()), "peer cap");
        assert!(q.has_room(), "peers' replies leave the VM's own room");
        for _ in 0..REPLY_QUEUE_CAP {
            assert!(q.has_room());
            q.push(PacketHeader::default());
        }
        assert!(!q.has_room());
        assert_eq!(q.len(), PEER_REPLY_CAP + REPLY_QUEUE_CAP);
    }

    #[test]
    fn rsts_go_to_the_sender_or_the_receiver_and_never_answer_an_rst() {
        let mut req = PacketHeader::stream(Op::Request, 3, 1000, 4, 22);
        req.set_credit(4096, 7);
        assert_eq!(rst_to_sender(&req), Some(req.reply(Op::Rst)));
        assert_eq!(rst_to_sender(&req), req.rst_reply());
        assert_eq!(
            rst_to_receiver(&req),
            PacketHeader::stream(Op::Rst, 3, 1000, 4, 22)
        );
        assert_eq!(rst_to_sender(&rst_to_receiver(&req)), None);
    }

    #[test]
    fn own_replies_go_first() {
        let mut q = ReplyQueue::default();
        let peer = PacketHeader::stream(Op::Rst, 4, 1, 3, 2);
        let own = PacketHeader::stream(Op::Rst, 5, 1, 3, 2);
        assert!(q.push_from_peer(peer));
        q.push(own);
        assert_eq!(q.pop(), Some(own));
        assert_eq!(q.pop(), Some(peer));
        assert_eq!(q.pop(), None);
    }
}
