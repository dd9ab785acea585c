//! Filling one VM's RX queue with what the device owes it (SPEC.md §5.3, §6, §10).
//!
//! Sources, in order: the reply queue (refusals, RSTs) first, then packets from peer VMs held
//! for this VM's RX buffers and host connections, taking turns when both have data. A held
//! packet is finished with the same copy the TX walk uses ([`deliver`], `packet_path.rs`). A
//! chain that cannot hold a packet is returned with used length 0 and counted.

use std::sync::atomic::Ordering;

use sockbypass_wire::{PacketHeader, RxBuffer};

use super::attachment::{Attachment, RX, TX};
use super::hub::Switch;
use super::inbound::Held;
use super::packet_path::{count_forwarded, deliver, mark, take_buffer, Progress, RX_POP_BUDGET};
use super::peer_table::OwedRst;
use super::replies::{rst_to_receiver, rst_to_sender, Cause};
use super::vm_port::{RxSide, VmPort};
use crate::memory::MemGuard;
use crate::warn_limited;

/// What one [`Switch::fill_rx`] call did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RxReport {
    /// Packets written into the RX queue.
    pub packets: u32,
    /// Of those, replies from the reply queue.
    pub replies_sent: u32,
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

/// What a fill does when a source found no RX buffer.
enum OutOfBuffers {
    /// Buffers came while kicks were re-armed: look once more.
    LookAgain,
    /// Stop; the rest is handed back for later.
    Later,
    /// Stop and wait for the guest's kick (the VM is starved).
    WaitForKick,
}

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
        while let Some(source) = next_source(&mut rx, host_idle) {
            let progressed = match source {
                Source::Reply => fill_reply(&vm, &att, &mem, &mut rx, &mut pops, &mut report),
                Source::Host => fill_host(&vm, &att, &mem, &mut rx, &mut pops, &mut host_idle),
                Source::Peer => {
                    self.fill_held(&vm, &att, &mem, &mut rx, &mut pops, &mut owed, &mut dropped)
                }
            };
            if progressed {
                continue;
            }
            match out_of_buffers(&vm, &att, &mut rx, pops, &mut rearmed, &mut report) {
                OutOfBuffers::LookAgain => {}
                OutOfBuffers::Later => break,
                OutOfBuffers::WaitForKick => {
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
    fn fill_held(
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
            Progress::Complete => count_forwarded(&sender, &header),
            Progress::Failed => {}
        }
        rx.inbound.pop();
        sender.held_sub(1);
        sender.return_chain(&satt, &smem, TX, head, 0);
        mark(&mut rx.senders_done, sender_index);
        if progress == Progress::Failed {
            // The connection is gone: an RST to each side.
            self.peers().forget(&header);
            if let Some(rst) = rst_to_sender(&header) {
                owed.push(OwedRst {
                    vm: sender_index,
                    header: rst,
                });
            }
            rx.owe_rst(rst_to_receiver(&header), Cause::Peer, &vm.counters, dropped);
        }
        true
    }
}

/// The source that gets the next RX buffer, or `None` when nothing waits (host connections
/// count as waiting until one fill found them idle).
fn next_source(rx: &mut RxSide, host_idle: bool) -> Option<Source> {
    let has_host = !host_idle && rx.host.has_work_for_guest();
    let has_peer = !rx.inbound.is_empty();
    if !rx.replies.is_empty() {
        Some(Source::Reply)
    } else if has_peer && has_host {
        rx.host_turn = !rx.host_turn;
        Some(if rx.host_turn {
            Source::Host
        } else {
            Source::Peer
        })
    } else if has_peer {
        Some(Source::Peer)
    } else if has_host {
        Some(Source::Host)
    } else {
        None
    }
}

/// A source found no RX buffer: with the budget spent, come back later; otherwise count the
/// stall, start the wait, and ask for a kick when buffers come (looking once more if some came
/// meanwhile).
fn out_of_buffers(
    vm: &VmPort,
    att: &Attachment,
    rx: &mut RxSide,
    pops: u32,
    rearmed: &mut bool,
    report: &mut RxReport,
) -> OutOfBuffers {
    if pops == 0 {
        // The budget is spent with work left: come back later, not now.
        report.more = true;
        return OutOfBuffers::Later;
    }
    vm.counters.rx_buffer_stalls.fetch_add(1, Ordering::Relaxed);
    rx.start_starving();
    match att.enable_kicks(RX) {
        Ok(true) if !*rearmed => {
            *rearmed = true;
            OutOfBuffers::LookAgain
        }
        Ok(true) => {
            // Buffers keep coming as fast as they go: finish later.
            report.more = true;
            OutOfBuffers::Later
        }
        _ => OutOfBuffers::WaitForKick,
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
