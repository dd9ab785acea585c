//! Descriptor-chain parsing over guest memory built from the input: arbitrary descriptor tables
//! (loops, indirect tables, addresses outside memory or inside the rings, huge lengths, any
//! flags), then the copies the switch makes through the parsed buffers.
//!
//! Asserted: nothing panics; parsing never writes guest memory; a chain is accepted or refused
//! exactly as SPEC.md §9 says for the descriptors virtio-queue yields (header checks in the
//! spec's order, one of the failing descriptor checks otherwise); an accepted packet's payload is
//! exactly the `len` bytes after the header and never more than the chain or the cap; an
//! accepted RX buffer is exactly its descriptors; and every read, write and copy through the
//! lists touches exactly the bytes they name (see `checks.rs`).
#![no_main]
// Fuzz inputs are narrowed into ring fields, ports and lengths of every width on purpose.
#![allow(clippy::cast_possible_truncation)]

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use vm_memory::{ByteValued, Bytes, GuestAddress};

use sockbypass_wire::consts::{EVENT_SIZE, HEADER_LEN, HEADER_SIZE, MAX_PAYLOAD, MAX_SEGMENTS};
use sockbypass_wire::{
    parse_event_chain, parse_rx_chain_into, parse_tx_chain_into, ChainError, Op, PacketHeader,
    RxBuffer, Segment, Segments, TxPacket,
};
use sockbypass_wire_fuzz::checks;
use sockbypass_wire_fuzz::layout::{self, Mem, RawDesc};
use sockbypass_wire_fuzz::model::{byte_addrs, Snapshot};
use sockbypass_wire_fuzz::spec::{AddrSpec, LenSpec, QueueSpec};

/// A header the target writes over the first bytes of the TX chain, so that chains get past
/// the header checks often.
#[derive(Arbitrary, Debug)]
struct HeaderSpec {
    src_cid: u64,
    dst_cid: u64,
    /// Wire op is `op % 9` (0 and 8 are invalid).
    op: u8,
    /// Wire type is `type_ % 3`.
    type_: u8,
    len: LenSpec,
    flags: u32,
}

/// Which parser the RX queue goes through.
#[derive(Arbitrary, Debug)]
enum RxKind {
    Rx,
    Event,
}

/// A copy between the parsed packet and the parsed buffer.
#[derive(Arbitrary, Debug)]
struct CopySpec {
    src_off: u32,
    dst_off: u32,
    len: u32,
    /// Use the raw values (usually out of range) instead of clamping them into the lists.
    raw: bool,
}

/// One operation on a segment list built straight from input (not through a chain).
#[derive(Arbitrary, Debug)]
enum SegOp {
    Read {
        offset: u32,
        len: u16,
    },
    Write {
        offset: u32,
        data: Vec<u8>,
    },
    Window {
        offset: u32,
        len: u16,
    },
    WriteTo {
        offset: u32,
        len: u16,
        room: u16,
    },
    ReadFrom {
        offset: u32,
        len: u16,
        data: Vec<u8>,
    },
}

#[derive(Arbitrary, Debug)]
struct Input {
    tx: QueueSpec,
    tx_header: Option<HeaderSpec>,
    rx: QueueSpec,
    rx_kind: RxKind,
    copy: CopySpec,
    segs: Vec<(AddrSpec, LenSpec)>,
    seg_ops: Vec<SegOp>,
}

fuzz_target!(|input: Input| {
    let tx_mem = layout::memory(0x5a);
    let rx_mem = layout::memory(0xa5);
    build(&tx_mem, &input.tx);
    if let Some(h) = &input.tx_header {
        write_header(&tx_mem, &input.tx, h);
    }
    build(&rx_mem, &input.rx);

    let pkt = parse_tx(&tx_mem, &input.tx);
    let buf = match input.rx_kind {
        RxKind::Rx => parse_rx(&rx_mem, &input.rx, HEADER_SIZE),
        RxKind::Event => parse_rx(&rx_mem, &input.rx, EVENT_SIZE),
    };
    if let (Some(pkt), Some(buf)) = (&pkt, &buf) {
        through_buffers(&tx_mem, pkt, &rx_mem, buf, &input.copy);
    }
    raw_segments(&tx_mem, &rx_mem, &input.segs, &input.seg_ops);
});

/// Lays out the queue's tables and scribbles in `mem` (the available ring comes later).
fn build(mem: &Mem, q: &QueueSpec) {
    let descs: Vec<RawDesc> = q.descs.iter().map(|d| d.resolve()).collect();
    let tables: Vec<Vec<RawDesc>> = q
        .tables
        .iter()
        .map(|t| t.iter().map(|d| d.resolve()).collect())
        .collect();
    layout::write_tables(mem, q.size(), &descs, &tables);
    for (at, bytes) in &q.writes {
        // Writes that leave guest memory are cut short or skipped: only what lands matters.
        let _ = mem.write(bytes, GuestAddress(at.resolve()));
    }
}

/// The guest buffers of the chain `q` publishes, as virtio-queue walks it.
fn chain_buffers(mem: &Mem, q: &QueueSpec) -> Vec<(u64, u32, bool)> {
    let mut queue = layout::queue_with_head(mem, q.size(), q.head);
    match layout::pop(&mut queue, mem) {
        Some(chain) => chain
            .map(|d| (d.addr().0, d.len(), d.is_write_only()))
            .collect(),
        None => Vec::new(),
    }
}

/// Writes the 44 header bytes across the chain's first buffers, as a driver would.
fn write_header(mem: &Mem, q: &QueueSpec, h: &HeaderSpec) {
    let mut hdr = PacketHeader::default();
    hdr.set_src_cid(h.src_cid)
        .set_dst_cid(h.dst_cid)
        .set_len(h.len.resolve())
        .set_type(u16::from(h.type_ % 3))
        .set_op_raw(u16::from(h.op % 9))
        .set_flags(h.flags);
    let bytes = hdr.as_slice();
    let mut done = 0usize;
    for (addr, len, _) in chain_buffers(mem, q) {
        if done == bytes.len() {
            break;
        }
        let n = (len as usize).min(bytes.len() - done);
        let _ = mem.write(&bytes[done..done + n], GuestAddress(addr));
        done += n;
    }
}

/// The checks of SPEC.md §9 on the descriptors themselves, each that fails.
#[derive(Debug, Default)]
struct DescriptorFaults {
    empty: bool,
    too_many: bool,
    wrong_direction: Vec<usize>,
    outside: Vec<usize>,
}

impl DescriptorFaults {
    fn of(bufs: &[(u64, u32, bool)], writable: bool, snap: &Snapshot) -> Self {
        let nonempty: Vec<_> = bufs.iter().filter(|b| b.1 > 0).collect();
        DescriptorFaults {
            empty: bufs.is_empty(),
            too_many: bufs.len() > MAX_SEGMENTS,
            wrong_direction: (0..bufs.len().min(MAX_SEGMENTS))
                .filter(|&i| bufs[i].2 != writable)
                .collect(),
            // Positions count the chain's non-empty buffers (empty ones are skipped).
            outside: nonempty
                .iter()
                .enumerate()
                .filter(|(_, b)| !snap.range_mapped(b.0, u64::from(b.1)))
                .map(|(i, _)| i)
                .collect(),
        }
    }

    fn any(&self) -> bool {
        self.empty || self.too_many || !self.wrong_direction.is_empty() || !self.outside.is_empty()
    }

    /// Asserts that `e` reports one of the failing checks.
    fn assert_reports(&self, e: &ChainError) {
        let ok = match e {
            ChainError::Empty => self.empty,
            ChainError::Segments(_) => self.too_many,
            ChainError::WriteOnlyInTx { position } | ChainError::ReadOnlyInRx { position } => {
                self.wrong_direction.contains(position)
            }
            ChainError::OutsideMemory { position, .. } => self.outside.contains(position),
            _ => false,
        };
        assert!(
            ok,
            "refused with {e:?}, but the descriptors fail only {self:?}"
        );
    }
}

/// The chain's non-empty buffers as segments, and their total length.
fn segments(bufs: &[(u64, u32, bool)]) -> (Vec<Segment>, u32) {
    let segs: Vec<Segment> = bufs
        .iter()
        .filter(|b| b.1 > 0)
        .map(|b| Segment {
            addr: GuestAddress(b.0),
            len: b.1,
        })
        .collect();
    let total: u64 = segs.iter().map(|s| u64::from(s.len)).sum();
    let total = u32::try_from(total).expect("virtio-queue caps a chain at 4 GiB");
    (segs, total)
}

/// The guest addresses of bytes `[offset, offset + len)` of a list.
fn addrs(segs: &[Segment], total: u32, offset: u32, len: u32) -> Vec<Option<u64>> {
    byte_addrs(segs, total, offset, len).expect("a range inside the list")
}

fn parse_tx(mem: &Mem, q: &QueueSpec) -> Option<TxPacket> {
    let bufs = chain_buffers(mem, q);
    let snap = Snapshot::of(mem);
    let faults = DescriptorFaults::of(&bufs, false, &snap);
    let mut queue = layout::queue_with_head(mem, q.size(), q.head);
    let chain = layout::pop(&mut queue, mem)?;
    let head = chain.head_index();
    let mut pkt = TxPacket::default();
    let r = parse_tx_chain_into(chain, &mut pkt);
    assert_eq!(
        Snapshot::of(mem),
        snap,
        "parsing a TX chain wrote guest memory"
    );
    if faults.any() {
        let e = r.expect_err("a chain failing a descriptor check was accepted");
        faults.assert_reports(&e);
        return None;
    }
    // Header checks, in the order of SPEC.md §9, on the bytes the model sees.
    let (segs, total) = segments(&bufs);
    let expected = if total < HEADER_LEN {
        Err("short_chain")
    } else {
        let mut raw = [0u8; HEADER_SIZE];
        for (b, a) in raw.iter_mut().zip(&addrs(&segs, total, 0, HEADER_LEN)) {
            *b = snap.get(a.expect("in memory")).expect("in memory");
        }
        let hdr = PacketHeader::from_slice(&raw).copied().expect("44 bytes");
        let len = hdr.len();
        match hdr.op() {
            None => Err("unknown_op"),
            Some(_) if hdr.type_() != 1 => Err("unknown_type"),
            Some(op) if op != Op::Rw && len != 0 => Err("payload_on_control"),
            Some(_) if len > MAX_PAYLOAD => Err("len_over_max"),
            Some(_) if len > total - HEADER_LEN => Err("len_over_chain"),
            Some(_) => Ok(hdr),
        }
    };
    match (expected, r) {
        (Ok(hdr), Ok(())) => {
            assert_eq!(pkt.head_index, head, "head index");
            assert_eq!(
                pkt.header, hdr,
                "the header is a copy of the chain's first 44 bytes"
            );
            let len = hdr.len();
            assert!(
                len <= MAX_PAYLOAD && len <= total - HEADER_LEN,
                "payload over the caps"
            );
            assert_eq!(pkt.payload.len(), len, "payload length is the header's len");
            assert!(
                pkt.payload.count() <= MAX_SEGMENTS,
                "too many payload segments"
            );
            let payload: Vec<Segment> = pkt.payload.iter().copied().collect();
            assert_eq!(
                addrs(&payload, len, 0, len),
                addrs(&segs, total, HEADER_LEN, len),
                "payload is the bytes after the header"
            );
            Some(pkt)
        }
        (Err(reason), Err(e)) => {
            assert_eq!(e.reason(), reason, "refused for another reason: {e:?}");
            None
        }
        (want, got) => panic!("TX chain: expected {want:?}, parser said {got:?}"),
    }
}

fn parse_rx(mem: &Mem, q: &QueueSpec, need: usize) -> Option<RxBuffer> {
    let bufs = chain_buffers(mem, q);
    let snap = Snapshot::of(mem);
    let faults = DescriptorFaults::of(&bufs, true, &snap);
    let mut queue = layout::queue_with_head(mem, q.size(), q.head);
    let chain = layout::pop(&mut queue, mem)?;
    let head = chain.head_index();
    let r = if need == HEADER_SIZE {
        let mut buf = RxBuffer::default();
        parse_rx_chain_into(chain, &mut buf).map(|()| buf)
    } else {
        parse_event_chain(chain)
    };
    assert_eq!(
        Snapshot::of(mem),
        snap,
        "parsing an RX chain wrote guest memory"
    );
    if faults.any() {
        let e = r.expect_err("a chain failing a descriptor check was accepted");
        faults.assert_reports(&e);
        return None;
    }
    let (segs, total) = segments(&bufs);
    if (total as usize) < need {
        let e = r.expect_err("a buffer shorter than needed was accepted");
        assert_eq!(
            e.reason(),
            "short_chain",
            "refused for another reason: {e:?}"
        );
        return None;
    }
    let buf = r.expect("a valid RX chain was refused");
    assert_eq!(buf.head_index, head, "head index");
    let space: Vec<Segment> = buf.space.iter().copied().collect();
    assert_eq!(
        space, segs,
        "the buffer is exactly the chain's non-empty buffers"
    );
    assert_eq!(buf.space.len(), total, "buffer length");
    Some(buf)
}

/// What the switch does with a packet and a buffer: copy payload across, write the header.
fn through_buffers(tx_mem: &Mem, pkt: &TxPacket, rx_mem: &Mem, buf: &RxBuffer, c: &CopySpec) {
    let (src, dst) = (&pkt.payload, &buf.space);
    let (src_off, dst_off, len) = if c.raw {
        (c.src_off, c.dst_off, c.len)
    } else {
        let src_off = c.src_off % (src.len() + 1);
        let dst_off = c.dst_off % (dst.len() + 1);
        let len = c.len.min(src.len() - src_off).min(dst.len() - dst_off);
        (src_off, dst_off, len)
    };
    checks::copy(tx_mem, src, src_off, rx_mem, dst, dst_off, len);
    // The header goes at the start of the buffer, when it has room for one.
    if dst.len() >= HEADER_LEN {
        checks::write_bytes(rx_mem, dst, 0, pkt.header.as_slice());
        let room = buf.payload_capacity();
        let n = pkt.payload.len().min(room);
        let window = buf.payload(n).expect("payload window inside the buffer");
        assert_eq!(window.len(), n, "payload window length");
        checks::copy(tx_mem, src, 0, rx_mem, &window, 0, n);
    }
}

/// Segment lists straight from the input: any addresses, any lengths.
fn raw_segments(tx_mem: &Mem, rx_mem: &Mem, list: &[(AddrSpec, LenSpec)], ops: &[SegOp]) {
    let mut s = Segments::new();
    for (a, l) in list {
        if s.push(GuestAddress(a.resolve()), l.resolve()).is_err() {
            break;
        }
    }
    for op in ops.iter().take(16) {
        match op {
            SegOp::Read { offset, len } => checks::read_bytes(rx_mem, &s, *offset, u32::from(*len)),
            SegOp::Write { offset, data } => checks::write_bytes(rx_mem, &s, *offset, data),
            SegOp::Window { offset, len } => checks::window(&s, *offset, u32::from(*len)),
            SegOp::WriteTo { offset, len, room } => {
                checks::write_to(rx_mem, &s, *offset, u32::from(*len), usize::from(*room))
            }
            SegOp::ReadFrom { offset, len, data } => {
                checks::read_from(rx_mem, &s, *offset, u32::from(*len), data)
            }
        }
    }
    // A copy between two raw lists: from the list into itself in the other memory.
    if !s.is_empty() {
        let n = s.len().min(4096);
        checks::copy(tx_mem, &s, 0, rx_mem, &s, 0, n);
    }
}
