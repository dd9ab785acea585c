//! Random hostile TX chains, for `hostile_guest.rs`.
//!
//! [`ChainMaker`] writes chains straight into a guest's TX descriptor table, using only
//! descriptors the caller reserved for it, and publishes their heads. Each chain mixes:
//! - a header with random fields: any op (valid ones in any order, and invalid ones), mostly the
//!   guest's own `src_cid` (sometimes not), `dst_cid` among the host, real peers, itself and
//!   nobody, ports from a small set (so that packets meet live connections) or anywhere, and a
//!   `len` that is honest, beyond the chain, beyond 64 KiB or random;
//! - a layout: the packet cut at random points (zero-length descriptors included) into 1 to 72
//!   descriptors, or put behind an indirect table;
//! - damage: write-only descriptors, addresses outside or across the end of guest memory, wild
//!   lengths, descriptor loops, wild `next` indices, nested or misshapen indirect tables, and
//!   chains of pure garbage.
//!
//! A third of the chains are well-formed (a valid op and type, the guest's own CID, an honest
//! `len`, a plain chain), so that they get past parsing and meet the connection table and the
//! peers with ops in any order.

use rand::rngs::StdRng;
use rand::Rng;
use sockbypass_frontend::split_queue::{DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE};
use sockbypass_frontend::{GuestRam, GuestRange, RawDescriptor, SplitQueue};
use sockbypass_wire::consts::{HEADER_LEN, OP_RW, OP_SHUTDOWN};
use sockbypass_wire::PacketHeader;
use vm_memory::{ByteValued, GuestAddress};

/// Guest memory per chain of a batch: the header and small payloads, then an indirect table.
const SLOT: u64 = 8192;
/// Where the indirect table starts in a slot.
const TABLE_OFFSET: u64 = 4096;
/// Most entries an indirect table gets: what fits between the table offset and the slot end.
const TABLE_MAX: usize = 256;
/// Bytes of random data that large payload descriptors point into.
const PAYLOAD_AREA: usize = 160 * 1024;
/// Source ports most chains use, so that they meet the connections earlier chains opened.
const SMALL_PORTS: [u32; 4] = [1000, 1001, 1002, 1003];
/// Largest payload kept next to the header in the slot.
const SMALL_PAYLOAD: u32 = 2048;

/// One descriptor before it is linked into the table.
#[derive(Clone, Copy, Debug)]
struct Seg {
    addr: u64,
    len: u32,
    flags: u16,
}

/// How a chain's descriptors are linked.
enum Link {
    /// A proper chain in the queue's table.
    Plain,
    /// The last descriptor points back into the chain.
    Loop,
    /// One descriptor points at a random index (maybe past the table).
    Wild,
    /// One queue descriptor pointing at an indirect table holding the chain.
    Indirect,
}

/// Makes hostile chains for one guest.
pub struct ChainMaker {
    rng: StdRng,
    cid: u64,
    peers: Vec<u64>,
    ports: Vec<u32>,
    avoid_port: u32,
    ram: GuestRam,
    slots: GuestRange,
    payload: GuestRange,
    max_batch: usize,
}

impl ChainMaker {
    /// A maker for the guest with `cid` and RAM `ram`, batches of at most `max_batch` chains.
    /// `peers` are CIDs worth aiming at, `ports` ports worth aiming at; `avoid_port` is never
    /// used as a destination port.
    pub fn new(
        ram: &GuestRam,
        rng: StdRng,
        cid: u64,
        peers: &[u64],
        ports: &[u32],
        avoid_port: u32,
        max_batch: usize,
    ) -> Self {
        let slots = ram
            .alloc_zeroed(SLOT * max_batch as u64, 4096)
            .expect("slot memory");
        let payload = ram
            .alloc(PAYLOAD_AREA as u64, 4096)
            .expect("payload memory");
        let mut maker = ChainMaker {
            rng,
            cid,
            peers: peers.to_vec(),
            ports: ports.to_vec(),
            avoid_port,
            ram: ram.clone(),
            slots,
            payload,
            max_batch,
        };
        let mut noise = vec![0u8; PAYLOAD_AREA];
        maker.rng.fill(&mut noise[..]);
        ram.write(payload.addr, &noise).expect("payload bytes");
        maker
    }

    /// Writes up to `limit` chains (and at most `max_batch`) into `q`, using only the
    /// descriptors in `pool`, and publishes their heads (no kick). Returns how many were
    /// published.
    pub fn publish_batch(&mut self, q: &mut SplitQueue, pool: &[u16], limit: usize) -> usize {
        let mut used = 0usize;
        let mut chains = 0usize;
        while chains < self.max_batch.min(limit) {
            let slot = self.slots.addr.0 + SLOT * chains as u64;
            // A third of the chains are well-formed packets with random contents: they reach
            // the connection table and the peers (ops out of order, RW beyond credit...).
            let clean = self.rng.gen_bool(0.33);
            let segs = self.segments(slot, clean);
            let link = if clean {
                Link::Plain
            } else {
                self.link(segs.len())
            };
            let needed = match link {
                Link::Indirect => 1,
                _ => segs.len(),
            };
            if used + needed > pool.len() {
                break;
            }
            let descs = &pool[used..used + needed];
            let head = match link {
                Link::Indirect => self.write_indirect(q, descs[0], slot, &segs),
                _ => self.write_chain(q, descs, &segs, &link),
            };
            q.publish_head(head).expect("publish a head");
            used += needed;
            chains += 1;
        }
        chains
    }

    fn header(&mut self) -> PacketHeader {
        let r = &mut self.rng;
        let mut h = PacketHeader::default();
        let op = if r.gen_bool(0.85) {
            r.gen_range(1..=7)
        } else {
            [0, 8, 99, u16::MAX][r.gen_range(0..4)]
        };
        h.set_op_raw(op);
        h.set_type(if r.gen_bool(0.9) { 1 } else { r.gen() });
        let src = if r.gen_bool(0.9) {
            self.cid
        } else {
            [2, 0, r.gen(), self.cid + 1][r.gen_range(0..4)]
        };
        h.set_src_cid(src);
        let dst = match r.gen_range(0..10) {
            0 => 2,
            1 => self.cid,
            2 => 0,
            3 => u64::from(u32::MAX),
            4 => r.gen(),
            5 => 4242,
            _ => self.peers[r.gen_range(0..self.peers.len())],
        };
        h.set_dst_cid(dst);
        h.set_src_port(if r.gen_bool(0.6) {
            SMALL_PORTS[r.gen_range(0..SMALL_PORTS.len())]
        } else {
            r.gen()
        });
        let mut dst_port = if r.gen_bool(0.5) {
            self.ports[r.gen_range(0..self.ports.len())]
        } else {
            r.gen()
        };
        if dst_port == self.avoid_port {
            dst_port += 1;
        }
        h.set_dst_port(dst_port);
        h.set_flags(if op == OP_SHUTDOWN && r.gen_bool(0.8) {
            r.gen_range(0..=3)
        } else if r.gen_bool(0.8) {
            0
        } else {
            r.gen()
        });
        let buf_alloc = [0, 4096, 262_144, u32::MAX, r.gen()][r.gen_range(0..5)];
        let fwd_cnt = [0, r.gen_range(0..1 << 20), r.gen()][r.gen_range(0..3)];
        h.set_credit(buf_alloc, fwd_cnt);
        h.set_len(r.gen());
        h
    }

    /// The packet's bytes as guest ranges, cut into descriptors, then damaged.
    fn segments(&mut self, slot: u64, clean: bool) -> Vec<Seg> {
        let mut hdr = self.header();
        if clean {
            // Aimed at live connections: a peer, and ports from the small sets.
            let r = &mut self.rng;
            hdr.set_op_raw(r.gen_range(1..=7))
                .set_type(1)
                .set_src_cid(self.cid)
                .set_dst_cid(self.peers[r.gen_range(0..self.peers.len())])
                .set_src_port(SMALL_PORTS[r.gen_range(0..SMALL_PORTS.len())])
                .set_dst_port(self.ports[r.gen_range(0..self.ports.len())]);
        }
        let with_payload = hdr.op_raw() == OP_RW || (!clean && self.rng.gen_bool(0.05));
        let small = self.rng.gen_bool(0.8);
        let payload_len: u32 = match (with_payload, small) {
            (false, _) => 0,
            (true, true) => self.rng.gen_range(0..=SMALL_PAYLOAD),
            (true, false) => self.rng.gen_range(SMALL_PAYLOAD..=64 * 1024 + 64),
        };
        // An honest `len` most of the time, else beyond the chain, past the maximum, or random.
        match if clean { 0 } else { self.rng.gen_range(0..10) } {
            0..=5 => hdr.set_len(payload_len),
            6 => hdr.set_len(payload_len + self.rng.gen_range(1..100_000)),
            7 => hdr.set_len(65_537),
            _ => hdr.set_len(self.rng.gen()),
        };
        let header_addr = GuestAddress(slot);
        self.ram.write(header_addr, hdr.as_slice()).expect("header");
        let mut ranges = vec![(slot, HEADER_LEN)];
        if payload_len > 0 && small {
            let mut bytes = vec![0u8; payload_len as usize];
            self.rng.fill(&mut bytes[..]);
            self.ram
                .write(GuestAddress(slot + u64::from(HEADER_LEN)), &bytes)
                .expect("small payload");
            ranges[0].1 += payload_len;
        } else if payload_len > 0 {
            let room = PAYLOAD_AREA as u64 - u64::from(payload_len);
            let off = self.rng.gen_range(0..=room);
            ranges.push((self.payload.addr.0 + off, payload_len));
        }
        let pieces = match self.rng.gen_range(0..if clean { 17 } else { 20 }) {
            0..=7 => 1,
            8..=16 => self.rng.gen_range(2..=4),
            17..=18 => self.rng.gen_range(5..=16),
            _ => self.rng.gen_range(65..=72),
        };
        let mut segs = self.cut(&ranges, pieces);
        if !clean {
            self.damage(&mut segs);
        }
        segs
    }

    /// Cuts `ranges` at `pieces - 1` random points (equal points give zero-length pieces).
    fn cut(&mut self, ranges: &[(u64, u32)], pieces: usize) -> Vec<Seg> {
        let total: u64 = ranges.iter().map(|r| u64::from(r.1)).sum();
        let mut points: Vec<u64> = (1..pieces).map(|_| self.rng.gen_range(0..=total)).collect();
        let mut edge = 0;
        for r in ranges {
            edge += u64::from(r.1);
            points.push(edge);
        }
        points.push(0);
        points.sort_unstable();
        let mut segs = Vec::with_capacity(points.len());
        let mut start = 0u64;
        for &end in &points[1..] {
            // Every point is a range edge or inside one range, so [start, end) lies in one range.
            let mut base = 0u64;
            for r in ranges {
                let len = u64::from(r.1);
                if start < base + len || (start == base + len && end == start) {
                    let len32 = u32::try_from(end - start).expect("piece within a range");
                    segs.push(Seg {
                        addr: r.0 + (start - base),
                        len: len32,
                        flags: 0,
                    });
                    break;
                }
                base += len;
            }
            start = end;
        }
        if segs.is_empty() {
            segs.push(Seg {
                addr: ranges[0].0,
                len: 0,
                flags: 0,
            });
        }
        segs
    }

    fn damage(&mut self, segs: &mut Vec<Seg>) {
        let ram_size = self.ram.size();
        let r = &mut self.rng;
        let i = r.gen_range(0..segs.len());
        match r.gen_range(0..40) {
            0..=2 => segs[i].flags |= DESC_F_WRITE,
            3..=4 => segs[i].addr = r.gen_range(ram_size..=u64::MAX - u64::from(segs[i].len)),
            5..=6 => {
                // Across the end of guest memory.
                let inside = r.gen_range(1..64u32);
                segs[i].addr = ram_size - u64::from(inside);
                segs[i].len = inside + r.gen_range(1..4096);
            }
            7 => segs[i].len = r.gen(),
            8 => {
                *segs = vec![Seg {
                    addr: r.gen_range(0..ram_size),
                    len: 0,
                    flags: 0,
                }]
            }
            9 => {
                // Pure garbage.
                for s in segs.iter_mut() {
                    *s = Seg {
                        addr: r.gen(),
                        len: r.gen(),
                        flags: r.gen::<u16>() & !DESC_F_NEXT,
                    };
                }
            }
            10 => segs[i].addr = r.gen_range(0..ram_size),
            _ => {}
        }
    }

    fn link(&mut self, n: usize) -> Link {
        match self.rng.gen_range(0..20) {
            0 => Link::Loop,
            1 => Link::Wild,
            2..=3 if n <= TABLE_MAX => Link::Indirect,
            _ => Link::Plain,
        }
    }

    /// Writes `segs` into the table at `descs` and links them as `link` says; returns the head.
    fn write_chain(&mut self, q: &mut SplitQueue, descs: &[u16], segs: &[Seg], link: &Link) -> u16 {
        let n = segs.len();
        let wild = self.rng.gen_range(0..n);
        for (i, s) in segs.iter().enumerate() {
            let mut flags = s.flags;
            let mut next = 0;
            if i + 1 < n {
                flags |= DESC_F_NEXT;
                next = descs[i + 1];
            }
            match link {
                Link::Loop if i + 1 == n => {
                    flags |= DESC_F_NEXT;
                    next = descs[self.rng.gen_range(0..n)];
                }
                Link::Wild if i == wild => {
                    flags |= DESC_F_NEXT;
                    next = self.rng.gen();
                }
                _ => {}
            }
            let d = RawDescriptor {
                addr: s.addr,
                len: s.len,
                flags,
                next,
            };
            q.write_descriptor(descs[i], d).expect("descriptor");
        }
        descs[0]
    }

    /// Writes `segs` as an indirect table in the slot (sometimes misshapen) and points queue
    /// descriptor `desc` at it; returns `desc`.
    fn write_indirect(&mut self, q: &mut SplitQueue, desc: u16, slot: u64, segs: &[Seg]) -> u16 {
        let table = slot + TABLE_OFFSET;
        let n = segs.len();
        let mut bytes = Vec::with_capacity(n * 16);
        for (i, s) in segs.iter().enumerate() {
            let mut flags = s.flags;
            let mut next = 0u16;
            if i + 1 < n {
                flags |= DESC_F_NEXT;
                next = u16::try_from(i + 1).expect("table index");
            }
            match self.rng.gen_range(0..30) {
                0 => flags |= DESC_F_INDIRECT,
                1 => {
                    flags |= DESC_F_NEXT;
                    next = self.rng.gen();
                }
                2 => {
                    flags |= DESC_F_NEXT;
                    next = 0;
                }
                _ => {}
            }
            bytes.extend_from_slice(&s.addr.to_le_bytes());
            bytes.extend_from_slice(&s.len.to_le_bytes());
            bytes.extend_from_slice(&flags.to_le_bytes());
            bytes.extend_from_slice(&next.to_le_bytes());
        }
        self.ram.write(GuestAddress(table), &bytes).expect("table");
        let honest = u32::try_from(n * 16).expect("table size");
        let (len, flags) = match self.rng.gen_range(0..12) {
            0 => (0, DESC_F_INDIRECT),
            1 => (honest + 8, DESC_F_INDIRECT),
            2 => (self.rng.gen(), DESC_F_INDIRECT),
            3 => (honest, DESC_F_INDIRECT | DESC_F_NEXT),
            4 => (honest, DESC_F_INDIRECT | DESC_F_WRITE),
            _ => (honest, DESC_F_INDIRECT),
        };
        let d = RawDescriptor {
            addr: table,
            len,
            flags,
            next: desc,
        };
        q.write_descriptor(desc, d).expect("indirect descriptor");
        desc
    }
}
