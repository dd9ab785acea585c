//! The 44-byte packet header, `struct virtio_vsock_hdr` (virtio 1.2 §5.10.6).
//!
//! The device always works on a *copy* of the header: a guest may change its buffers at any
//! time, so every check runs on bytes it can no longer touch (no time-of-check/time-of-use gap).

use vm_memory::{ByteValued, Le16, Le32, Le64};

use crate::consts::{
    HEADER_SIZE, OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE, OP_RST, OP_RW,
    OP_SHUTDOWN, TYPE_STREAM,
};

/// The operations a packet can carry. `INVALID` (0) and unknown values have no variant.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// Open a connection.
    Request,
    /// Accept a connection.
    Response,
    /// Reset a connection, or refuse one.
    Rst,
    /// Close one or both directions (`flags`: `SHUTDOWN_RCV`, `SHUTDOWN_SEND`).
    Shutdown,
    /// Payload of `len` bytes.
    Rw,
    /// Credit information, unsolicited.
    CreditUpdate,
    /// Ask the peer to send a `CreditUpdate`.
    CreditRequest,
}

impl Op {
    /// The wire value of the op.
    pub fn to_wire(self) -> u16 {
        match self {
            Op::Request => OP_REQUEST,
            Op::Response => OP_RESPONSE,
            Op::Rst => OP_RST,
            Op::Shutdown => OP_SHUTDOWN,
            Op::Rw => OP_RW,
            Op::CreditUpdate => OP_CREDIT_UPDATE,
            Op::CreditRequest => OP_CREDIT_REQUEST,
        }
    }

    /// The op for a wire value, or `None` for `INVALID` and unknown values.
    pub fn from_wire(value: u16) -> Option<Op> {
        Some(match value {
            OP_REQUEST => Op::Request,
            OP_RESPONSE => Op::Response,
            OP_RST => Op::Rst,
            OP_SHUTDOWN => Op::Shutdown,
            OP_RW => Op::Rw,
            OP_CREDIT_UPDATE => Op::CreditUpdate,
            OP_CREDIT_REQUEST => Op::CreditRequest,
            _ => return None,
        })
    }
}

/// `struct virtio_vsock_hdr`, byte for byte. Fields are little-endian on the wire.
#[repr(C, packed)]
#[derive(Copy, Clone, Default)]
pub struct PacketHeader {
    src_cid: Le64,
    dst_cid: Le64,
    src_port: Le32,
    dst_port: Le32,
    len: Le32,
    type_: Le16,
    op: Le16,
    flags: Le32,
    buf_alloc: Le32,
    fwd_cnt: Le32,
}

// SAFETY: `PacketHeader` is `repr(C, packed)` over plain little-endian integers: it has no
// padding, and every bit pattern is a valid value.
unsafe impl ByteValued for PacketHeader {}

const _: () = assert!(std::mem::size_of::<PacketHeader>() == HEADER_SIZE);

macro_rules! field {
    ($get:ident, $set:ident, $field:ident, $ty:ty, $doc:literal) => {
        #[doc = concat!("The `", stringify!($field), "` field: ", $doc)]
        pub fn $get(&self) -> $ty {
            let v = self.$field;
            v.into()
        }

        #[doc = concat!("Sets the `", stringify!($field), "` field.")]
        pub fn $set(&mut self, value: $ty) -> &mut Self {
            self.$field = value.into();
            self
        }
    };
}

#[allow(clippy::len_without_is_empty)]
impl PacketHeader {
    field!(src_cid, set_src_cid, src_cid, u64, "the sender's CID.");
    field!(dst_cid, set_dst_cid, dst_cid, u64, "the receiver's CID.");
    field!(src_port, set_src_port, src_port, u32, "the sender's port.");
    field!(
        dst_port,
        set_dst_port,
        dst_port,
        u32,
        "the receiver's port."
    );
    field!(len, set_len, len, u32, "payload length in bytes.");
    field!(type_, set_type, type_, u16, "socket type (1 = stream).");
    field!(op_raw, set_op_raw, op, u16, "the operation, raw.");
    field!(flags, set_flags, flags, u32, "op-specific flags.");
    field!(
        buf_alloc,
        set_buf_alloc,
        buf_alloc,
        u32,
        "the sender's receive buffer size."
    );
    field!(
        fwd_cnt,
        set_fwd_cnt,
        fwd_cnt,
        u32,
        "bytes the sender's application consumed."
    );

    /// A stream header with the given op and addressing, `len` 0 and no credit information.
    pub fn stream(op: Op, src_cid: u64, src_port: u32, dst_cid: u64, dst_port: u32) -> Self {
        let mut hdr = PacketHeader::default();
        hdr.set_src_cid(src_cid)
            .set_src_port(src_port)
            .set_dst_cid(dst_cid)
            .set_dst_port(dst_port)
            .set_type(TYPE_STREAM)
            .set_op(op);
        hdr
    }

    /// The op, or `None` when it is `INVALID` or unknown.
    pub fn op(&self) -> Option<Op> {
        Op::from_wire(self.op_raw())
    }

    /// Sets the op.
    pub fn set_op(&mut self, op: Op) -> &mut Self {
        self.set_op_raw(op.to_wire())
    }

    /// Sets both credit fields.
    pub fn set_credit(&mut self, buf_alloc: u32, fwd_cnt: u32) -> &mut Self {
        self.set_buf_alloc(buf_alloc).set_fwd_cnt(fwd_cnt)
    }

    /// The header with source and destination swapped, for a reply. Everything else is cleared
    /// except the type.
    pub fn reply(&self, op: Op) -> Self {
        let mut hdr = PacketHeader::stream(
            op,
            self.dst_cid(),
            self.dst_port(),
            self.src_cid(),
            self.src_port(),
        );
        hdr.set_type(self.type_());
        hdr
    }

    /// The RST that answers this packet (addresses swapped), or `None` when the packet is an RST
    /// itself: an RST is never answered (SPEC.md §10).
    pub fn rst_reply(&self) -> Option<Self> {
        (self.op() != Some(Op::Rst)).then(|| self.reply(Op::Rst))
    }
}

impl std::fmt::Debug for PacketHeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PacketHeader")
            .field(
                "src",
                &format_args!("{}:{}", self.src_cid(), self.src_port()),
            )
            .field(
                "dst",
                &format_args!("{}:{}", self.dst_cid(), self.dst_port()),
            )
            .field("len", &self.len())
            .field("type", &self.type_())
            .field("op", &self.op_raw())
            .field("flags", &self.flags())
            .field("buf_alloc", &self.buf_alloc())
            .field("fwd_cnt", &self.fwd_cnt())
            .finish()
    }
}

impl PartialEq for PacketHeader {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for PacketHeader {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_the_spec_offsets() {
        let mut hdr = PacketHeader::stream(Op::Rw, 3, 1024, 4, 80);
        hdr.set_len(0x11)
            .set_flags(0x2233_4455)
            .set_credit(0x6677_8899, 0xaabb_ccdd);
        let b = hdr.as_slice();
        assert_eq!(b.len(), 44);
        assert_eq!(&b[0..8], &3u64.to_le_bytes());
        assert_eq!(&b[8..16], &4u64.to_le_bytes());
        assert_eq!(&b[16..20], &1024u32.to_le_bytes());
        assert_eq!(&b[20..24], &80u32.to_le_bytes());
        assert_eq!(&b[24..28], &0x11u32.to_le_bytes());
        assert_eq!(&b[28..30], &1u16.to_le_bytes());
        assert_eq!(&b[30..32], &5u16.to_le_bytes());
        assert_eq!(&b[32..36], &0x2233_4455u32.to_le_bytes());
        assert_eq!(&b[36..40], &0x6677_8899u32.to_le_bytes());
        assert_eq!(&b[40..44], &0xaabb_ccddu32.to_le_bytes());
    }

    #[test]
    fn ops_round_trip_and_unknown_ops_are_none() {
        for v in 1..=7u16 {
            let op = Op::from_wire(v).expect("ops 1..=7 are defined");
            assert_eq!(op.to_wire(), v);
        }
        assert_eq!(Op::from_wire(0), None);
        assert_eq!(Op::from_wire(8), None);
        assert_eq!(Op::from_wire(u16::MAX), None);
    }

    #[test]
    fn reply_swaps_addresses() {
        let mut hdr = PacketHeader::stream(Op::Request, 3, 1000, 2, 22);
        hdr.set_credit(1, 2);
        let r = hdr.reply(Op::Rst);
        assert_eq!((r.src_cid(), r.src_port()), (2, 22));
        assert_eq!((r.dst_cid(), r.dst_port()), (3, 1000));
        assert_eq!(r.op(), Some(Op::Rst));
        assert_eq!((r.buf_alloc(), r.fwd_cnt(), r.len()), (0, 0, 0));
    }

    #[test]
    fn rst_reply_answers_everything_but_rst() {
        let req = PacketHeader::stream(Op::Request, 3, 1000, 4, 22);
        let r = req.rst_reply().expect("a REQUEST is answered");
        assert_eq!(r, req.reply(Op::Rst));
        assert_eq!(
            PacketHeader::stream(Op::Rst, 3, 1000, 4, 22).rst_reply(),
            None
        );
    }
}
