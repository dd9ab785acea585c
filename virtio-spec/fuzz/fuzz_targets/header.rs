//! Everything in the wire crate that reads raw bytes a guest or a frontend controls: the 44-byte
//! packet header (as bytes, and as the first descriptor bytes of a TX chain), the event record,
//! and GET_CONFIG reads of the config space at any offset and size.
//!
//! Input: `offset: le32, size: le32, guest_cid: le64, event: [u8; 4], cut: le16`, then the
//! packet (header and payload). Shorter inputs are padded with zeros. The packet goes into one
//! TX descriptor, or two (cut at `cut`, with a gap between them) when `0 < cut < len`.
//!
//! Asserted: nothing panics; every field reads the little-endian bytes at the offset SPEC.md §3.1
//! gives; setters write them back byte for byte; ops round-trip; a reply swaps the addresses; the
//! parser accepts or refuses the packet exactly as SPEC.md §9 orders its header checks, and an
//! accepted packet's payload is exactly the `len` bytes after the header; a config read returns
//! the bytes of the 8-byte space it asks for, clipped.
#![no_main]
// Fuzz inputs are narrowed into ring fields, ports and lengths of every width on purpose.
#![allow(clippy::cast_possible_truncation)]

use libfuzzer_sys::fuzz_target;
use vm_memory::{ByteValued, Bytes, GuestAddress};

use sockbypass_wire::config_space::CONFIG_SPACE_SIZE;
use sockbypass_wire::consts::{HEADER_LEN, HEADER_SIZE, MAX_PAYLOAD, TYPE_STREAM};
use sockbypass_wire::event::VsockEvent;
use sockbypass_wire::{parse_tx_chain, Op, PacketHeader, VsockConfigSpace};
use sockbypass_wire_fuzz::layout::{self, RawDesc, REGIONS};

/// Bytes before the packet.
const PREFIX: usize = 22;
/// Where the packet's first descriptor starts: in R0, past the queue, so that a long packet runs
/// on into R1 (which follows R0 without a gap) and room is left for a 64 KiB payload.
const PACKET_AT: u64 = 0x8000;
/// Gap between the two descriptors of a cut packet.
const GAP: u64 = 64;
/// Descriptor flag: the chain goes on.
const F_NEXT: u16 = 1;

fn le_u16(b: &[u8]) -> u16 {
    u16::from_le_bytes([b[0], b[1]])
}

fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

fuzz_target!(|data: &[u8]| {
    let mut prefix = [0u8; PREFIX];
    let n = data.len().min(PREFIX);
    prefix[..n].copy_from_slice(&data[..n]);
    let packet = &data[n..];

    config_read(
        le_u32(&prefix[0..4]),
        le_u32(&prefix[4..8]),
        le_u64(&prefix[8..16]),
    );
    event(&prefix[16..20]);
    if packet.len() >= HEADER_SIZE {
        header_fields(&packet[..HEADER_SIZE]);
    }
    parse(packet, usize::from(le_u16(&prefix[20..22])));
});

fn config_read(offset: u32, size: u32, guest_cid: u64) {
    let cfg = VsockConfigSpace { guest_cid };
    let got = cfg.read(offset, size);
    let bytes = guest_cid.to_le_bytes();
    let start = (offset as usize).min(CONFIG_SPACE_SIZE);
    let end = (u64::from(offset) + u64::from(size)).min(CONFIG_SPACE_SIZE as u64) as usize;
    let want = if start < end {
        &bytes[start..end]
    } else {
        &[][..]
    };
    assert_eq!(got, want, "config read {offset}+{size}");
}

fn event(b: &[u8]) {
    let ev = VsockEvent::from_slice(b).expect("4 bytes");
    assert_eq!(ev.id(), le_u32(b), "event id is le32");
    assert_eq!(ev.as_slice(), b);
}

fn header_fields(b: &[u8]) {
    let h = *PacketHeader::from_slice(b).expect("44 bytes");
    // SPEC.md §3.1: offsets and widths.
    assert_eq!(h.src_cid(), le_u64(&b[0..]));
    assert_eq!(h.dst_cid(), le_u64(&b[8..]));
    assert_eq!(h.src_port(), le_u32(&b[16..]));
    assert_eq!(h.dst_port(), le_u32(&b[20..]));
    assert_eq!(h.len(), le_u32(&b[24..]));
    assert_eq!(h.type_(), le_u16(&b[28..]));
    assert_eq!(h.op_raw(), le_u16(&b[30..]));
    assert_eq!(h.flags(), le_u32(&b[32..]));
    assert_eq!(h.buf_alloc(), le_u32(&b[36..]));
    assert_eq!(h.fwd_cnt(), le_u32(&b[40..]));
    // The setters write the same bytes back.
    let mut w = PacketHeader::default();
    w.set_src_cid(h.src_cid())
        .set_dst_cid(h.dst_cid())
        .set_src_port(h.src_port())
        .set_dst_port(h.dst_port())
        .set_len(h.len())
        .set_type(h.type_())
        .set_op_raw(h.op_raw())
        .set_flags(h.flags())
        .set_credit(h.buf_alloc(), h.fwd_cnt());
    assert_eq!(w.as_slice(), b, "setters round-trip");
    assert_eq!(w, h);
    // Ops 1..=7 are known and round-trip; everything else is not.
    match h.op() {
        Some(op) => {
            assert!((1..=7).contains(&h.op_raw()));
            assert_eq!(op.to_wire(), h.op_raw());
        }
        None => assert!(!(1..=7).contains(&h.op_raw())),
    }
    // A reply goes back where the header came from, with nothing else but the type.
    let r = h.reply(Op::Rst);
    assert_eq!((r.src_cid(), r.src_port()), (h.dst_cid(), h.dst_port()));
    assert_eq!((r.dst_cid(), r.dst_port()), (h.src_cid(), h.src_port()));
    assert_eq!(r.type_(), h.type_());
    assert_eq!(
        (r.op(), r.len(), r.flags(), r.buf_alloc(), r.fwd_cnt()),
        (Some(Op::Rst), 0, 0, 0, 0)
    );
    let _ = format!("{h:?}");
}

fn parse(packet: &[u8], cut: usize) {
    let mem = layout::memory(0);
    let room = (REGIONS[1].0 + REGIONS[1].1 - PACKET_AT - GAP) as usize;
    let packet = &packet[..packet.len().min(room)];
    let pieces: Vec<&[u8]> = if cut > 0 && cut < packet.len() {
        vec![&packet[..cut], &packet[cut..]]
    } else {
        vec![packet]
    };
    let mut descs = Vec::new();
    let mut at = PACKET_AT;
    for (i, piece) in pieces.iter().enumerate() {
        mem.write_slice(piece, GuestAddress(at))
            .expect("the packet fits in R1");
        let last = i + 1 == pieces.len();
        descs.push(RawDesc {
            addr: at,
            len: piece.len() as u32,
            flags: if last { 0 } else { F_NEXT },
            next: if last { 0 } else { i as u16 + 1 },
        });
        at += piece.len() as u64 + GAP;
    }
    layout::write_tables(&mem, 4, &descs, &[]);
    let mut q = layout::queue_with_head(&mem, 4, 0);
    let chain = layout::pop(&mut q, &mem).expect("one chain published");
    let r = parse_tx_chain(chain);

    // SPEC.md §9, the header checks in order (the descriptors are all fine).
    let total = packet.len() as u32;
    let expected = if packet.len() < HEADER_SIZE {
        Err("short_chain")
    } else {
        let h = *PacketHeader::from_slice(&packet[..HEADER_SIZE]).expect("44 bytes");
        let len = h.len();
        match h.op() {
            None => Err("unknown_op"),
            Some(_) if h.type_() != TYPE_STREAM => Err("unknown_type"),
            Some(op) if op != Op::Rw && len != 0 => Err("payload_on_control"),
            Some(_) if len > MAX_PAYLOAD => Err("len_over_max"),
            Some(_) if len > total - HEADER_LEN => Err("len_over_chain"),
            Some(_) => Ok(h),
        }
    };
    match (expected, r) {
        (Ok(h), Ok(pkt)) => {
            assert_eq!(pkt.header, h);
            assert_eq!(pkt.head_index, 0);
            let len = h.len() as usize;
            assert_eq!(pkt.payload.len() as usize, len);
            let mut got = vec![0u8; len];
            pkt.payload
                .read_bytes(&mem, 0, &mut got)
                .expect("payload in memory");
            assert_eq!(
                got,
                &packet[HEADER_SIZE..HEADER_SIZE + len],
                "payload bytes"
            );
        }
        (Err(reason), Err(e)) => assert_eq!(e.reason(), reason, "refused for another reason: {e}"),
        (want, got) => panic!("expected {want:?}, parser said {got:?}"),
    }
}
