//! VM-to-VM delivery (SPEC.md §4.2, §5.2, §5.3): check a packet against the connection table,
//! then copy it from the sender's TX descriptors straight into the receiver's RX buffers,
//! split over as many buffers as it needs. When the receiver has no buffer free, the packet is
//! held (a reference, not a copy) in the receiver's inbound queue, and the sender's other
//! destinations keep moving.

use std::sync::atomic::Ordering;
use std::time::Instant;

use sockbypass_wire::consts::HEADER_LEN;
use sockbypass_wire::{copy_between, Op, PacketHeader, RxBuffer, SegmentError, TxPacket};

use super::attachment::{Attachment, RX};
use super::inbound::Held;
use super::peer_table::{OwedRst, Refused, Verdict};
use super::replies::Cause;
use super::rx_path::{take_buffer, RX_POP_BUDGET};
use super::vm_port::{RxSide, VmPort};
use super::Switch;
use crate::memory::MemGuard;
use crate::metrics::VmCounters;
use crate::warn_limited;

/// What became of a TX chain the switch routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Finished with: the chain goes back to the sender now.
    Done,
    /// Held for the receiver: the chain goes back when its last byte is delivered.
    Held,
}

/// How far [`deliver`] got with one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Every byte (or the header of a control packet) is in the receiver's RX queue.
    Complete,
    /// The receiver ran out of RX buffers; the packet's offset says how far it got.
    NoBuffer,
    /// Guest memory could not be read or written (the memory map changed under the packet).
    Failed,
}

/// Copies what is left of `packet` (from `*offset` on) from `src_mem` into the RX buffers of
/// `dst`, one piece per buffer. Each piece is the packet's header with its own `len`.
/// The caller holds `dst`'s RX lock (`rx`). `pops` is what is left of the caller's budget of RX
/// chains (see [`take_buffer`]).
#[allow(clippy::too_many_arguments)]
pub fn deliver(
    dst: &VmPort,
    datt: &Attachment,
    dmem: &MemGuard,
    starved_since: &mut Option<Instant>,
    pops: &mut u32,
    src_mem: &MemGuard,
    packet: &TxPacket,
    offset: &mut u32,
) -> Progress {
    let len = packet.header.len();
    loop {
        let mut buf = RxBuffer::default();
        if !take_buffer(dst, datt, dmem, starved_since, pops, &mut buf) {
            return Progress::NoBuffer;
        };
        let remaining = len - *offset;
        let n = remaining.min(buf.payload_capacity());
        if n == 0 && remaining > 0 {
            // Room for a header only: useless for data. Hand it back empty.
            dst.counters.rx_bad_chain.fetch_add(1, Ordering::Relaxed);
            dst.return_chain(datt, dmem, RX, buf.head_index, 0);
            continue;
        }
        if let Err(e) = put_piece(src_mem, packet, *offset, n, dmem, &buf) {
            warn_limited!(dst.warn, vm = %dst.config.name, error = %e, "cannot copy a packet between guests");
            dst.return_chain(datt, dmem, RX, buf.head_index, 0);
            return Progress::Failed;
        }
        dst.return_chain(datt, dmem, RX, buf.head_index, HEADER_LEN + n);
        let c = &dst.counters;
        c.rx_packets.fetch_add(1, Ordering::Relaxed);
        c.rx_bytes.fetch_add(u64::from(n), Ordering::Relaxed);
        if *offset > 0 {
            c.rx_split.fetch_add(1, Ordering::Relaxed);
        }
        *offset += n;
        if *offset >= len {
            return Progress::Complete;
        }
    }
}

/// Writes one piece: `n` payload bytes from `offset` on, then the header saying `len = n`.
fn put_piece(
    src_mem: &MemGuard,
    packet: &TxPacket,
    offset: u32,
    n: u32,
    dmem: &MemGuard,
    buf: &RxBuffer,
) -> Result<(), SegmentError> {
    if n > 0 {
        copy_between(
            &**src_mem,
            &packet.payload,
            offset,
            &**dmem,
            &buf.space,
            HEADER_LEN,
            n,
        )?;
    }
    let mut hdr = packet.header;
    hdr.set_len(n);
    buf.write_header(&**dmem, &hdr)
}

/// The RST that tells the receiver of `h` that its connection is gone.
pub fn rst_towards_destination(h: &PacketHeader) -> PacketHeader {
    let mut rst = PacketHeader::stream(
        Op::Rst,
        h.src_cid(),
        h.src_port(),
        h.dst_cid(),
        h.dst_port(),
    );
    rst.set_type(h.type_());
    rst
}

/// Counts a refusal on the sender under its reason.
fn count_refusal(c: &VmCounters, why: Refused) {
    let counter = match why {
        Refused::Policy(_) => &c.drop_policy,
        Refused::ConnLimit => &c.drop_conn_limit,
        Refused::NoConnection => &c.drop_no_connection,
        Refused::Protocol => &c.drop_protocol,
        Refused::Credit => &c.drop_credit_violation,
    };
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Switch {
    /// Routes one valid packet from `vm` (attachment `att`, memory `mem`) to the VM at index
    /// `to`. `touched` collects the VMs whose RX queues changed, for the caller to signal.
    pub(super) fn route_to_peer(
        &self,
        vm: &VmPort,
        att: &Attachment,
        mem: &MemGuard,
        pkt: &TxPacket,
        to: usize,
        touched: &mut Vec<usize>,
    ) -> Disposition {
        let h = &pkt.header;
        let verdict = self.peers().on_packet(vm.index, to, h, Instant::now);
        match verdict {
            Verdict::Forward => {}
            Verdict::Ignore => {
                vm.counters
                    .drop_no_connection
                    .fetch_add(1, Ordering::Relaxed);
                return Disposition::Done;
            }
            Verdict::Refuse(why) => {
                count_refusal(&vm.counters, why);
                warn_limited!(vm.warn, vm = %vm.config.name, ?why, dst_cid = h.dst_cid(), dst_port = h.dst_port(), op = h.op_raw(), "refused a packet to a peer VM");
                self.answer_with_rst(vm.index, h, touched);
                return Disposition::Done;
            }
            Verdict::ResetBoth(why) => {
                count_refusal(&vm.counters, why);
                warn_limited!(vm.warn, vm = %vm.config.name, ?why, dst_cid = h.dst_cid(), dst_port = h.dst_port(), op = h.op_raw(), "reset a connection between VMs");
                self.reset_both(vm.index, to, h, touched);
                return Disposition::Done;
            }
        }
        let Some(dst) = self.vm(to) else {
            return Disposition::Done;
        };
        let mut rx = dst.rx();
        let Some(datt) = dst.attachment() else {
            // Detached after the check: the connection is gone.
            drop(rx);
            self.peers().forget(h);
            vm.counters
                .drop_peer_unreachable
                .fetch_add(1, Ordering::Relaxed);
            self.answer_with_rst(vm.index, h, touched);
            return Disposition::Done;
        };
        mark(touched, to);
        if !rx.inbound.is_empty() {
            hold(vm, att, &mut rx, pkt, 0);
            return Disposition::Held;
        }
        let dmem = datt.memory();
        let mut offset = 0;
        let mut pops = RX_POP_BUDGET;
        // One more look after re-arming the receiver's kicks, for buffers posted meanwhile.
        let mut rearmed = false;
        loop {
            match deliver(
                dst,
                &datt,
                &dmem,
                &mut rx.starved_since,
                &mut pops,
                mem,
                pkt,
                &mut offset,
            ) {
                Progress::Complete => {
                    drop(rx);
                    count_forwarded(vm, h);
                    return Disposition::Done;
                }
                Progress::Failed => {
                    drop(rx);
                    self.peers().forget(h);
                    self.reset_both(vm.index, to, h, touched);
                    return Disposition::Done;
                }
                Progress::NoBuffer => {
                    // Ask for a kick when buffers come; if some came meanwhile, look once more.
                    if !rearmed && pops > 0 && datt.enable_kicks(RX).unwrap_or(false) {
                        rearmed = true;
                        continue;
                    }
                    rx.start_starving();
                    dst.rx_starved.store(true, Ordering::Release);
                    dst.counters
                        .rx_buffer_stalls
                        .fetch_add(1, Ordering::Relaxed);
                    hold(vm, att, &mut rx, pkt, offset);
                    drop(rx);
                    if pops == 0 {
                        // The receiver keeps posting unusable buffers: its own fill takes over.
                        dst.request_resume();
                    }
                    return Disposition::Held;
                }
            }
        }
    }

    /// Answers `h`, a packet of VM `vm`, with an RST, unless `h` is an RST itself.
    pub(super) fn answer_with_rst(&self, vm: usize, h: &PacketHeader, touched: &mut Vec<usize>) {
        if let Some(rst) = h.rst_reply() {
            self.owe_rst(vm, rst, Cause::Own, touched);
        }
    }

    /// Resets the connection of `h` (a packet from VM `from` to VM `to`) on both sides.
    fn reset_both(&self, from: usize, to: usize, h: &PacketHeader, touched: &mut Vec<usize>) {
        self.answer_with_rst(from, h, touched);
        self.owe_rst(to, rst_towards_destination(h), Cause::Peer, touched);
    }

    /// Queues `rst` for VM `to` and counts it; `to` joins `touched`, whose RX queues the caller
    /// fills at the end of its work. Packets of the same connection still held for `to` are
    /// dropped and their chains returned, so the RST never overtakes them (SPEC.md §10). Past
    /// the peer-reply limit (a guest that posts no RX buffers while peers keep provoking
    /// resets) an RST caused by a peer is dropped and counted.
    pub(super) fn owe_rst(
        &self,
        to: usize,
        rst: PacketHeader,
        cause: Cause,
        touched: &mut Vec<usize>,
    ) {
        let Some(vm) = self.vm(to) else {
            return;
        };
        let mut dropped = Vec::new();
        vm.rx().owe_rst(rst, cause, &vm.counters, &mut dropped);
        self.return_held(dropped);
        mark(touched, to);
    }

    /// Queues every RST in `owed` (at most one per connection that ended without its peer's
    /// say, so bounded by `max_conns`) and returns the VMs whose RX queues need filling.
    pub(super) fn queue_owed_rsts(&self, owed: Vec<OwedRst>) -> Vec<usize> {
        let mut touched = Vec::new();
        for o in owed {
            self.owe_rst(o.vm, o.header, Cause::Peer, &mut touched);
        }
        touched
    }
}

/// Records that VM `index`'s RX queue needs attention at the end of a walk.
pub fn mark(touched: &mut Vec<usize>, index: usize) {
    if !touched.contains(&index) {
        touched.push(index);
    }
}

fn hold(sender: &VmPort, att: &Attachment, rx: &mut RxSide, pkt: &TxPacket, offset: u32) {
    rx.inbound.push(Held {
        sender: sender.index,
        generation: att.generation(),
        packet: pkt.clone(),
        offset,
    });
    sender.held_add(1);
}

/// Counts a packet of `vm` as fully delivered to a peer.
pub fn count_forwarded(vm: &VmPort, h: &PacketHeader) {
    vm.counters.fwd_packets.fetch_add(1, Ordering::Relaxed);
    vm.counters
        .fwd_bytes
        .fetch_add(u64::from(h.len()), Ordering::Relaxed);
}
