//! Receivers that post no RX buffer (SPEC.md §5.3): packets held for a VM wait only so long.
//!
//! A held packet keeps its sender's TX descriptors. A Linux guest stops taking packets from its
//! RX queue while the replies it owes cannot be queued (its TX ring is full), so VMs whose TX
//! rings are full of packets held for each other would wait for each other for good — seen in
//! the soak (`ci/soak.sh`) with Linux's 2 s connect timeout under load. A hostile guest that
//! never posts RX buffers would, the same way, keep its peers' TX descriptors until their rings
//! fill. So when packets have waited for a VM for the RX-stall timeout
//! (`--rx-stall-timeout-ms`) with no RX buffer posted, the switch resets every connection that
//! has a packet held for it: an RST to each side, the held chains back to their senders.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use sockbypass_wire::PacketHeader;

use super::hub::Switch;
use super::peer_table::same_connection;
use super::replies::{rst_to_receiver, rst_to_sender, Cause};
use super::vm_port::VmPort;
use crate::warn_limited;

impl Switch {
    /// Resets the connections with packets held for `vm` if they have waited `timeout` or
    /// longer with no RX buffer taken (called from the host thread's sweep, no lock held).
    pub(super) fn reset_stalled_receiver(&self, vm: &VmPort, now: Instant, timeout: Duration) {
        let held = {
            let mut rx = vm.rx();
            let stalled = rx
                .starved_since
                .is_some_and(|since| now.saturating_duration_since(since) >= timeout);
            if !stalled || rx.inbound.is_empty() {
                return;
            }
            // If packets come again, a new wait starts.
            rx.starved_since = None;
            rx.inbound.drain_all()
        };
        let mut conns: Vec<PacketHeader> = Vec::new();
        for h in &held {
            let header = &h.packet.header;
            if !conns.iter().any(|c| same_connection(c, header)) {
                conns.push(*header);
            }
        }
        let mut touched = Vec::new();
        for h in &conns {
            self.peers().forget(h);
            if let (Some(sender), Some(rst)) = (self.index_of_cid(h.src_cid()), rst_to_sender(h)) {
                self.owe_rst(sender, rst, Cause::Peer, &mut touched);
            }
            self.owe_rst(vm.index, rst_to_receiver(h), Cause::Peer, &mut touched);
        }
        vm.counters
            .rx_stall_resets
            .fetch_add(conns.len() as u64, Ordering::Relaxed);
        warn_limited!(vm.warn, vm = %vm.config.name, connections = conns.len(), timeout_ms = timeout.as_millis(), "the guest posted no RX buffer while packets waited: reset their connections");
        self.return_held(held);
        for to in touched {
            self.fill_rx(to);
        }
    }
}
