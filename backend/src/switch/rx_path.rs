//! The RX path: write what the device owes a guest into the guest's RX buffers.
//!
//! Sources, in order: the reply queue (refusals, RSTs), then host connections round-robin.
//! A chain that cannot hold a packet is returned with used length 0 and counted.

use std::sync::atomic::Ordering;

use sockbypass_wire::{parse_rx_chain, PacketHeader, RxBuffer};

use super::attachment::{Attachment, RX};
use super::vm_port::{RxSide, VmPort};
use super::Switch;
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
}

impl Switch {
    /// Delivers what VM `index` is owed into its RX queue, as far as buffers allow.
    pub fn fill_rx(&self, index: usize) -> RxReport {
        let mut report = RxReport::default();
        let Some(vm) = self.vm(index) else {
            return report;
        };
        let mut rx = vm.rx();
        let Some(att) = vm.attachment() else {
            return report;
        };
        let mem = att.memory();
        loop {
            let RxSide { replies, host } = &mut *rx;
            if replies.is_empty() && !host.has_work_for_guest() {
                break;
            }
            let Some(buf) = next_buffer(vm, &att) else {
                report.out_of_buffers = true;
                vm.counters.rx_buffer_stalls.fetch_add(1, Ordering::Relaxed);
                // Ask for a kick when buffers come; if some came meanwhile, go on.
                match att.enable_kicks(RX) {
                    Ok(true) => continue,
                    _ => break,
                }
            };
            if let Some(hdr) = replies.pop() {
                if deliver(vm, &att, &buf, &hdr, 0) {
                    report.packets += 1;
                    report.replies_sent += 1;
                }
                continue;
            }
            match host.next_packet_for_guest(&mem, &buf, &vm.counters) {
                Some((hdr, len)) => {
                    if deliver(vm, &att, &buf, &hdr, len) {
                        report.packets += 1;
                    }
                }
                None => {
                    att.unpop(RX);
                    break;
                }
            }
        }
        if report.packets > 0 {
            report.notified = att.notify(RX).unwrap_or(false);
        }
        report
    }
}

/// Pops the next usable RX buffer. Unusable chains go back with used length 0.
fn next_buffer(vm: &VmPort, att: &Attachment) -> Option<RxBuffer> {
    loop {
        let chain = att.pop(RX)?;
        let head = chain.head_index();
        match parse_rx_chain(chain) {
            Ok(buf) => return Some(buf),
            Err(e) => {
                vm.counters.rx_bad_chain.fetch_add(1, Ordering::Relaxed);
                vm.counters.count_malformed(&e);
                warn_limited!(vm.warn, vm = %vm.config.name, reason = e.reason(), error = %e, "unusable RX buffer");
                if let Err(e) = att.add_used(RX, head, 0) {
                    warn_limited!(vm.warn, vm = %vm.config.name, error = %e, "cannot return RX chain");
                }
            }
        }
    }
}

/// Writes `hdr` (its payload of `len` bytes is already in place) and returns the buffer.
fn deliver(vm: &VmPort, att: &Attachment, buf: &RxBuffer, hdr: &PacketHeader, len: u32) -> bool {
    let mem = att.memory();
    let mut hdr = *hdr;
    hdr.set_len(len);
    let used = match buf.write_header(&*mem, &hdr) {
        Ok(()) => RxBuffer::used_len(len),
        Err(e) => {
            warn_limited!(vm.warn, vm = %vm.config.name, error = %e, "cannot write RX header");
            0
        }
    };
    if let Err(e) = att.add_used(RX, buf.head_index, used) {
        warn_limited!(vm.warn, vm = %vm.config.name, error = %e, "cannot return RX chain");
        return false;
    }
    if used == 0 {
        return false;
    }
    vm.counters.rx_packets.fetch_add(1, Ordering::Relaxed);
    vm.counters
        .rx_bytes
        .fetch_add(u64::from(len), Ordering::Relaxed);
    true
}
