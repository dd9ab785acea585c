//! How a packet is laid out in TX descriptors, and writing it into guest memory.
//!
//! A packet is the 44-byte header followed by the payload. [`TxLayout`] decides how those bytes
//! are cut into descriptors; every descriptor of a multi-descriptor layout gets its own guest
//! allocation with a gap after it, so no two descriptors are adjacent in guest memory (a device
//! that wrongly assumes contiguity reads the gap, not the next piece).

use vm_memory::GuestAddress;

use sockbypass_wire::consts::HEADER_SIZE;

use crate::error::{DriverError, MemoryError, QueueError};
use crate::guest_memory::{GuestRam, GuestRange};
use crate::split_queue::{Buffer, SplitQueue};

/// Bytes left unused after each piece of a multi-descriptor layout.
const GAP: u64 = 64;

/// How a TX packet is cut into descriptors.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum TxLayout {
    /// Header and payload in one descriptor.
    #[default]
    Single,
    /// The header alone in the first descriptor, the payload split as evenly as possible over
    /// `payload_descs` more (fewer if the payload has fewer bytes; none for a control packet).
    Split {
        /// Descriptors for the payload (at least 1).
        payload_descs: usize,
    },
    /// Like [`TxLayout::Split`], but through an indirect descriptor table.
    Indirect {
        /// Descriptors for the payload (at least 1).
        payload_descs: usize,
    },
    /// Descriptors of exactly these sizes, filled with the packet bytes in order. Sizes adding up
    /// to less than the packet truncate it; extra room is zero-filled. Zero sizes give
    /// zero-length descriptors. For hostile tests (a header split across descriptors, a chain
    /// shorter than the header says...).
    Custom {
        /// Size of each descriptor.
        sizes: Vec<u32>,
        /// Whether to go through an indirect table.
        indirect: bool,
    },
}

impl TxLayout {
    /// One layout of each kind but [`TxLayout::Custom`]: one descriptor, header apart from one
    /// and from three payload descriptors, and an indirect table. For tests that try them all.
    pub fn each_kind() -> [TxLayout; 4] {
        [
            TxLayout::Single,
            TxLayout::Split { payload_descs: 1 },
            TxLayout::Split { payload_descs: 3 },
            TxLayout::Indirect { payload_descs: 2 },
        ]
    }

    /// The descriptor sizes for a packet of `total` bytes, and whether they go indirect.
    pub fn plan(&self, total: usize) -> Result<(Vec<u32>, bool), DriverError> {
        let total32 = u32::try_from(total).map_err(|_| DriverError::TooBig {
            bytes: total,
            descriptors: 1,
        })?;
        match self {
            TxLayout::Single => Ok((vec![total32], false)),
            TxLayout::Split { payload_descs } => Ok((split(total32, *payload_descs)?, false)),
            TxLayout::Indirect { payload_descs } => Ok((split(total32, *payload_descs)?, true)),
            TxLayout::Custom { sizes, indirect } => {
                if sizes.is_empty() {
                    return Err(DriverError::BadLayout("a custom layout needs a descriptor"));
                }
                Ok((sizes.clone(), *indirect))
            }
        }
    }
}

fn split(total: u32, payload_descs: usize) -> Result<Vec<u32>, DriverError> {
    if payload_descs == 0 {
        return Err(DriverError::BadLayout("payload_descs must be at least 1"));
    }
    let hdr = HEADER_SIZE as u32;
    if total <= hdr {
        return Ok(vec![total]);
    }
    let payload = total - hdr;
    let n = u32::try_from(payload_descs)
        .unwrap_or(u32::MAX)
        .min(payload);
    let (base, extra) = (payload / n, payload % n);
    let mut sizes = Vec::with_capacity(n as usize + 1);
    sizes.push(hdr);
    sizes.extend((0..n).map(|i| base + u32::from(i < extra)));
    Ok(sizes)
}

/// A packet posted to the TX queue: its head and the guest memory to free once it is used.
#[derive(Debug)]
pub(crate) struct PostedTx {
    pub head: u16,
    pub allocs: Vec<GuestRange>,
}

/// Whether an error only means "no room right now" (queue or guest memory full).
pub(crate) fn is_no_room(e: &DriverError) -> bool {
    matches!(
        e,
        DriverError::Queue(QueueError::Full { .. })
            | DriverError::Queue(QueueError::Memory(MemoryError::OutOfMemory { .. }))
            | DriverError::Memory(MemoryError::OutOfMemory { .. })
    )
}

/// Writes `parts` (concatenated) into fresh guest buffers cut as `layout` says and adds them to
/// `queue` as one chain. Does not kick. On error nothing stays allocated or queued.
pub(crate) fn post(
    ram: &GuestRam,
    queue: &mut SplitQueue,
    parts: &[&[u8]],
    layout: &TxLayout,
) -> Result<PostedTx, DriverError> {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let (sizes, indirect) = layout.plan(total)?;
    let needed = if indirect { 1 } else { sizes.len() };
    if needed > usize::from(queue.size()) {
        return Err(DriverError::TooBig {
            bytes: total,
            descriptors: needed,
        });
    }
    if queue.num_free() < needed {
        return Err(DriverError::Queue(QueueError::Full {
            needed,
            free: queue.num_free(),
        }));
    }
    let mut allocs = Vec::with_capacity(sizes.len());
    let result = fill(ram, parts, &sizes, &mut allocs).and_then(|buffers| {
        let head = if indirect {
            queue.add_indirect_chain(&buffers)?
        } else {
            queue.add_chain(&buffers)?
        };
        Ok(head)
    });
    match result {
        Ok(head) => Ok(PostedTx { head, allocs }),
        Err(e) => {
            for a in allocs {
                ram.free(a)?;
            }
            Err(e)
        }
    }
}

fn fill(
    ram: &GuestRam,
    parts: &[&[u8]],
    sizes: &[u32],
    allocs: &mut Vec<GuestRange>,
) -> Result<Vec<Buffer>, DriverError> {
    let single = sizes.len() == 1;
    let mut src = Source::new(parts);
    let mut buffers = Vec::with_capacity(sizes.len());
    for &size in sizes {
        let len = u64::from(size);
        // Zero-length descriptors still get a (1-byte) allocation, so every address is unique.
        let room = if single { len.max(1) } else { len.max(1) + GAP };
        let range = ram.alloc(room, 8)?;
        allocs.push(range);
        let mut off = 0u64;
        while off < len {
            let want = usize::try_from(len - off).unwrap_or(usize::MAX);
            let addr = GuestAddress(range.addr.0 + off);
            match src.next_chunk(want) {
                Some(chunk) => {
                    ram.write(addr, chunk)?;
                    off += chunk.len() as u64;
                }
                None => {
                    ram.fill(GuestRange::new(addr.0, len - off), 0)?;
                    off = len;
                }
            }
        }
        buffers.push(Buffer::readable(range.addr, size));
    }
    Ok(buffers)
}

/// Walks several byte slices as one.
struct Source<'a> {
    parts: &'a [&'a [u8]],
    idx: usize,
    off: usize,
}

impl<'a> Source<'a> {
    fn new(parts: &'a [&'a [u8]]) -> Self {
        Source {
            parts,
            idx: 0,
            off: 0,
        }
    }

    fn next_chunk(&mut self, max: usize) -> Option<&'a [u8]> {
        while let Some(part) = self.parts.get(self.idx) {
            if self.off < part.len() {
                let n = (part.len() - self.off).min(max);
                let chunk = &part[self.off..self.off + n];
                self.off += n;
                return Some(chunk);
            }
            self.idx += 1;
            self.off = 0;
        }
        None
    }
}

/// Reads the first `len` bytes of a chain's buffers.
pub(crate) fn read_buffers(
    ram: &GuestRam,
    buffers: &[Buffer],
    len: usize,
) -> Result<Vec<u8>, MemoryError> {
    let mut out = vec![0u8; len];
    let mut done = 0usize;
    for b in buffers {
        if done == len {
            break;
        }
        let n = (b.len as usize).min(len - done);
        ram.read(b.addr, &mut out[done..done + n])?;
        done += n;
    }
    out.truncate(done);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans() {
        assert_eq!(
            TxLayout::Single.plan(100).expect("plan"),
            (vec![100], false)
        );
        assert_eq!(
            TxLayout::Split { payload_descs: 3 }
                .plan(44 + 10)
                .expect("plan"),
            (vec![44, 4, 3, 3], false)
        );
        // Fewer payload bytes than descriptors: one byte each.
        assert_eq!(
            TxLayout::Indirect { payload_descs: 5 }
                .plan(44 + 2)
                .expect("plan"),
            (vec![44, 1, 1], true)
        );
        // Control packet: the header alone.
        assert_eq!(
            TxLayout::Split { payload_descs: 4 }.plan(44).expect("plan"),
            (vec![44], false)
        );
        assert!(TxLayout::Split { payload_descs: 0 }.plan(50).is_err());
        assert!(TxLayout::Custom {
            sizes: vec![],
            indirect: false
        }
        .plan(50)
        .is_err());
    }

    #[test]
    fn post_writes_bytes_across_separate_descriptors() {
        let ram = GuestRam::new(1 << 20).expect("ram");
        let mut q = SplitQueue::new(&ram, 16, false).expect("queue");
        let hdr = [1u8; 44];
        let payload: Vec<u8> = (0..10u8).collect();
        let before = ram.allocated_bytes();
        let posted = post(
            &ram,
            &mut q,
            &[&hdr, &payload],
            &TxLayout::Custom {
                sizes: vec![20, 30, 0, 10],
                indirect: false,
            },
        )
        .expect("post");
        assert_eq!(posted.allocs.len(), 4);
        // Pieces are not adjacent.
        for w in posted.allocs.windows(2) {
            assert!(w[0].addr.0 + 20 < w[1].addr.0 || w[1].end() <= w[0].addr.0);
        }
        let descs: Vec<_> = (0..4u16)
            .map(|i| q.read_descriptor(posted.head + i).expect("desc"))
            .collect();
        assert_eq!(
            descs.iter().map(|d| d.len).collect::<Vec<_>>(),
            vec![20, 30, 0, 10]
        );
        let bufs: Vec<Buffer> = descs
            .iter()
            .map(|d| Buffer::readable(GuestAddress(d.addr), d.len))
            .collect();
        let bytes = read_buffers(&ram, &bufs, 60).expect("read");
        let mut want = hdr.to_vec();
        want.extend_from_slice(&payload);
        want.extend_from_slice(&[0u8; 6]);
        assert_eq!(bytes, want);
        for a in posted.allocs {
            ram.free(a).expect("free");
        }
        assert_eq!(ram.allocated_bytes(), before);
    }

    #[test]
    fn post_fails_cleanly_when_the_queue_is_full() {
        let ram = GuestRam::new(1 << 20).expect("ram");
        let mut q = SplitQueue::new(&ram, 4, false).expect("queue");
        let before = ram.allocated_bytes();
        let err = post(
            &ram,
            &mut q,
            &[&[0u8; 100]],
            &TxLayout::Split { payload_descs: 4 },
        )
        .expect_err("5 descriptors never fit 4");
        assert!(matches!(err, DriverError::TooBig { descriptors: 5, .. }));
        post(
            &ram,
            &mut q,
            &[&[0u8; 100]],
            &TxLayout::Split { payload_descs: 2 },
        )
        .expect("3 fit");
        let err = post(
            &ram,
            &mut q,
            &[&[0u8; 100]],
            &TxLayout::Split { payload_descs: 1 },
        )
        .expect_err("2 do not fit in the 1 left");
        assert!(is_no_room(&err));
        assert_eq!(q.num_free(), 1);
        assert!(ram.allocated_bytes() > before);
    }
}
