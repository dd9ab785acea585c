//! One VM's port on the switch as its vhost-user device sees it: [`SwitchPort`] implements the
//! device's narrow interface ([`VsockBackend`]) with the switch's calls for that VM, and is
//! all the device knows of the switch.

use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use super::hub::Switch;
use super::vm_port::VmPort;
use crate::device::{DetachReason, VsockBackend};
use crate::failure::Failure;
use crate::memory::{AtomicMem, Vring};

/// VM `index` of a switch, for its device. Cheap to clone (one reference count).
#[derive(Debug, Clone)]
pub struct SwitchPort {
    switch: Arc<Switch>,
    vm: Arc<VmPort>,
}

impl SwitchPort {
    /// The port of the VM at switch index `index`, if there is one.
    pub fn new(switch: &Arc<Switch>, index: usize) -> Option<Self> {
        Some(SwitchPort {
            switch: switch.clone(),
            vm: switch.vm(index)?,
        })
    }

    /// The ports of every VM of `switch`, in configuration order.
    pub fn all(switch: &Arc<Switch>) -> Vec<Self> {
        switch
            .vms()
            .iter()
            .map(|vm| SwitchPort {
                switch: switch.clone(),
                vm: vm.clone(),
            })
            .collect()
    }
}

impl VsockBackend for SwitchPort {
    fn guest_cid(&self) -> u64 {
        self.vm.cid()
    }

    fn set_memory(&self, mem: Option<AtomicMem>) {
        self.vm.set_memory(mem);
    }

    fn attach(&self, vrings: &[Vring]) {
        self.switch.bind(self.vm.index, vrings);
    }

    fn detach(&self, reason: DetachReason) {
        self.switch.detach(self.vm.index, reason);
    }

    fn lift_quarantine(&self) {
        self.vm.lift_quarantine();
    }

    fn on_kick(&self) -> bool {
        self.switch.on_kick(self.vm.index)
    }

    fn on_tx_kick(&self) {
        self.switch.service(self.vm.index);
    }

    fn on_rx_kick(&self) {
        self.switch.fill_rx_then_resume_tx(self.vm.index);
    }

    fn on_event_kick(&self) {
        self.switch.fill_events(self.vm.index);
    }

    fn reset_if_broken(&self) {
        self.switch.reset_if_broken(self.vm.index);
    }

    fn resume_fd(&self) -> &EventFd {
        self.vm.resume_fd()
    }

    fn failure(&self) -> &Failure {
        self.switch.failure()
    }
}
