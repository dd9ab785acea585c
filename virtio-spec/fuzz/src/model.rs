//! A byte-by-byte reference for the checks: a snapshot of guest memory, and the guest address of
//! every byte of a segment list. Slow and obvious on purpose: the code under test takes fast
//! paths (one region lookup, volatile slices across regions), the model takes none.

use std::collections::BTreeSet;

use sockbypass_wire::Segment;
use vm_memory::{Bytes, GuestAddress};

use crate::layout::{Mem, REGIONS};

/// A copy of every region of a [`Mem`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    regions: Vec<(u64, Vec<u8>)>,
}

impl Snapshot {
    /// Reads every region of `mem`.
    pub fn of(mem: &Mem) -> Self {
        let regions = REGIONS
            .iter()
            .map(|&(start, len)| {
                let mut buf = vec![0u8; len as usize];
                mem.read_slice(&mut buf, GuestAddress(start))
                    .expect("every region of the layout is mapped");
                (start, buf)
            })
            .collect();
        Snapshot { regions }
    }

    fn locate(&self, addr: u64) -> Option<(usize, usize)> {
        self.regions
            .iter()
            .enumerate()
            .find_map(|(i, (start, buf))| {
                let off = addr.checked_sub(*start)?;
                (off < buf.len() as u64).then_some((i, off as usize))
            })
    }

    /// The byte at `addr`, or `None` when no region holds it.
    pub fn get(&self, addr: u64) -> Option<u8> {
        self.locate(addr).map(|(i, off)| self.regions[i].1[off])
    }

    /// Sets the byte at `addr` (which must be mapped).
    pub fn set(&mut self, addr: u64, value: u8) {
        let (i, off) = self
            .locate(addr)
            .expect("the model writes mapped bytes only");
        self.regions[i].1[off] = value;
    }

    /// Whether `addr` is mapped.
    pub fn mapped(&self, addr: u64) -> bool {
        self.locate(addr).is_some()
    }

    /// Whether all of `[addr, addr + len)` is mapped (possibly across adjacent regions).
    pub fn range_mapped(&self, addr: u64, len: u64) -> bool {
        let Some(end) = addr.checked_add(len) else {
            return false;
        };
        let mut cur = addr;
        while cur < end {
            let Some((i, off)) = self.locate(cur) else {
                return false;
            };
            cur += (self.regions[i].1.len() - off) as u64;
        }
        true
    }

    /// Addresses whose bytes differ between `self` and `other` (same layout).
    pub fn changed(&self, other: &Snapshot) -> Vec<u64> {
        let mut out = Vec::new();
        for ((start, a), (_, b)) in self.regions.iter().zip(&other.regions) {
            if a == b {
                continue;
            }
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                if x != y {
                    out.push(start + i as u64);
                }
            }
        }
        out
    }
}

/// The guest address of each byte `[offset, offset + len)` of `segs` (whose total is `total`):
/// `None` when the range lies outside the list; an entry is `None` when its address does not
/// exist (the segment runs past the end of the address space).
pub fn byte_addrs(segs: &[Segment], total: u32, offset: u32, len: u32) -> Option<Vec<Option<u64>>> {
    let end = offset.checked_add(len)?;
    if end > total {
        return None;
    }
    let mut out = Vec::with_capacity(len as usize);
    let mut pos = 0u64;
    for s in segs {
        let seg_start = pos;
        let seg_end = pos + u64::from(s.len);
        pos = seg_end;
        let lo = seg_start.max(u64::from(offset));
        let hi = seg_end.min(u64::from(end));
        for p in lo..hi {
            out.push(s.addr.0.checked_add(p - seg_start));
        }
    }
    Some(out)
}

/// The set of addresses in `addrs` (ignoring nonexistent ones).
pub fn addr_set(addrs: &[Option<u64>]) -> BTreeSet<u64> {
    addrs.iter().flatten().copied().collect()
}

/// Whether every address exists and is mapped in `snap`.
pub fn all_mapped(addrs: &[Option<u64>], snap: &Snapshot) -> bool {
    addrs.iter().all(|a| a.is_some_and(|a| snap.mapped(a)))
}
