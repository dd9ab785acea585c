//! Error types, one enum per module, each keeping its cause in `#[source]`.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use vm_memory::GuestMemoryError;

use crate::stream::{StreamId, StreamState};

/// Errors of [`crate::guest_memory`].
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// `memfd_create` failed.
    #[error("memfd_create failed")]
    Memfd(#[source] io::Error),
    /// Sizing the memfd failed.
    #[error("resizing the guest memory file to {size} bytes failed")]
    Resize {
        /// Requested size.
        size: u64,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// Mapping the memfd failed.
    #[error("mapping guest memory failed")]
    Map(#[source] vm_memory::mmap::FromRangesError),
    /// The requested layout is empty, unsorted, overlapping or not page-aligned.
    #[error("invalid guest memory layout: {0}")]
    Layout(&'static str),
    /// The allocator has no free block of the requested size and alignment.
    #[error("guest memory exhausted: no free block of {len} bytes aligned to {align}")]
    OutOfMemory {
        /// Requested length.
        len: u64,
        /// Requested alignment.
        align: u64,
    },
    /// An allocation request was malformed (zero length, alignment not a power of two).
    #[error("invalid allocation request: {len} bytes aligned to {align}")]
    BadRequest {
        /// Requested length.
        len: u64,
        /// Requested alignment.
        align: u64,
    },
    /// A range handed back to the allocator overlaps free memory or lies outside guest RAM.
    #[error("freeing {addr:#x}+{len} which is not an allocated range")]
    BadFree {
        /// Start of the range.
        addr: u64,
        /// Length of the range.
        len: u64,
    },
    /// Reading or writing guest memory failed.
    #[error("accessing guest memory at {addr:#x} failed")]
    Access {
        /// Guest-physical address of the access.
        addr: u64,
        /// What vm-memory reported.
        #[source]
        source: GuestMemoryError,
    },
}

/// Errors of [`crate::split_queue`].
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The queue size is zero, above 32768 or not a power of two.
    #[error("invalid queue size {0}")]
    InvalidSize(u16),
    /// Allocating or accessing the ring or a buffer in guest memory failed.
    #[error("guest memory error in the virtqueue")]
    Memory(#[from] MemoryError),
    /// Not enough free descriptors for the chain.
    #[error("virtqueue full: chain needs {needed} descriptors, {free} free")]
    Full {
        /// Descriptors the chain needs.
        needed: usize,
        /// Free descriptors.
        free: usize,
    },
    /// A chain without any buffer.
    #[error("a descriptor chain needs at least one buffer")]
    EmptyChain,
    /// A descriptor index outside the table.
    #[error("descriptor index {index} is outside a table of {size}")]
    BadIndex {
        /// The index.
        index: u16,
        /// The table size.
        size: u16,
    },
    /// The descriptor is not free (for `reserve_descriptor`) or not reserved (for `release`).
    #[error("descriptor {0} is not in the expected state")]
    DescriptorBusy(u16),
    /// Creating, reading, writing or polling an eventfd failed.
    #[error("eventfd operation failed")]
    EventFd(#[source] io::Error),
}

/// Errors of [`crate::vhost_frontend`].
#[derive(Debug, thiserror::Error)]
pub enum FrontendError {
    /// Connecting to the socket failed for good, or did not succeed within the timeout.
    #[error("cannot connect to vhost-user socket {path} within {timeout:?}")]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// How long connecting was retried.
        timeout: Duration,
        /// The last error.
        #[source]
        source: io::Error,
    },
    /// A vhost-user request failed.
    #[error("vhost-user {request} failed")]
    Request {
        /// The request, e.g. `"SET_MEM_TABLE"`.
        request: &'static str,
        /// What the vhost crate reported.
        #[source]
        source: vhost::Error,
    },
    /// The backend does not offer a virtio feature the frontend needs.
    #[error(
        "backend does not offer required virtio feature bit(s) {missing:#x} (offered {offered:#x})"
    )]
    MissingFeature {
        /// Missing bits.
        missing: u64,
        /// Offered bits.
        offered: u64,
    },
    /// The backend does not offer a protocol feature the frontend needs.
    #[error(
        "backend does not offer required protocol feature(s) {missing:#x} (offered {offered:#x})"
    )]
    MissingProtocolFeature {
        /// Missing bits.
        missing: u64,
        /// Offered bits.
        offered: u64,
    },
    /// GET_CONFIG returned the wrong number of bytes.
    #[error("GET_CONFIG returned {got} bytes, expected {expected}")]
    BadConfig {
        /// Bytes expected.
        expected: usize,
        /// Bytes received.
        got: usize,
    },
    /// A queue index outside the device's three queues.
    #[error("queue index {0} is not a vsock queue")]
    BadQueue(usize),
    /// A vring address has no host mapping.
    #[error("vring address cannot be translated")]
    Memory(#[from] MemoryError),
    /// Duplicating an eventfd failed.
    #[error("eventfd operation failed")]
    EventFd(#[source] io::Error),
}

/// Errors of [`crate::vsock_driver`].
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// A virtqueue operation failed.
    #[error("virtqueue error")]
    Queue(#[from] QueueError),
    /// Guest memory could not be allocated or accessed.
    #[error("guest memory error")]
    Memory(#[from] MemoryError),
    /// No stream with this id.
    #[error("unknown stream {0}")]
    UnknownStream(StreamId),
    /// The operation needs another stream state.
    #[error("stream {id} is {state:?}: cannot {op}")]
    BadState {
        /// The stream.
        id: StreamId,
        /// Its state.
        state: StreamState,
        /// What was attempted.
        op: &'static str,
    },
    /// The peer refused the connection (answered REQUEST with RST).
    #[error("connection to {cid}:{port} refused")]
    Refused {
        /// Destination CID.
        cid: u64,
        /// Destination port.
        port: u32,
    },
    /// The stream ended (RST, close, or peer shut down sending) before the expected data came.
    #[error("stream {id} ended in state {state:?} after {got} of {wanted} bytes")]
    Eof {
        /// The stream.
        id: StreamId,
        /// Its state.
        state: StreamState,
        /// Bytes received.
        got: usize,
        /// Bytes wanted.
        wanted: usize,
    },
    /// A local port is already listening or bound to a live stream.
    #[error("port {0} is in use")]
    PortInUse(u32),
    /// No free ephemeral port.
    #[error("no free local port")]
    NoPort,
    /// The port is not listening.
    #[error("port {0} is not listening")]
    NotListening(u32),
    /// The packet does not fit the TX queue or guest memory even when both are empty.
    #[error("packet of {bytes} bytes in {descriptors} descriptors can never fit the TX queue")]
    TooBig {
        /// Bytes in the packet.
        bytes: usize,
        /// Descriptors it needs.
        descriptors: usize,
    },
    /// An invalid TX layout (e.g. zero payload descriptors).
    #[error("invalid TX layout: {0}")]
    BadLayout(&'static str),
    /// A blocking helper ran out of time.
    #[error("timed out after {timeout:?} waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// The timeout.
        timeout: Duration,
    },
}

/// Errors of [`crate::TestVm`].
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// Setting up guest memory failed.
    #[error("guest memory setup failed")]
    Memory(#[from] MemoryError),
    /// A vhost-user step failed.
    #[error("vhost-user frontend error")]
    Frontend(#[from] FrontendError),
    /// The guest driver failed.
    #[error("guest driver error")]
    Driver(#[from] DriverError),
    /// The VM is disconnected from the backend.
    #[error("the VM is disconnected from the backend")]
    Disconnected,
}
