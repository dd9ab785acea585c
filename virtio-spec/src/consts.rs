//! Numbers fixed by the virtio 1.2 vsock section (§5.10) and by SPEC.md.

/// virtio device id of a socket device.
pub const VIRTIO_ID_VSOCK: u32 = 19;

/// Queue index of the receive queue (device → driver).
pub const RX_QUEUE: usize = 0;
/// Queue index of the transmit queue (driver → device).
pub const TX_QUEUE: usize = 1;
/// Queue index of the event queue (device → driver).
pub const EVENT_QUEUE: usize = 2;
/// Number of virtqueues of the device.
pub const NUM_QUEUES: usize = 3;
/// Largest queue size the device accepts.
pub const MAX_QUEUE_SIZE: usize = 1024;

/// The well-known CID of the host.
pub const HOST_CID: u64 = 2;
/// The lowest CID a guest may have (0 and 1 are reserved, 2 is the host).
pub const MIN_GUEST_CID: u64 = 3;
/// `VMADDR_CID_ANY`: never a valid guest CID.
pub const CID_ANY: u64 = u32::MAX as u64;

/// Size of the packet header in bytes.
pub const HEADER_SIZE: usize = 44;
/// [`HEADER_SIZE`] as the `u32` that lengths on the wire use.
pub const HEADER_LEN: u32 = 44;
/// Largest payload of one packet (Linux's `VIRTIO_VSOCK_MAX_PKT_BUF_SIZE`).
pub const MAX_PAYLOAD: u32 = 64 * 1024;
/// Most descriptors a chain may have; longer chains are malformed.
pub const MAX_SEGMENTS: usize = 64;

/// Socket type: stream.
pub const TYPE_STREAM: u16 = 1;
/// Socket type: seqpacket (planned, not offered).
pub const TYPE_SEQPACKET: u16 = 2;

/// Op: invalid.
pub const OP_INVALID: u16 = 0;
/// Op: connection request.
pub const OP_REQUEST: u16 = 1;
/// Op: connection accepted.
pub const OP_RESPONSE: u16 = 2;
/// Op: connection reset.
pub const OP_RST: u16 = 3;
/// Op: shutdown one or both directions.
pub const OP_SHUTDOWN: u16 = 4;
/// Op: payload.
pub const OP_RW: u16 = 5;
/// Op: unsolicited credit information.
pub const OP_CREDIT_UPDATE: u16 = 6;
/// Op: ask the peer for its credit.
pub const OP_CREDIT_REQUEST: u16 = 7;

/// SHUTDOWN flag: the sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// SHUTDOWN flag: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;
/// Both SHUTDOWN flags.
pub const SHUTDOWN_BOTH: u32 = SHUTDOWN_RCV | SHUTDOWN_SEND;

/// Size of an event-queue record (`struct virtio_vsock_event`).
pub const EVENT_SIZE: usize = 4;
/// [`EVENT_SIZE`] as the `u32` that used lengths take.
pub const EVENT_LEN: u32 = 4;
/// Event id: the transport was reset, all connections are gone.
pub const EVENT_TRANSPORT_RESET: u32 = 0;

/// Feature bit: `VIRTIO_VSOCK_F_SEQPACKET` (planned, not offered).
pub const F_SEQPACKET: u32 = 1;
/// Feature bit: `VIRTIO_RING_F_INDIRECT_DESC`.
pub const F_RING_INDIRECT_DESC: u32 = 28;
/// Feature bit: `VIRTIO_RING_F_EVENT_IDX`.
pub const F_RING_EVENT_IDX: u32 = 29;
/// Feature bit: `VHOST_USER_F_PROTOCOL_FEATURES` (vhost-user only, never seen by the guest).
pub const F_VHOST_USER_PROTOCOL_FEATURES: u32 = 30;
/// Feature bit: `VIRTIO_F_VERSION_1`.
pub const F_VERSION_1: u32 = 32;

/// The virtio feature bits the device offers (SPEC.md §2).
pub const OFFERED_FEATURES: u64 = (1 << F_VERSION_1)
    | (1 << F_RING_EVENT_IDX)
    | (1 << F_RING_INDIRECT_DESC)
    | (1 << F_VHOST_USER_PROTOCOL_FEATURES);
