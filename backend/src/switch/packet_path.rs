//! A packet's whole way through the switch, top to bottom (SPEC.md §4, §5, §10): taken from a
//! VM's TX ring, checked, then written to its host endpoint, copied into a peer VM's RX ring
//! (held for the peer's RX buffers when it has none free), or answered with an RST; and at the
//! end of the walk, one interrupt per guest whose rings changed.
//!
//! [`Switch::process_tx`] is the unit of work a poller calls: it never blocks, and reports what
//! it did. Every chain it pops goes back to the used ring, valid or not: at once, or, for a
//! packet held for a peer VM that has no RX buffer free, once its last byte is delivered (the
//! peer's RX fill, `rx_fill.rs`, finishes such packets with [`deliver`]).
//!
//! Reading order: `process_tx` → `walk_tx` → `walk_tx_ring` → `take_tx_chains` → `route` → the
//! host (`to_host`), a peer (`to_peer` → `forward` → [`deliver`], or `hold` when the peer has no
//! RX buffer), or an RST (`answer_with_rst`, `reset_both`, `owe_rst`) → `signal_receivers`.

use std::sync::atomic::Ordering;
use std::time::Instant;

use sockbypass_wire::consts::{HEADER_LEN, HOST_CID, MAX_QUEUE_SIZE};
use sockbypass_wire::{
    copy_between, parse_rx_chain_into, parse_tx_chain_into, Op, PacketHeader, RxBuffer,
    SegmentError, TxPacket,
};

use super::attachment::{Attachment, RX, TX};
use super::hub::Switch;
use super::inbound::Held;
use super::peer_table::{OwedRst, Refused, Verdict};
use super::replies::{rst_to_receiver, rst_to_sender, Cause};
use super::vm_port::{RxSide, VmPort};
use crate::memory::MemGuard;
use crate::metrics::VmCounters;
use crate::warn_limited;

/// What one [`Switch::process_tx`] call did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TxReport {
    /// Chains taken from the TX queue (valid or not).
    pub chains: u32,
    /// The walk stopped early because the VM's reply queue was full.
    pub stalled_on_replies: bool,
    /// Chains held for a peer VM that has no RX buffer yet (returned later).
    pub held: u32,
    /// The walk took its budget of chains with more available; the rest was handed back
    /// ([`VmPort::request_resume`]) for a later walk.
    pub more: bool,
}

/// Chains one TX walk takes at most: the queue's size, and never more than this (SPEC.md §11).
pub const TX_WALK_BUDGET: u32 = 1024;
const _: () = assert!(TX_WALK_BUDGET as usize == MAX_QUEUE_SIZE);

/// RX chains one fill (or one delivery from a sender's walk) may take, usable or not. A guest
/// that keeps posting buffers, even unusable ones, never keeps a thread longer than this: the
/// rest is handed back through [`VmPort::request_resume`].
pub const RX_POP_BUDGET: u32 = 1024;
const _: () = assert!(RX_POP_BUDGET as usize == MAX_QUEUE_SIZE);

/// What became of a TX chain the switch routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Disposition {
    /// Finished with: the chain goes back to the sender now.
    Done,
    /// Held for the receiver: the chain goes back when its last byte is delivered.
    Held,
}

/// Why [`Switch::take_tx_chains`] stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WalkStop {
    /// The ring has nothing more (for now): re-arm kicks, or end.
    RingEmpty,
    /// The budget is spent or the reply queue is full: the walk ends here.
    Cut,
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

impl Switch {
    /// Moves the available work of VM `index`'s TX queue, then asks the guest for a kick when
    /// more comes (re-checking the ring, so that no kick is lost).
    pub fn process_tx(&self, index: usize) -> TxReport {
        self.walk_tx(index, true)
    }

    /// Like [`Switch::process_tx`], but leaves the guest's kicks off: for a poll thread that
    /// will look at the ring again anyway.
    pub fn process_tx_polled(&self, index: usize) -> TxReport {
        self.walk_tx(index, false)
    }

    fn walk_tx(&self, index: usize, rearm: bool) -> TxReport {
        let Some(vm) = self.vm(index) else {
            return TxReport::default();
        };
        if !rearm && vm.with_attachment(|a| a.has_avail(TX)) != Some(true) {
            // A poll thread looking at an idle VM: nothing to take, nothing to re-arm. (A walk
            // that stalled on replies left chains behind, so it never ends up here.)
            return TxReport::default();
        }
        self.walk_tx_ring(&vm, rearm)
    }

    /// The walk itself, once there may be work. Never inlined: `ci/perf-gate.sh` counts a poll
    /// thread's instructions from here (and from [`Switch::fill_rx_then_resume_tx`]), so that
    /// the passes that find an idle ring, whose number depends on timing, do not count.
    #[inline(never)]
    fn walk_tx_ring(&self, vm: &VmPort, rearm: bool) -> TxReport {
        let mut report = TxReport::default();
        let mut tx = vm.tx();
        vm.tx_stalled_on_replies.store(false, Ordering::Relaxed);
        let Some(att) = vm.attachment() else {
            return report;
        };
        let mut touched = std::mem::take(&mut tx.touched);
        // One packet parsed into again and again: it is about 1 KiB, too big to move around.
        let mut pkt = TxPacket::default();
        // One guard on guest memory for the whole walk (a memory table sent meanwhile applies
        // from the next walk; the guard keeps the old mapping alive until then).
        let mem = att.memory();
        let budget = u32::from(att.queue_size(TX)).min(TX_WALK_BUDGET);
        loop {
            if let Err(e) = att.disable_kicks(TX) {
                warn_limited!(vm.warn, vm = %vm.config.name, error = %e, "TX queue unusable");
                break;
            }
            let stop =
                self.take_tx_chains(vm, &att, &mem, &mut pkt, budget, &mut touched, &mut report);
            if stop == WalkStop::Cut || !rearm {
                break;
            }
            match att.enable_kicks(TX) {
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) => {
                    warn_limited!(vm.warn, vm = %vm.config.name, error = %e, "TX queue unusable");
                    break;
                }
            }
        }
        if report.chains > report.held {
            // A failure is the frontend's (a broken ring breaks the attachment): nothing to undo.
            let _ = att.notify(TX);
        }
        if report.more && rearm {
            // Kicks stay off: whoever serves the VM comes back for the rest.
            vm.request_resume();
        }
        self.signal_receivers(&touched);
        touched.clear();
        tx.touched = touched;
        report
    }

    /// Takes, checks and routes the chains available in `vm`'s TX ring, up to `budget` for the
    /// walk (counted in `report.chains`) and while the VM's reply queue has room.
    #[allow(clippy::too_many_arguments)]
    fn take_tx_chains(
        &self,
        vm: &VmPort,
        att: &Attachment,
        mem: &MemGuard,
        pkt: &mut TxPacket,
        budget: u32,
        touched: &mut Vec<usize>,
        report: &mut TxReport,
    ) -> WalkStop {
        loop {
            if report.chains >= budget {
                if !att.has_avail(TX) {
                    // Exactly the budget was there: end as any walk ends.
                    return WalkStop::RingEmpty;
                }
                // A guest that refills its ring as fast as it drains never keeps the walk:
                // the rest is handed back, and the next VM gets its turn.
                report.more = true;
                vm.counters.tx_walks_cut.fetch_add(1, Ordering::Relaxed);
                return WalkStop::Cut;
            }
            if !vm.rx().replies.has_room() {
                report.stalled_on_replies = true;
                vm.tx_stalled_on_replies.store(true, Ordering::Release);
                return WalkStop::Cut;
            }
            let Some(chain) = att.pop(TX, mem) else {
                return WalkStop::RingEmpty;
            };
            let head = chain.head_index();
            report.chains += 1;
            vm.counters.tx_packets.fetch_add(1, Ordering::Relaxed);
            if !att.claim_tx(head) {
                // Published again while the device still holds it: no used entry (the first
                // copy gets the one entry), nothing held twice.
                vm.counters
                    .drop_head_in_flight
                    .fetch_add(1, Ordering::Relaxed);
                warn_limited!(vm.warn, vm = %vm.config.name, head, "dropped a TX head published while still in flight");
                continue;
            }
            let disposition = match parse_tx_chain_into(chain, pkt) {
                Ok(()) => self.route(vm, att, mem, pkt, touched),
                Err(e) => {
                    vm.counters.count_malformed(&e);
                    warn_limited!(vm.warn, vm = %vm.config.name, reason = e.reason(), error = %e, "dropped malformed TX chain");
                    Disposition::Done
                }
            };
            if disposition == Disposition::Done {
                // The device writes nothing into TX buffers.
                vm.return_chain(att, mem, TX, head, 0);
            } else {
                report.held += 1;
            }
        }
    }

    /// Routes one valid packet from `vm`: to its host endpoint, to a peer VM, or back as RST.
    // Inlined into the walk, as it was before the walk's loop became its own function: a
    // separate call costs about 13 instructions per packet (`ci/perf-gate.sh`).
    #[inline(always)]
    fn route(
        &self,
        vm: &VmPort,
        att: &Attachment,
        mem: &MemGuard,
        pkt: &TxPacket,
        touched: &mut Vec<usize>,
    ) -> Disposition {
        let h = &pkt.header;
        if pkt.op() == Op::Rw {
            vm.counters
                .tx_bytes
                .fetch_add(u64::from(h.len()), Ordering::Relaxed);
        }
        if h.src_cid() != vm.cid() {
            vm.counters.drop_spoofed_src.fetch_add(1, Ordering::Relaxed);
            warn_limited!(vm.warn, vm = %vm.config.name, src_cid = h.src_cid(), "dropped packet with spoofed source CID");
            return Disposition::Done;
        }
        if h.dst_cid() == HOST_CID {
            self.to_host(vm, mem, pkt);
            return Disposition::Done;
        }
        match self.index_of_cid(h.dst_cid()) {
            Some(to) if self.vm(to).is_some_and(|v| v.is_attached()) => {
                self.to_peer(vm, att, mem, pkt, to, touched)
            }
            _ => {
                // No such VM, or not attached: unreachable.
                vm.counters
                    .drop_peer_unreachable
                    .fetch_add(1, Ordering::Relaxed);
                self.answer_with_rst(vm.index, h, touched);
                Disposition::Done
            }
        }
    }

    /// Hands a packet for CID 2 to `vm`'s host endpoint (SPEC.md §6), under `vm`'s RX lock:
    /// what the endpoint answers goes into the VM's own reply queue.
    fn to_host(&self, vm: &VmPort, mem: &MemGuard, pkt: &TxPacket) {
        let mut rx = vm.rx();
        let (host, mut replies) = rx.host_with_replies(&vm.counters);
        host.on_guest_packet(mem, pkt, &mut replies, &vm.counters);
    }

    /// Sends one valid packet from `vm` to the VM at index `to`, if the connection table lets
    /// it through (SPEC.md §4.1). `touched` collects the VMs whose RX queues changed.
    fn to_peer(
        &self,
        vm: &VmPort,
        att: &Attachment,
        mem: &MemGuard,
        pkt: &TxPacket,
        to: usize,
        touched: &mut Vec<usize>,
    ) -> Disposition {
        let h = &pkt.header;
        // The verdict first, so that the connection table's lock is released before anything
        // below takes another lock (SPEC.md §12): in a `match` on the call itself, the guard
        // would live to the end of the match.
        let verdict = self.peers().on_packet(vm.index, to, h, Instant::now);
        match verdict {
            Verdict::Forward => self.forward(vm, att, mem, pkt, to, touched),
            Verdict::Ignore => {
                vm.counters
                    .drop_no_connection
                    .fetch_add(1, Ordering::Relaxed);
                Disposition::Done
            }
            Verdict::Refuse(why) => {
                count_refusal(&vm.counters, why);
                warn_limited!(vm.warn, vm = %vm.config.name, ?why, dst_cid = h.dst_cid(), dst_port = h.dst_port(), op = h.op_raw(), "refused a packet to a peer VM");
                self.answer_with_rst(vm.index, h, touched);
                Disposition::Done
            }
            Verdict::ResetBoth(why) => {
                count_refusal(&vm.counters, why);
                warn_limited!(vm.warn, vm = %vm.config.name, ?why, dst_cid = h.dst_cid(), dst_port = h.dst_port(), op = h.op_raw(), "reset a connection between VMs");
                self.reset_both(vm.index, to, h, touched);
                Disposition::Done
            }
        }
    }

    /// Copies a forwarded packet into the RX buffers of VM `to` (SPEC.md §4.2), or holds it
    /// there when `to` has none free or older packets wait (SPEC.md §5.3).
    fn forward(
        &self,
        vm: &VmPort,
        att: &Attachment,
        mem: &MemGuard,
        pkt: &TxPacket,
        to: usize,
        touched: &mut Vec<usize>,
    ) -> Disposition {
        let h = &pkt.header;
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
            // Older packets wait for the receiver: this one queues behind them.
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
                &dst,
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
                    hold_for_buffers(vm, att, &dst, &mut rx, pkt, offset);
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
    // Refusals are the rare path: kept out of the forwarding code's way.
    #[cold]
    pub(super) fn answer_with_rst(&self, vm: usize, h: &PacketHeader, touched: &mut Vec<usize>) {
        if let Some(rst) = rst_to_sender(h) {
            self.owe_rst(vm, rst, Cause::Own, touched);
        }
    }

    /// Resets the connection of `h` (a packet from VM `from` to VM `to`) on both sides.
    #[cold]
    fn reset_both(&self, from: usize, to: usize, h: &PacketHeader, touched: &mut Vec<usize>) {
        self.answer_with_rst(from, h, touched);
        self.owe_rst(to, rst_to_receiver(h), Cause::Peer, touched);
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

    /// Gives held chains back to their senders (with nothing delivered) and interrupts them.
    pub(super) fn return_held(&self, held: Vec<Held>) {
        let mut senders: Vec<usize> = Vec::new();
        for h in held {
            let Some(sender) = self.vm(h.sender) else {
                continue;
            };
            sender.held_sub(1);
            let Some(att) = sender
                .attachment()
                .filter(|a| a.generation() == h.generation)
            else {
                continue;
            };
            sender.return_chain(&att, &att.memory(), TX, h.packet.head_index, 0);
            mark(&mut senders, h.sender);
        }
        self.notify_tx(&senders);
    }

    /// Interrupts each of `senders` for its TX used ring (chains of theirs came back).
    pub(super) fn notify_tx(&self, senders: &[usize]) {
        for &s in senders {
            if let Some(vm) = self.vm(s) {
                vm.with_attachment(|a| a.notify(TX));
            }
        }
    }

    /// The end of a walk: interrupts each receiver whose RX queue it wrote into once, and sends
    /// what it is owed (a fill only when something waits: packets delivered directly need
    /// none).
    fn signal_receivers(&self, touched: &[usize]) {
        for &to in touched {
            let Some(receiver) = self.vm(to) else {
                continue;
            };
            let notified = receiver.lock_rx_has_work() && self.fill_rx(to).notified;
            if !notified {
                receiver.with_attachment(|a| a.notify(RX));
            }
        }
    }
}

/// Copies what is left of `packet` (from `*offset` on) from `src_mem` into the RX buffers of
/// `dst`, one piece per buffer. Each piece is the packet's header with its own `len`.
/// The caller holds `dst`'s RX lock (`starved_since` is in it). `pops` is what is left of the
/// caller's budget of RX chains (see [`take_buffer`]).
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

/// Pops the next usable RX buffer into `buf`, ending a wait for buffers if one was running;
/// false when the queue has none, or when `pops` (the caller's budget of RX chains, usable or
/// not) is spent. Unusable chains go back with used length 0.
pub fn take_buffer(
    vm: &VmPort,
    att: &Attachment,
    mem: &MemGuard,
    starved_since: &mut Option<Instant>,
    pops: &mut u32,
    buf: &mut RxBuffer,
) -> bool {
    loop {
        if *pops == 0 {
            return false;
        }
        let Some(chain) = att.pop(RX, mem) else {
            return false;
        };
        *pops -= 1;
        let head = chain.head_index();
        match parse_rx_chain_into(chain, buf) {
            Ok(()) => {
                if let Some(since) = starved_since.take() {
                    let waited = u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX);
                    vm.counters.rx_wait_ns.fetch_add(waited, Ordering::Relaxed);
                }
                return true;
            }
            Err(e) => {
                vm.counters.rx_bad_chain.fetch_add(1, Ordering::Relaxed);
                vm.counters.count_malformed(&e);
                warn_limited!(vm.warn, vm = %vm.config.name, reason = e.reason(), error = %e, "unusable RX buffer");
                vm.return_chain(att, mem, RX, head, 0);
            }
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

/// Holds what is left of `pkt` (from `offset` on) for `dst`, which has no RX buffer free: the
/// wait for buffers starts (for the RX-stall timeout, SPEC.md §5.3) and poll threads watch
/// `dst`'s RX ring.
fn hold_for_buffers(
    sender: &VmPort,
    att: &Attachment,
    dst: &VmPort,
    rx: &mut RxSide,
    pkt: &TxPacket,
    offset: u32,
) {
    rx.start_starving();
    dst.rx_starved.store(true, Ordering::Release);
    dst.counters
        .rx_buffer_stalls
        .fetch_add(1, Ordering::Relaxed);
    hold(sender, att, rx, pkt, offset);
}

/// Queues `pkt` (a reference to the sender's chain, not a copy) in the receiver's inbound
/// queue `rx`.
fn hold(sender: &VmPort, att: &Attachment, rx: &mut RxSide, pkt: &TxPacket, offset: u32) {
    rx.inbound.push(Held {
        sender: sender.index,
        generation: att.generation(),
        packet: pkt.clone(),
        offset,
    });
    sender.held_add(1);
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

/// Counts a packet of `vm` as fully delivered to a peer.
pub fn count_forwarded(vm: &VmPort, h: &PacketHeader) {
    vm.counters.fwd_packets.fetch_add(1, Ordering::Relaxed);
    vm.counters
        .fwd_bytes
        .fetch_add(u64::from(h.len()), Ordering::Relaxed);
}

/// Records that VM `index`'s RX (or TX) queue needs attention at the end of a walk.
pub fn mark(touched: &mut Vec<usize>, index: usize) {
    if !touched.contains(&index) {
        touched.push(index);
    }
}
