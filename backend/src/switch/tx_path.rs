//! The TX path: take every available chain of one VM's TX queue, validate it, and route it.
//!
//! [`Switch::process_tx`] is the unit of work a poller calls: it never blocks, and reports what
//! it did. Every chain it pops goes back to the used ring, valid or not.

use std::sync::atomic::Ordering;

use sockbypass_wire::consts::HOST_CID;
use sockbypass_wire::{parse_tx_chain, Op, TxPacket};

use super::attachment::{Attachment, MemGuard, TX};
use super::vm_port::{RxSide, VmPort};
use super::Switch;
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
    /// The guest was interrupted for the TX used ring.
    pub notified: bool,
}

impl Switch {
    /// Moves the available work of VM `index`'s TX queue.
    pub fn process_tx(&self, index: usize) -> TxReport {
        let mut report = TxReport::default();
        let Some(vm) = self.vm(index) else {
            return report;
        };
        let mut tx = vm.tx();
        tx.stalled_on_replies = false;
        let Some(att) = vm.attachment() else {
            return report;
        };
        'walk: loop {
            if let Err(e) = att.disable_kicks(TX) {
                warn_limited!(vm.warn, vm = %vm.config.name, error = %e, "TX queue unusable");
                break;
            }
            loop {
                if !vm.rx().replies.has_room() {
                    report.stalled_on_replies = true;
                    tx.stalled_on_replies = true;
                    break 'walk;
                }
                let Some(chain) = att.pop(TX) else {
                    break;
                };
                let head = chain.head_index();
                let mem = att.memory();
                report.chains += 1;
                vm.counters.tx_packets.fetch_add(1, Ordering::Relaxed);
                match parse_tx_chain(chain) {
                    Ok(pkt) => self.route(vm, &mem, &pkt),
                    Err(e) => {
                        report.malformed += 1;
                        vm.counters.count_malformed(&e);
                        warn_limited!(vm.warn, vm = %vm.config.name, reason = e.reason(), error = %e, "dropped malformed TX chain");
                    }
                }
                give_back(vm, &att, head);
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
        if report.chains > 0 {
            report.notified = att.notify(TX).unwrap_or(false);
        }
        report
    }

    /// Routes one valid packet from `vm`.
    fn route(&self, vm: &VmPort, mem: &MemGuard, pkt: &TxPacket) {
        let h = &pkt.header;
        if pkt.op() == Op::Rw {
            vm.counters
                .tx_bytes
                .fetch_add(u64::from(h.len()), Ordering::Relaxed);
        }
        if h.src_cid() != vm.cid() {
            vm.counters.drop_spoofed_src.fetch_add(1, Ordering::Relaxed);
            warn_limited!(vm.warn, vm = %vm.config.name, src_cid = h.src_cid(), "dropped packet with spoofed source CID");
            return;
        }
        let mut rx = vm.rx();
        let RxSide { replies, host } = &mut *rx;
        if h.dst_cid() == HOST_CID {
            host.on_guest_packet(mem, pkt, replies, &vm.counters);
        } else {
            // Guest-to-guest switching is not wired yet: every other CID is unreachable.
            if h.op() != Some(Op::Rst) {
                vm.counters.rst_sent.fetch_add(1, Ordering::Relaxed);
            }
            replies.rst_for(h);
        }
    }
}

/// Returns a TX chain to the guest. The device writes nothing into TX buffers.
fn give_back(vm: &VmPort, att: &Attachment, head: u16) {
    if let Err(e) = att.add_used(TX, head, 0) {
        warn_limited!(vm.warn, vm = %vm.config.name, error = %e, "cannot return TX chain");
    }
}
