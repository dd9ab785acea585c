//! Validating descriptor chains into packets (TX) and buffers (RX).
//!
//! Each check has its own [`ChainError`] variant, carrying the bad value, so a drop can be
//! counted per reason and logged with what was wrong (SPEC.md §9). A failed parse never
//! consumes the chain: the caller still owns the head index and must return it to the used ring.

use std::ops::Deref;

use virtio_queue::DescriptorChain;
use vm_memory::{GuestAddress, GuestMemory, Permissions};

use crate::consts::{EVENT_SIZE, HEADER_LEN, HEADER_SIZE, MAX_PAYLOAD, MAX_SEGMENTS, TYPE_STREAM};
use crate::header::{Op, PacketHeader};
use crate::segments::{region_of, SegmentError, Segments};

/// Why a descriptor chain was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// The chain has no descriptors (a bad head index or descriptor table).
    #[error("descriptor chain is empty")]
    Empty,
    /// The chain is shorter than the 44-byte header.
    #[error("descriptor chain holds {len} bytes, less than the {need}-byte header")]
    TooShort {
        /// Bytes in the chain.
        len: u32,
        /// Bytes needed.
        need: usize,
    },
    /// A TX descriptor is write-only.
    #[error("descriptor {position} of a TX chain is write-only")]
    WriteOnlyInTx {
        /// Position of the descriptor in the chain.
        position: usize,
    },
    /// An RX descriptor is read-only.
    #[error("descriptor {position} of an RX chain is read-only")]
    ReadOnlyInRx {
        /// Position of the descriptor in the chain.
        position: usize,
    },
    /// A descriptor points outside guest memory.
    #[error("descriptor {position} points outside guest memory ({addr:#x}+{len})")]
    OutsideMemory {
        /// Position of the descriptor in the chain.
        position: usize,
        /// Guest address in the descriptor.
        addr: u64,
        /// Length in the descriptor.
        len: u32,
    },
    /// The chain has too many descriptors, or lengths that overflow.
    #[error("descriptor chain is malformed")]
    Segments(#[source] SegmentError),
    /// The header says more payload than the device accepts in one packet.
    #[error("header len {len} is over the {max}-byte maximum")]
    LenOverMax {
        /// `len` from the header.
        len: u32,
        /// The cap, [`MAX_PAYLOAD`].
        max: u32,
    },
    /// The header says more payload than the chain holds.
    #[error("header len {len} is larger than the {available} payload bytes in the chain")]
    LenOverChain {
        /// `len` from the header.
        len: u32,
        /// Payload bytes the chain holds after the header.
        available: u32,
    },
    /// A packet other than RW carries payload.
    #[error("op {op} carries {len} payload bytes; only RW may")]
    PayloadOnControl {
        /// Raw op.
        op: u16,
        /// `len` from the header.
        len: u32,
    },
    /// The op is `INVALID` or unknown.
    #[error("unknown op {op}")]
    UnknownOp {
        /// Raw op.
        op: u16,
    },
    /// The socket type is not stream.
    #[error("unsupported socket type {type_}")]
    UnknownType {
        /// Raw type.
        type_: u16,
    },
}

impl ChainError {
    /// A short, stable name for the reason, used for counters and rate-limited logs.
    pub fn reason(&self) -> &'static str {
        match self {
            ChainError::Empty => "empty_chain",
            ChainError::TooShort { .. } => "short_chain",
            ChainError::WriteOnlyInTx { .. } | ChainError::ReadOnlyInRx { .. } => "flag_mismatch",
            ChainError::OutsideMemory { .. } => "outside_memory",
            ChainError::Segments(_) => "bad_chain",
            ChainError::LenOverMax { .. } => "len_over_max",
            ChainError::LenOverChain { .. } => "len_over_chain",
            ChainError::PayloadOnControl { .. } => "payload_on_control",
            ChainError::UnknownOp { .. } => "unknown_op",
            ChainError::UnknownType { .. } => "unknown_type",
        }
    }
}

/// A validated TX packet: a private copy of the header plus the guest buffers of the payload.
///
/// It is about 1 KiB (the segment list is inline), so the hot path parses into one it reuses
/// ([`parse_tx_chain_into`]) rather than moving packets around.
#[derive(Clone, Debug, Default)]
pub struct TxPacket {
    /// Head index of the chain, for the used ring.
    pub head_index: u16,
    /// The header, copied out of guest memory.
    pub header: PacketHeader,
    /// Exactly `header.len()` bytes of payload, still in guest memory.
    pub payload: Segments,
}

impl TxPacket {
    /// The op (validated, so always known).
    pub fn op(&self) -> Op {
        // parse_tx_chain rejected unknown ops, so the fallback is never taken.
        self.header.op().unwrap_or(Op::Rst)
    }
}

/// A validated RX buffer: write-only guest buffers with room for a header and some payload.
#[derive(Clone, Debug, Default)]
pub struct RxBuffer {
    /// Head index of the chain, for the used ring.
    pub head_index: u16,
    /// The whole buffer space, header first.
    pub space: Segments,
}

impl RxBuffer {
    /// How many payload bytes fit after the header.
    pub fn payload_capacity(&self) -> u32 {
        self.space.len().saturating_sub(HEADER_LEN)
    }

    /// Writes `header` at the start of the buffer.
    pub fn write_header<M: GuestMemory + ?Sized>(
        &self,
        mem: &M,
        header: &PacketHeader,
    ) -> Result<(), SegmentError> {
        self.space
            .write_bytes(mem, 0, vm_memory::ByteValued::as_slice(header))
    }

    /// The payload area: `len` bytes after the header.
    pub fn payload(&self, len: u32) -> Result<Segments, SegmentError> {
        self.space.window(HEADER_LEN, len)
    }

    /// Bytes the device reports as used for a packet with `payload_len` bytes of payload.
    pub fn used_len(payload_len: u32) -> u32 {
        HEADER_LEN + payload_len
    }
}

/// Fills `segs` (cleared first) with the chain's buffers, all read-only or all write-only.
fn collect<M>(
    chain: &mut DescriptorChain<M>,
    writable: bool,
    segs: &mut Segments,
) -> Result<(), ChainError>
where
    M: Deref,
    M::Target: GuestMemory,
{
    segs.clear();
    let mut seen = 0usize;
    for (position, desc) in chain.by_ref().enumerate() {
        seen += 1;
        if position >= MAX_SEGMENTS {
            return Err(ChainError::Segments(SegmentError::TooMany {
                max: MAX_SEGMENTS,
            }));
        }
        if desc.is_write_only() != writable {
            return Err(if writable {
                ChainError::ReadOnlyInRx { position }
            } else {
                ChainError::WriteOnlyInTx { position }
            });
        }
        segs.push(GuestAddress(desc.addr().0), desc.len())
            .map_err(ChainError::Segments)?;
    }
    if seen == 0 {
        return Err(ChainError::Empty);
    }
    let access = if writable {
        Permissions::Write
    } else {
        Permissions::Read
    };
    let mem = chain.memory();
    for (position, seg) in segs.iter().enumerate() {
        if !in_memory(mem, seg.addr, seg.len, access) {
            return Err(ChainError::OutsideMemory {
                position,
                addr: seg.addr.0,
                len: seg.len,
            });
        }
    }
    Ok(())
}

/// Whether `len` bytes at `addr` are guest memory the device may access. Fast path: on plain
/// guest memory (no IOMMU), a buffer inside one region needs one region lookup; anything else
/// (a buffer across regions, an IOMMU, an address outside) takes vm-memory's full check.
fn in_memory<M: GuestMemory + ?Sized>(
    mem: &M,
    addr: GuestAddress,
    len: u32,
    access: Permissions,
) -> bool {
    region_of(mem, addr.0, len).is_some() || mem.check_range(addr, len as usize, access)
}

/// Validates a TX chain: read-only descriptors inside guest memory, a header that fits, a known
/// op and type, and a `len` within [`MAX_PAYLOAD`] and within the chain.
pub fn parse_tx_chain<M>(chain: DescriptorChain<M>) -> Result<TxPacket, ChainError>
where
    M: Deref,
    M::Target: GuestMemory,
{
    let mut pkt = TxPacket::default();
    parse_tx_chain_into(chain, &mut pkt)?;
    Ok(pkt)
}

/// [`parse_tx_chain`] into a packet the caller reuses (nothing of its old contents is kept;
/// on error its contents are unspecified).
pub fn parse_tx_chain_into<M>(
    chain: DescriptorChain<M>,
    pkt: &mut TxPacket,
) -> Result<(), ChainError>
where
    M: Deref,
    M::Target: GuestMemory,
{
    pkt.head_index = chain.head_index();
    let mut chain = chain;
    collect(&mut chain, false, &mut pkt.payload)?;
    let segs = &mut pkt.payload;
    if (segs.len() as usize) < HEADER_SIZE {
        return Err(ChainError::TooShort {
            len: segs.len(),
            need: HEADER_SIZE,
        });
    }
    let header = &mut pkt.header;
    segs.read_bytes(
        chain.memory(),
        0,
        vm_memory::ByteValued::as_mut_slice(header),
    )
    .map_err(ChainError::Segments)?;

    let Some(op) = header.op() else {
        return Err(ChainError::UnknownOp {
            op: header.op_raw(),
        });
    };
    if header.type_() != TYPE_STREAM {
        return Err(ChainError::UnknownType {
            type_: header.type_(),
        });
    }
    let len = header.len();
    if op != Op::Rw && len != 0 {
        return Err(ChainError::PayloadOnControl {
            op: header.op_raw(),
            len,
        });
    }
    if len > MAX_PAYLOAD {
        return Err(ChainError::LenOverMax {
            len,
            max: MAX_PAYLOAD,
        });
    }
    let available = segs.len() - HEADER_LEN;
    if len > available {
        return Err(ChainError::LenOverChain { len, available });
    }
    segs.narrow(HEADER_LEN, len).map_err(ChainError::Segments)
}

/// Validates an RX chain: write-only descriptors inside guest memory with room for a header.
pub fn parse_rx_chain<M>(chain: DescriptorChain<M>) -> Result<RxBuffer, ChainError>
where
    M: Deref,
    M::Target: GuestMemory,
{
    parse_writable(chain, HEADER_SIZE)
}

/// Validates an event-queue chain: write-only descriptors inside guest memory with room for one
/// [`EVENT_SIZE`]-byte event record.
pub fn parse_event_chain<M>(chain: DescriptorChain<M>) -> Result<RxBuffer, ChainError>
where
    M: Deref,
    M::Target: GuestMemory,
{
    parse_writable(chain, EVENT_SIZE)
}

/// [`parse_rx_chain`] into a buffer the caller reuses (on error its contents are
/// unspecified).
pub fn parse_rx_chain_into<M>(
    chain: DescriptorChain<M>,
    buf: &mut RxBuffer,
) -> Result<(), ChainError>
where
    M: Deref,
    M::Target: GuestMemory,
{
    parse_writable_into(chain, HEADER_SIZE, buf)
}

/// A chain of write-only descriptors inside guest memory holding at least `need` bytes.
fn parse_writable<M>(chain: DescriptorChain<M>, need: usize) -> Result<RxBuffer, ChainError>
where
    M: Deref,
    M::Target: GuestMemory,
{
    let mut buf = RxBuffer::default();
    parse_writable_into(chain, need, &mut buf)?;
    Ok(buf)
}

fn parse_writable_into<M>(
    chain: DescriptorChain<M>,
    need: usize,
    buf: &mut RxBuffer,
) -> Result<(), ChainError>
where
    M: Deref,
    M::Target: GuestMemory,
{
    buf.head_index = chain.head_index();
    let mut chain = chain;
    collect(&mut chain, true, &mut buf.space)?;
    if (buf.space.len() as usize) < need {
        return Err(ChainError::TooShort {
            len: buf.space.len(),
            need,
        });
    }
    Ok(())
}
