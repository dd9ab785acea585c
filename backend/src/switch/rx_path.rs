//! The RX path: write what the device owes a guest into the guest's RX buffers.
//!
//! Sources, in order: the reply queue (refusals, RSTs) first, then packets from peer VMs and
//! host connections, taking turns when both have data. A chain that cannot hold a packet is
//! returned with used length 0 and counted.

use std::sync::atomic::Ordering;

use std::time::Instant;

use sockbypass_wire::consts::MAX_QUEUE_SIZE;
use sockbypass_wire::{parse_rx_chain_into, PacketHeader, RxBuffer};

use super::attachment::{Attachment, RX, TX};
use super::inbound::Held;
use super::peer_path::{count_forwarded, deliver, mark, rst_towards_destination, Progress};
use super::peer_table::OwedRst;
use super::replies::Cause;
use super::vm_port::{RxSide, VmPort};
use super::Switch;
use crate::memory::MemGuard;
use crate::warn_limited;

/// What one [`Switch::fill_rx`] call did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RxReport {
    /// Packets written into the RX queue.
    pub packets: u32,
    /// Of those, replies from the reply queue.
    pub replies_sent: u32,
    /// The device had something to send but no RX buffer.
    pub out_of_buffers: bool,
    /// The guest was interrupted for the RX used ring.
    pub notified: bool,
    /// The budget of RX chains was spent with work left; the rest was handed back
    /// ([`VmPort::request_resume`]).
    pub more: bool,
}

/// Which source gets the next RX buffer.
enum Source {
    Reply,
    Peer,
    Host,
}

/// RX chains one fill (or one delivery from a sender's walk) may take, usable or not. A guest
/// that keeps posting buffers, even unusable ones, never keeps a thread longer than this: the
/// rest is handed back through [`VmPort::request_resume`].
pub const RX_POP_BUDGET: u32 = 1024;
const _: () = assert!(RX_POP_BUDGET as usize == MAX_QUEUE_SIZE);

impl Switch {
    /// Delivers what VM `index` is owed into its RX queue, as far as buffers (and the budget
    /// of RX chains) allow.
    pub fn fill_rx(&self, index: usize) -> RxReport {
        let mut report = RxReport::default();
        let Some(vm) = self.vm(index) else {
            return report;
        };
        let mut owed: Vec<OwedRst> = Vec::new();
        let mut dropped: Vec<Held> = Vec::new();
        let mut rx = vm.rx();
        let Some(att) = vm.attachment() else {
            return report;
        };
        let mem = att.memory();
        let before = vm.counters.rx_packets.load(Ordering::Relaxed);
        let mut host_idle = false;
        let mut starved = false;
        let mut pops = RX_POP_BUDGET;
        let mut rearmed = false;
        loop {
            let source = {
                let has_host = !host_idle && rx.host.has_work_for_guest();
                let has_peer = !rx.inbound.is_empty();
                if !rx.replies.is_empty() {
                    Source::Reply
                } else if has_peer && has_host {
                    rx.host_turn = !rx.host_turn;
                    if rx.host_turn {
                        Source::Host
                    } else {
                        Source::Peer
                    }
                } else if has_peer {
                    Source::Peer
                } else if has_host {
                    Source::Host
                } else {
                    break;
                }
            };
            let progressed = match source {
                Source::Reply => fill_reply(vm, &att, &mem, &mut rx, &mut pops, &mut report),
                Source::Host => fill_host(vm, &att, &mem, &mut rx, &mut pops, &mut host_idle),
                Source::Peer => {
                    self.fill_peer(vm, &att, &mem, &mut rx, &mut pops, &mut owed, &mut dropped)
                }
            };
            if progressed {
                continue;
            }
            if pops == 0 {
                // The budget is spent with work left: come back later, not now.
                report.more = true;
                break;
            }
            report.out_of_buffers = true;
            vm.counters.rx_buffer_stalls.fetch_add(1, Ordering::Relaxed);
            rx.start_starving();
            // Ask for a kick when buffers come; if some came meanwhile, look once more.
            match att.enable_kicks(RX) {
                Ok(true) if !rearmed => rearmed = true,
                Ok(true) => {
                    // Buffers keep coming as fast as they go: finish later.
                    report.more = true;
                    break;
                }
                _ => {
                    starved = true;
                    break;
                }
            }
        }
        vm.rx_starved.store(starved, Ordering::Release);
        // Only vring locks inside: allowed under the RX lock, and the list keeps its allocation.
        self.notify_tx(&rx.senders_done);
        rx.senders_done.clear();
        let delivered = vm.counters.rx_packets.load(Ordering::Relaxed) - before;
        report.packets = u32::try_from(delivered).unwrap_or(u32::MAX);
        drop(rx);
        if report.packets > 0 {
            report.notified = att.notify(RX).unwrap_or(false);
        }
        if report.more {
            vm.request_resume();
        }
        self.return_held(dropped);
        if !owed.is_empty() {
            // Only fills: the caller may hold a TX lock, and fills take none.
            for vm in self.queue_owed_rsts(owed) {
                self.fill_rx(vm);
            }
        }
        report
    }

    /// Delivers the packet at the front of the inbound queue (or as much of it as buffers
    /// allow). Returns `false` when no RX buffer was free.
    #[allow(clippy::too_many_arguments)]
    fn fill_peer(
        &self,
        vm: &VmPort,
        att: &Attachment,
        mem: &MemGuard,
        rx: &mut RxSide,
        pops: &mut u32,
        owed: &mut Vec<OwedRst>,
        dropped: &mut Vec<Held>,
    ) -> bool {
        let Some(front) = rx.inbound.front_mut() else {
            return true;
        };
        let (sender_index, generation) = (front.sender, front.generation);
        let Some(sender) = self.vm(sender_index) else {
            rx.inbound.pop();
            return true;
        };
        let satt = sender.attachment().filter(|a| a.generation() == generation);
        let Some(satt) = satt else {
            // The sender went away: its chain has no ring to go back to.
            rx.inbound.pop();
            sender.held_sub(1);
            return true;
        };
        let smem = satt.memory();
        let RxSide {
            inbound,
            starved_since,
            ..
        } = rx;
        let Some(front) = inbound.front_mut() else {
            return true;
        };
        let progress = deliver(
            vm,
            att,
            mem,
            starved_since,
            pops,
            &smem,
            &front.packet,
            &mut front.offset,
        );
        let head = front.packet.head_index;
        let header = front.packet.header;
        match progress {
            Progress::NoBuffer => return false,
            Progress::Complete => count_forwarded(sender, &header),
            Progress::Failed => {}
        }
        rx.inbound.pop();
        sender.held_sub(1);
        sender.return_chain(&satt, &smem, TX, head, 0);
        mark(&mut rx.senders_done, sender_index);
        if progress == Progress::Failed {
            // The connection is gone: an RST to each side.
            self.peers().forget(&header);
            if let Some(rst) = header.rst_reply() {
                owed.push(OwedRst {
                    vm: sender_index,
                    header: rst,
                });
            }
            rx.owe_rst(
                rst_towards_destination(&header),
                Cause::Peer,
                &vm.counters,
                dropped,
            );
        }
        true
    }

    /// Interrupts each of `senders` for its TX used ring (chains of theirs came back).
    pub(super) fn notify_tx(&self, senders: &[usize]) {
        for &s in senders {
            if let Some(vm) = self.vm(s) {
                vm.with_attachment(|a| a.notify(TX));
            }
        }
    }
}

/// Delivers the next reply. Returns `false` when no RX buffer was free.
fn fill_reply(
    vm: &VmPort,
    att: &Attachment,
    mem: &MemGuard,
    rx: &mut RxSide,
    pops: &mut u32,
    report: &mut RxReport,
) -> bool {
    let mut buf = RxBuffer::default();
    if !take_buffer(vm, att, mem, &mut rx.starved_since, pops, &mut buf) {
        return false;
    };
    if let Some(hdr) = rx.replies.pop() {
        if deliver_header(vm, att, mem, &buf, &hdr, 0) {
            report.replies_sent += 1;
        }
    } else {
        att.unpop(RX);
    }
    true
}

/// Delivers the next host packet. Returns `false` when no RX buffer was free.
fn fill_host(
    vm: &VmPort,
    att: &Attachment,
    mem: &MemGuard,
    rx: &mut RxSide,
    pops: &mut u32,
    host_idle: &mut bool,
) -> bool {
    let mut buf = RxBuffer::default();
    if !take_buffer(vm, att, mem, &mut rx.starved_since, pops, &mut buf) {
        return false;
    };
    match rx.host.next_packet_for_guest(mem, &buf, &vm.counters) {
        Some((hdr, len)) => {
            deliver_header(vm, att, mem, &buf, &hdr, len);
        }
        None => {
            att.unpop(RX);
            *host_idle = true;
        }
    }
    true
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

/// Writes `hdr` (its payload of `len` bytes is already in place) and returns the buffer.
fn deliver_header(
    vm: &VmPort,
    att: &Attachment,
    mem: &MemGuard,
    buf: &RxBuffer,
    hdr: &PacketHeader,
    len: u32,
) -> bool {
    let mut hdr = *hdr;
    hdr.set_len(len);
    let used = match buf.write_header(&**mem, &hdr) {
        Ok(()) => RxBuffer::used_len(len),
        Err(e) => {
            warn_limited!(vm.warn, vm = %vm.config.name, error = %e, "cannot write RX header");
            0
        }
    };
    if !vm.return_chain(att, mem, RX, buf.head_index, used) || used == 0 {
        return false;
    }
    vm.counters.rx_packets.fetch_add(1, Ordering::Relaxed);
    vm.counters
        .rx_bytes
        .fetch_add(u64::from(len), Ordering::Relaxed);
    true
}
