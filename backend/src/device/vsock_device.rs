//! The `VhostUserBackend` of one VM (SPEC.md §2, §8).
//!
//! It offers the features, answers GET_CONFIG with the VM's `guest_cid`, and turns vhost-user
//! events (kicks, ring stops, resets) into calls of its [`VsockBackend`]. It never returns an error from
//! `handle_event`: that would end the vring worker and silence the VM for good.

use std::io;

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost_user_backend::VhostUserBackend;
use vm_memory::GuestMemoryAtomic;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use sockbypass_wire::consts::{
    EVENT_QUEUE, MAX_QUEUE_SIZE, NUM_QUEUES, OFFERED_FEATURES, RX_QUEUE, TX_QUEUE,
};
use sockbypass_wire::VsockConfigSpace;

use super::backend::{DetachReason, VsockBackend};
use crate::memory::{GuestMem, Vring};

/// The vhost-user protocol features the device offers. CONFIG is required: QEMU's
/// `vhost-user-vsock` and cloud-hypervisor read `guest_cid` through GET_CONFIG.
pub fn protocol_features() -> VhostUserProtocolFeatures {
    VhostUserProtocolFeatures::CONFIG
        | VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::REPLY_ACK
        | VhostUserProtocolFeatures::RESET_DEVICE
}

/// The device of one VM, over its backend `B` (the VM's port on the switch). Cheap to clone: the
/// vhost-user layer clones it per worker thread.
#[derive(Debug, Clone)]
pub struct VsockDevice<B> {
    backend: B,
    guest_cid: u64,
}

/// The worker-loop event of a VM's resume eventfd ([`VsockBackend::resume_fd`]): the first id
/// vhost-user-backend leaves to the backend (ids up to the queue count are its own).
pub const RESUME_EVENT: usize = NUM_QUEUES + 1;

impl<B: VsockBackend> VsockDevice<B> {
    /// The device served by `backend`.
    pub fn new(backend: B) -> Self {
        let guest_cid = backend.guest_cid();
        VsockDevice { backend, guest_cid }
    }
}

impl<B: VsockBackend + Clone> VhostUserBackend for VsockDevice<B> {
    type Bitmap = ();
    type Vring = Vring;

    fn num_queues(&self) -> usize {
        NUM_QUEUES
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        OFFERED_FEATURES
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        protocol_features()
    }

    fn set_event_idx(&self, _enabled: bool) {
        // The vrings track EVENT_IDX themselves; the switch only asks them.
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        VsockConfigSpace {
            guest_cid: self.guest_cid,
        }
        .read(offset, size)
    }

    fn update_memory(&self, _mem: GuestMemoryAtomic<GuestMem>) -> io::Result<()> {
        // The switch already holds this connection's `GuestMemoryAtomic`, which the vhost-user
        // layer updates in place.
        Ok(())
    }

    fn reset_device(&self) {
        self.backend.detach(DetachReason::DeviceReset);
        self.backend.lift_quarantine();
    }

    fn stop_vring(&self, _queue_index: u32) -> io::Result<()> {
        self.backend.detach(DetachReason::RingStopped);
        self.backend.lift_quarantine();
        Ok(())
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        // A fresh pair per worker, so that dropping a connection's daemon ends its worker.
        new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC).ok()
    }

    fn handle_event(
        &self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[Vring],
        _thread_id: usize,
    ) -> io::Result<()> {
        // A panic stops the daemon (see `failure.rs`) instead of silently ending this worker.
        self.backend
            .failure()
            .guard("vring worker", || self.on_event(device_event, vrings));
        Ok(())
    }
}

impl<B: VsockBackend> VsockDevice<B> {
    fn on_event(&self, device_event: u16, vrings: &[Vring]) {
        let event = usize::from(device_event);
        if event == RESUME_EVENT {
            // Non-blocking: an empty counter (someone else read it) is no error.
            let _ = self.backend.resume_fd().read();
        }
        self.backend.attach(vrings);
        if (event < NUM_QUEUES || event == RESUME_EVENT) && self.backend.on_kick() {
            // A poll thread owns this VM: it was told, and does the work.
            return;
        }
        match event {
            TX_QUEUE => self.backend.on_tx_kick(),
            RX_QUEUE => self.backend.on_rx_kick(),
            EVENT_QUEUE => self.backend.on_event_kick(),
            RESUME_EVENT => {
                self.backend.on_tx_kick();
                self.backend.on_event_kick();
            }
            other => tracing::debug!(event = other, "ignoring unknown device event"),
        }
        self.backend.reset_if_broken();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_a_required_protocol_feature() {
        assert!(protocol_features().contains(VhostUserProtocolFeatures::CONFIG));
    }
}
