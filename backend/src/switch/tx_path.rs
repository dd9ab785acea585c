//! The TX path: take every available chain of one VM's TX queue, validate it, and route it.
//!
//! [`Switch::process_tx`] is the unit of work a poller calls: it never blocks, and reports what
//! it did. Every chain it pops goes back to the used ring, valid or not: at once, or, for a
//! packet held for a peer VM that has no RX buffer free, once its last byte is delivered.

use std::sync::atomic::Ordering;

use sockbypass_wire::consts::{HOST_CID, MAX_QUEUE_SIZE};
use sockbypass_wire::{parse_tx_chain_into, Op, TxPacket};

use super::attachment::{Attachment, RX, TX};
use super::peer_path::Disposition;
use super::vm_port::VmPort;
use super::Switch;
use crate::memory::MemGuard;
use crate::warn_limited;

/// What one [`Switch::process_tx`] call did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TxReport {
    /// Chains taken from the TX queue (valid or not).
    pub chains: u32,
    /// Chains rejected as malformed.
    pub malformed: u32,
    /// The walk stopped early because the VM's reply queue was full.
    pub stalled_on_replies: bool,
    /// Chains held for a peer VM that has no RX buffer yet (returned later).
    pub held: u32,
    /// The guest was interrupted for the TX used ring.
    pub notified: bool,
    /// The walk took its budget of chains with more available; the rest was handed back
    /// ([`super::VmPort::request_resume`]) for a later walk.
    pub more: bool,
}

/// Chains one TX walk takes at most: the queue's size, and never more than this (SPEC.md §11).
pub const TX_WALK_BUDGET: u32 = 1024;
const _: () = assert!(TX_WALK_BUDGET as usize == MAX_QUEUE_SIZE);

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
        let mut report = TxReport::default();
        let Some(vm) = self.vm(index) else {
            return report;
        };
        if !rearm && vm.with_attachment(|a| a.has_avail(TX)) != Some(true) {
            // A poll thread looking at an idle VM: nothing to take, nothing to re-arm. (A walk
            // that stalled on replies left chains behind, so it never ends up here.)
            return report;
        }
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
        'walk: loop {
            if let Err(e) = att.disable_kicks(TX) {
                warn_limited!(vm.warn, vm = %vm.config.name, error = %e, "TX queue unusable");
                break;
            }
            loop {
                if report.chains >= budget {
                    if !att.has_avail(TX) {
                        // Exactly the budget was there: end as any walk ends.
                        break;
                    }
                    // A guest that refills its ring as fast as it drains never keeps the walk:
                    // the rest is handed back, and the next VM gets its turn.
                    report.more = true;
                    vm.counters.tx_walks_cut.fetch_add(1, Ordering::Relaxed);
                    break 'walk;
                }
                if !vm.rx().replies.has_room() {
                    report.stalled_on_replies = true;
                    vm.tx_stalled_on_replies.store(true, Ordering::Release);
                    break 'walk;
                }
                let Some(chain) = att.pop(TX, &mem) else {
                    break;
                };
                let head = chain.head_index();
                report.chains += 1;
                vm.counters.tx_packets.fetch_add(1, Ordering::Relaxed);
                if !att.claim_tx(head) {
                    // Published again while the device still holds it: no used entry (the
                    // first copy gets the one entry), nothing held twice.
                    report.malformed += 1;
                    vm.counters
                        .drop_head_in_flight
                        .fetch_add(1, Ordering::Relaxed);
                    warn_limited!(vm.warn, vm = %vm.config.name, head, "dropped a TX head published while still in flight");
                    continue;
                }
                let disposition = match parse_tx_chain_into(chain, &mut pkt) {
                    Ok(()) => self.route(vm, &att, &mem, &pkt, &mut touched),
                    Err(e) => {
                        report.malformed += 1;
                        vm.counters.count_malformed(&e);
                        warn_limited!(vm.warn, vm = %vm.config.name, reason = e.reason(), error = %e, "dropped malformed TX chain");
                        Disposition::Done
                    }
                };
                if disposition == Disposition::Done {
                    // The device writes nothing into TX buffers.
                    vm.return_chain(&att, &mem, TX, head, 0);
                } else {
                    report.held += 1;
                }
            }
            if !rearm {
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
            report.notified = att.notify(TX).unwrap_or(false);
        }
        if report.more && rearm {
            // Kicks stay off: whoever serves the VM comes back for the rest.
            vm.request_resume();
        }
        // Interrupt each receiver once for the whole walk, and send what it was owed (a fill
        // only when something waits: packets delivered directly need none).
        for &to in &touched {
            let Some(receiver) = self.vm(to) else {
                continue;
            };
            let notified = receiver.rx_has_work() && self.fill_rx(to).notified;
            if !notified {
                receiver.with_attachment(|a| a.notify(RX));
            }
        }
        touched.clear();
        tx.touched = touched;
        report
    }

    /// Routes one valid packet from `vm`: to its host endpoint, to a peer VM, or back as RST.
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
            let mut rx = vm.rx();
            let (host, mut replies) = rx.host_with_replies(&vm.counters);
            host.on_guest_packet(mem, pkt, &mut replies, &vm.counters);
            return Disposition::Done;
        }
        match self.index_of_cid(h.dst_cid()) {
            Some(to) if self.vm(to).is_some_and(|v| v.is_attached()) => {
                self.route_to_peer(vm, att, mem, pkt, to, touched)
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
}
