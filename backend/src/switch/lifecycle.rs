//! Attach and detach (SPEC.md §8.3): binding a frontend's rings, and everything a detach owes
//! the other VMs — their held chains back, an RST for every connection with the VM that left,
//! and no trace of its own held chains in their queues.

use super::hub::Switch;
use super::vm_port::VmPort;
use crate::device::DetachReason;
use crate::memory::Vring;

impl Switch {
    /// Binds the rings of VM `index` (called from the vhost-user worker with its vrings).
    pub fn bind(&self, index: usize, vrings: &[Vring]) {
        let Some(vm) = self.vm(index) else {
            return;
        };
        if vm.is_attached() {
            return;
        }
        let bound = {
            let _life = vm.lifecycle();
            vm.bind(vrings)
        };
        if bound {
            tracing::info!(vm = %vm.config.name, cid = vm.cid(), "guest driver attached");
            self.fill_events(index);
        }
    }

    /// Detaches VM `index`: its rings are no longer used, every connection it had is gone, and
    /// every peer it had a connection with gets an RST.
    pub fn detach(&self, index: usize, reason: DetachReason) {
        let Some(vm) = self.vm(index) else {
            return;
        };
        let _life = vm.lifecycle();
        self.detach_locked(&vm, reason);
    }

    /// Detaches VM `index` if one of its queues broke, and keeps it detached until its
    /// frontend resets the device or reconnects (SPEC.md §9.1): its peers get RSTs, its held
    /// chains go back, and no loop ever spins on the broken ring. Call with no lock of the
    /// switch held (the thread's top level). Returns whether it detached the VM.
    pub fn reset_if_broken(&self, index: usize) -> bool {
        let Some(vm) = self.vm(index) else {
            return false;
        };
        if !vm.take_needs_reset() {
            return false;
        }
        // Under the lifecycle lock: a frontend that reset the device meanwhile (detach, then
        // the quarantine lifted) leaves a fresh attachment here, or none, and no quarantine.
        let _life = vm.lifecycle();
        if vm.with_attachment(|a| a.is_broken()) != Some(true) {
            return false;
        }
        vm.quarantine();
        self.detach_locked(&vm, DetachReason::QueueBroken);
        true
    }

    /// [`Switch::detach`] for a caller that holds `vm`'s lifecycle lock.
    fn detach_locked(&self, vm: &VmPort, reason: DetachReason) {
        let index = vm.index;
        let Some(gone) = vm.unbind() else {
            return;
        };
        tracing::info!(vm = %vm.config.name, ?reason, "guest driver detached");
        // Chains other VMs had waiting for this one go back to them, undelivered.
        self.return_held(gone.inbound);
        // This VM's own chains waiting in other VMs' queues belong to rings that are gone.
        self.for_each_vm(|other| {
            other.rx().inbound.remove_sender(index, gone.generation);
        });
        vm.held_sub(usize::MAX);
        let owed = self.peers().detach(index);
        if !owed.is_empty() {
            tracing::info!(vm = %vm.config.name, peers = owed.len(), "reset the connections of peer VMs");
        }
        for peer in self.queue_owed_rsts(owed) {
            self.fill_rx_then_resume_tx(peer);
        }
    }
}
