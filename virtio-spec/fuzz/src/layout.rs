//! Guest memory as the targets lay it out, and the driver side of one split queue in it.
//!
//! Three regions: `R0` holds the queue (descriptor table, available and used rings) and up to
//! [`MAX_TABLES`] indirect tables; `R1` follows `R0` without a gap (so one buffer can cross a
//! region boundary); `R2` sits after a hole (so a buffer can run into unmapped memory).

use std::cell::RefCell;
use std::collections::HashMap;

use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Guest memory of the targets.
pub type Mem = GuestMemoryMmap<()>;

/// The regions: (start, length).
pub const REGIONS: [(u64, u64); 3] = [(0, 0x1_0000), (0x1_0000, 0x1_0000), (0x3_0000, 0x1000)];
/// Largest queue the targets build.
pub const MAX_QUEUE: u16 = 256;
/// Descriptor table (16 bytes per descriptor).
pub const DESC_TABLE: u64 = 0x0;
/// Available ring: flags, idx, ring, used_event.
pub const AVAIL_RING: u64 = 0x1000;
/// Used ring: flags, idx, ring, avail_event.
pub const USED_RING: u64 = 0x2000;
/// First indirect table; table `k` sits at `INDIRECT_BASE + k * INDIRECT_STRIDE`.
pub const INDIRECT_BASE: u64 = 0x3000;
/// Room per indirect table (64 descriptors).
pub const INDIRECT_STRIDE: u64 = 0x400;
/// Indirect tables the layout has room for.
pub const MAX_TABLES: usize = 8;

/// One raw descriptor as it sits in a table.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct RawDesc {
    /// Buffer address.
    pub addr: u64,
    /// Buffer length.
    pub len: u32,
    /// Flags (`NEXT` = 1, `WRITE` = 2, `INDIRECT` = 4, anything else too).
    pub flags: u16,
    /// Next index.
    pub next: u16,
}

impl RawDesc {
    fn bytes(self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&self.addr.to_le_bytes());
        b[8..12].copy_from_slice(&self.len.to_le_bytes());
        b[12..14].copy_from_slice(&self.flags.to_le_bytes());
        b[14..16].copy_from_slice(&self.next.to_le_bytes());
        b
    }
}

/// A mapping and the fill of each of its regions.
type Filled = (Mem, Vec<Vec<u8>>);

/// Guest memory with every byte set from its address and `seed`, so that a byte copied from the
/// wrong place shows. The mapping is made once per seed and thread and refilled on each call
/// (fresh mappings cost more in page clearing than the target's own work).
pub fn memory(seed: u8) -> Mem {
    thread_local! {
        static CACHE: RefCell<HashMap<u8, Filled>> = RefCell::new(HashMap::new());
    }
    CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        let (mem, fills) = cache.entry(seed).or_insert_with(|| {
            let ranges: Vec<(GuestAddress, usize)> = REGIONS
                .iter()
                .map(|&(start, len)| (GuestAddress(start), len as usize))
                .collect();
            let mem =
                Mem::from_ranges(&ranges).expect("anonymous guest memory for the fuzz target");
            let fills = REGIONS
                .iter()
                .map(|&(start, len)| (start..start + len).map(|a| pattern(a, seed)).collect())
                .collect();
            (mem, fills)
        });
        for (&(start, _), fill) in REGIONS.iter().zip(fills.iter()) {
            mem.write_slice(fill, GuestAddress(start))
                .expect("region mapped");
        }
        mem.clone()
    })
}

/// The fill byte of address `addr`.
pub fn pattern(addr: u64, seed: u8) -> u8 {
    let x = addr.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    ((x >> 56) as u8) ^ seed
}

/// Address of indirect table `k` (modulo [`MAX_TABLES`]).
pub fn table_addr(k: usize) -> u64 {
    INDIRECT_BASE + (k % MAX_TABLES) as u64 * INDIRECT_STRIDE
}

/// Writes `descs` into the descriptor table (slot `i` gets `descs[i]`, at most `size`) and
/// each of `tables` at its indirect-table address (at most 64 descriptors each).
pub fn write_tables(mem: &Mem, size: u16, descs: &[RawDesc], tables: &[Vec<RawDesc>]) {
    for (i, d) in descs.iter().take(usize::from(size)).enumerate() {
        write_desc(mem, DESC_TABLE + 16 * i as u64, *d);
    }
    for (k, table) in tables.iter().take(MAX_TABLES).enumerate() {
        for (i, d) in table.iter().take(64).enumerate() {
            write_desc(mem, table_addr(k) + 16 * i as u64, *d);
        }
    }
}

fn write_desc(mem: &Mem, at: u64, d: RawDesc) {
    mem.write_slice(&d.bytes(), GuestAddress(at))
        .expect("descriptor slots lie in R0");
}

/// Publishes `head` as the only available chain of a queue of `size` descriptors, and returns
/// the device side of that queue, ready.
pub fn queue_with_head(mem: &Mem, size: u16, head: u16) -> Queue {
    // flags 0, idx 1, ring[0] = head.
    mem.write_obj(0u16, GuestAddress(AVAIL_RING))
        .expect("avail ring lies in R0");
    mem.write_obj(1u16.to_le(), GuestAddress(AVAIL_RING + 2))
        .expect("avail ring lies in R0");
    mem.write_obj(head.to_le(), GuestAddress(AVAIL_RING + 4))
        .expect("avail ring lies in R0");
    let mut q = Queue::new(MAX_QUEUE).expect("a valid maximum queue size");
    q.set_size(size);
    q.try_set_desc_table_address(GuestAddress(DESC_TABLE))
        .expect("aligned");
    q.try_set_avail_ring_address(GuestAddress(AVAIL_RING))
        .expect("aligned");
    q.try_set_used_ring_address(GuestAddress(USED_RING))
        .expect("aligned");
    q.set_ready(true);
    q
}

/// Pops the one chain of `q` (none when the ring is unusable).
pub fn pop<'m>(q: &mut Queue, mem: &'m Mem) -> Option<DescriptorChain<&'m Mem>> {
    q.pop_descriptor_chain(mem)
}
