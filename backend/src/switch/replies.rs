//! Control packets the device owes a guest that belong to no live connection: mostly RSTs that
//! refuse a request or answer a packet for an unknown connection.
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

use sockbypass_wire::PacketHeader;

use crate::host::GuestReplies;
use crate::metrics::VmCounters;

/// The VM's own replies that may wait before its TX queue stalls.
pub const REPLY_QUEUE_CAP: usize = 256;
/// Replies caused by other VMs that may wait; past it they are dropped and counted in
/// `drop_reply_overflow`.
pub const PEER_REPLY_CAP: usize = 1024;

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
