//! The event-queue record (virtio 1.2 §5.10.6.5).

use vm_memory::{ByteValued, Le32};

use crate::consts::EVENT_TRANSPORT_RESET;

/// `struct virtio_vsock_event`: a 4-byte event id, written into an event-queue buffer.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct VsockEvent {
    id: Le32,
}

// SAFETY: `VsockEvent` is `repr(C)`, has no padding and any bit pattern is a valid value.
unsafe impl ByteValued for VsockEvent {}

impl VsockEvent {
    /// The `TRANSPORT_RESET` event: the driver must drop every connection.
    pub fn transport_reset() -> Self {
        VsockEvent {
            id: Le32::from(EVENT_TRANSPORT_RESET),
        }
    }

    /// The event id.
    pub fn id(&self) -> u32 {
        self.id.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_reset_is_four_zero_bytes() {
        let ev = VsockEvent::transport_reset();
        assert_eq!(ev.as_slice(), &[0, 0, 0, 0]);
        assert_eq!(ev.id(), EVENT_TRANSPORT_RESET);
    }
}
