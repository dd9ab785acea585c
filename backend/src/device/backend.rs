//! The narrow interface between one VM's vhost-user device and whatever moves its packets (the
//! switch), as Firecracker's vsock device is separated from its muxer by a backend trait. The
//! device turns vhost-user events into these calls and knows nothing else of the switch.

use vmm_sys_util::eventfd::EventFd;

use crate::failure::Failure;
use crate::memory::{AtomicMem, Vring};

/// Why a VM lost its attachment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DetachReason {
    /// The frontend closed the vhost-user socket.
    Disconnected,
    /// The frontend stopped a ring (GET_VRING_BASE), as QEMU does when the guest resets the
    /// device or shuts down.
    RingStopped,
    /// The frontend sent RESET_DEVICE.
    DeviceReset,
    /// The guest broke a virtqueue (SPEC.md §9.1): the VM stays detached until the frontend
    /// resets the device, stops a ring or reconnects.
    QueueBroken,
    /// The VM was removed from the daemon at run time (`sockbypass vm remove`, a reload).
    Removed,
}

/// What the vhost-user device (and the server thread that runs it) of one VM needs from the
/// switch. Every call is bounded and never blocks; the work it starts may be handed back
/// through [`VsockBackend::resume_fd`].
pub trait VsockBackend: Send + Sync + 'static {
    /// The guest's CID, for the device's config space.
    fn guest_cid(&self) -> u64;

    /// Records the guest memory of a new frontend connection (or forgets it with `None`).
    fn set_memory(&self, mem: Option<AtomicMem>);

    /// Binds the frontend's rings, if the VM is not attached yet and they are live.
    fn attach(&self, vrings: &[Vring]);

    /// Drops the VM's rings: its connections end and its peers get RSTs.
    fn detach(&self, reason: DetachReason);

    /// The frontend reset the device, stopped a ring or reconnected: a VM kept detached for a
    /// broken queue may attach again.
    fn lift_quarantine(&self);

    /// A kick (or a resume) arrived. Counts it; returns `true` when a poll thread owns the VM
    /// and was told, so the caller must not do the work itself.
    fn on_kick(&self) -> bool;

    /// Moves the VM's TX work (and the RX work it makes possible).
    fn on_tx_kick(&self);

    /// Fills the VM's RX queue.
    fn on_rx_kick(&self);

    /// Writes the event the VM is owed, if any, into its event queue.
    fn on_event_kick(&self);

    /// Detaches the VM if one of its queues broke (SPEC.md §9.1). Call with nothing of the
    /// switch held: the top of a thread's work.
    fn reset_if_broken(&self);

    /// The eventfd through which the switch hands back work a budget left; the device's worker
    /// watches it and treats it like a kick.
    fn resume_fd(&self) -> &EventFd;

    /// Where a panicking thread records its failure (the daemon then stops).
    fn failure(&self) -> &Failure;
}
