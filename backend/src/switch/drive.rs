//! What the daemon's threads call on the switch: a VM's vhost-user worker on kicks
//! ([`Switch::on_kick`], [`Switch::service`], [`Switch::fill_rx_then_resume_tx`]), the host
//! I/O thread on socket events and timeouts ([`Switch::on_host_event`], [`Switch::sweep`]),
//! and the poll engine ([`Switch::set_poll_owners`]). Each call is bounded and never blocks.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use vmm_sys_util::epoll::EventSet;

use super::hub::{PollOwner, Switch};
use super::rx_fill::RxReport;

impl Switch {
    /// Moves all work of VM `index` that is ready: its TX queue, then its RX queue, and the TX
    /// queue once more if a full reply queue had stalled it and the fill made room. Bounded:
    /// what is left after that (a spent budget) comes back through the VM's resume eventfd.
    pub fn service(&self, index: usize) {
        let tx = self.process_tx(index);
        let rx = self.fill_rx(index);
        if tx.stalled_on_replies && rx.replies_sent > 0 {
            self.process_tx(index);
            self.fill_rx(index);
        }
    }

    /// Handles readiness of a host socket of VM `index`.
    pub fn on_host_event(&self, index: usize, id: u64, events: EventSet) {
        let Some(vm) = self.vm(index) else {
            return;
        };
        {
            let mut rx = vm.rx();
            let (host, mut replies) = rx.host_with_replies(&vm.counters);
            host.on_host_event(id, events, &mut replies, &vm.counters);
        }
        self.fill_rx_then_resume_tx(index);
    }

    /// Fills VM `index`'s RX queue. If the fill sent replies while the VM's TX walk was stalled
    /// on a full reply queue, the TX walk is handed back to whoever serves the VM (this path
    /// takes no TX lock). Never inlined: `ci/perf-gate.sh` counts a poll thread's work from
    /// here and from the TX walk.
    #[inline(never)]
    pub fn fill_rx_then_resume_tx(&self, index: usize) -> RxReport {
        let rx = self.fill_rx(index);
        if rx.replies_sent > 0 {
            if let Some(vm) = self.vm(index) {
                if vm.tx_stalled_on_replies.load(Ordering::Acquire) {
                    vm.request_resume();
                }
            }
        }
        rx
    }

    /// Hands the VMs to poll threads: VM *i* to `wakers[i % wakers.len()]`. Called once, by the
    /// poll engine; until then (and in event mode) kicks are served where they arrive.
    pub fn set_poll_owners(&self, wakers: Vec<Arc<dyn PollOwner>>) {
        let _ = self.poll_owners.set(wakers);
    }

    /// A kick of VM `index` arrived (from its vhost-user worker). Counts it; when a poll thread
    /// owns the VM, flags the VM, wakes that thread if it sleeps, and returns `true`: the
    /// caller must not do the work itself.
    pub fn on_kick(&self, index: usize) -> bool {
        let Some(vm) = self.vm(index) else {
            return false;
        };
        vm.counters.kicks_received.fetch_add(1, Ordering::Relaxed);
        let Some(owners) = self.poll_owners.get().filter(|o| !o.is_empty()) else {
            return false;
        };
        owners[index % owners.len()].kick(&vm.kicked);
        true
    }

    /// Expires timed-out host handshakes and connections of every VM, and closed VM-to-VM
    /// connections whose final RST never came; detaches VMs whose queues broke; resets the
    /// connections of VMs that posted no RX buffer while packets waited too long.
    pub fn sweep(&self, now: Instant) {
        let expired = self.peers().sweep(now);
        for vm in expired.initiators.iter().filter_map(|&i| self.vm(i)) {
            vm.counters
                .expired_half_open
                .fetch_add(1, Ordering::Relaxed);
        }
        for peer in self.queue_owed_rsts(expired.rsts) {
            self.fill_rx(peer);
        }
        self.for_each_vm(|vm| {
            self.reset_if_broken(vm.index);
            self.reset_stalled_receiver(vm, now, self.rx_stall_timeout);
            {
                let mut rx = vm.rx();
                let (host, mut replies) = rx.host_with_replies(&vm.counters);
                host.sweep(now, &mut replies);
            }
            self.fill_rx_then_resume_tx(vm.index);
        });
    }
}
