//! Guest RAM: a memfd mapped with vm-memory, plus a small allocator for guest buffers.
//!
//! The memfd is what SET_MEM_TABLE hands to the backend, so the backend maps the very same pages.
//! [`GuestRam`] is cheap to clone (it is an `Arc`); every clone sees the same memory and the same
//! allocator, so the driver, its queues and a test can all allocate from it.
//!
//! The allocator is first-fit over a sorted free list with coalescing. It never hands out the
//! first page of guest RAM, so no buffer has guest-physical address 0.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::FromRawFd;
use std::sync::{Arc, Mutex, MutexGuard};

use vm_memory::{ByteValued, Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use crate::error::MemoryError;

/// Default guest RAM size: 16 MiB.
pub const DEFAULT_MEMORY_SIZE: usize = 16 << 20;
/// Page size the layout must be aligned to.
pub const PAGE_SIZE: u64 = 4096;

/// A range of guest-physical memory.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct GuestRange {
    /// Start address.
    pub addr: GuestAddress,
    /// Length in bytes.
    pub len: u64,
}

impl GuestRange {
    /// A range of `len` bytes at `addr`.
    pub fn new(addr: u64, len: u64) -> Self {
        GuestRange {
            addr: GuestAddress(addr),
            len,
        }
    }

    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.addr.0.saturating_add(self.len)
    }

    /// The sub-range `[offset, offset + len)`, clipped to this range.
    pub fn sub(&self, offset: u64, len: u64) -> GuestRange {
        let start = offset.min(self.len);
        let len = len.min(self.len - start);
        GuestRange::new(self.addr.0 + start, len)
    }
}

/// Sorted, coalesced list of free `(start, len)` blocks.
#[derive(Debug, Default)]
struct FreeList {
    blocks: Vec<(u64, u64)>,
    allocated: u64,
}

fn align_up(v: u64, align: u64) -> Option<u64> {
    v.checked_add(align - 1).map(|x| x & !(align - 1))
}

impl FreeList {
    fn alloc(&mut self, len: u64, align: u64) -> Option<u64> {
        for i in 0..self.blocks.len() {
            let (start, blen) = self.blocks[i];
            let Some(aligned) = align_up(start, align) else {
                continue;
            };
            let end = start + blen;
            match aligned.checked_add(len) {
                Some(e) if e <= end => {}
                _ => continue,
            }
            let tail = (aligned + len, end - (aligned + len));
            let head = (start, aligned - start);
            self.blocks.remove(i);
            let mut at = i;
            if head.1 > 0 {
                self.blocks.insert(at, head);
                at += 1;
            }
            if tail.1 > 0 {
                self.blocks.insert(at, tail);
            }
            self.allocated += len;
            return Some(aligned);
        }
        None
    }

    fn free(&mut self, start: u64, len: u64) -> bool {
        let Some(end) = start.checked_add(len) else {
            return false;
        };
        let pos = self.blocks.partition_point(|&(s, _)| s < start);
        // Overlap with the previous or the next free block means a double free.
        if pos > 0 {
            let (ps, pl) = self.blocks[pos - 1];
            if ps + pl > start {
                return false;
            }
        }
        if let Some(&(ns, _)) = self.blocks.get(pos) {
            if ns < end {
                return false;
            }
        }
        self.blocks.insert(pos, (start, len));
        // Coalesce with the next block, then with the previous one.
        if pos + 1 < self.blocks.len() && self.blocks[pos + 1].0 == end {
            self.blocks[pos].1 += self.blocks[pos + 1].1;
            self.blocks.remove(pos + 1);
        }
        if pos > 0 && self.blocks[pos - 1].0 + self.blocks[pos - 1].1 == start {
            self.blocks[pos - 1].1 += self.blocks[pos].1;
            self.blocks.remove(pos);
        }
        self.allocated = self.allocated.saturating_sub(len);
        true
    }

    fn free_bytes(&self) -> u64 {
        self.blocks.iter().map(|b| b.1).sum()
    }
}

#[derive(Debug)]
struct RamInner {
    mem: GuestMemoryMmap<()>,
    regions: Vec<GuestRange>,
    alloc: Mutex<FreeList>,
}

/// Guest RAM backed by one memfd, shared with the backend through SET_MEM_TABLE.
#[derive(Clone, Debug)]
pub struct GuestRam {
    inner: Arc<RamInner>,
}

impl GuestRam {
    /// `size` bytes of guest RAM at guest-physical address 0.
    pub fn new(size: usize) -> Result<GuestRam, MemoryError> {
        GuestRam::with_layout(&[(GuestAddress(0), size)])
    }

    /// Guest RAM made of several regions (e.g. with a hole between them), all backed by one memfd
    /// at consecutive file offsets. Regions must be page-aligned, sorted and non-overlapping.
    pub fn with_layout(regions: &[(GuestAddress, usize)]) -> Result<GuestRam, MemoryError> {
        if regions.is_empty() {
            return Err(MemoryError::Layout("no regions"));
        }
        let mut prev_end = 0u64;
        let mut total = 0u64;
        for (i, &(addr, size)) in regions.iter().enumerate() {
            let size = size as u64;
            if size == 0 || size % PAGE_SIZE != 0 || addr.0 % PAGE_SIZE != 0 {
                return Err(MemoryError::Layout(
                    "regions must be non-empty and page-aligned",
                ));
            }
            if i > 0 && addr.0 < prev_end {
                return Err(MemoryError::Layout("regions must be sorted and disjoint"));
            }
            prev_end = addr
                .0
                .checked_add(size)
                .ok_or(MemoryError::Layout("region wraps the address space"))?;
            total += size;
        }

        let file = memfd("sockbypass-guest-ram")?;
        file.set_len(total).map_err(|source| MemoryError::Resize {
            size: total,
            source,
        })?;
        let file = Arc::new(file);
        let mut ranges = Vec::with_capacity(regions.len());
        let mut offset = 0u64;
        for &(addr, size) in regions {
            ranges.push((
                addr,
                size,
                Some(FileOffset::from_arc(Arc::clone(&file), offset)),
            ));
            offset += size as u64;
        }
        let mem =
            GuestMemoryMmap::<()>::from_ranges_with_files(&ranges).map_err(MemoryError::Map)?;

        let mut alloc = FreeList::default();
        let mut list = Vec::with_capacity(regions.len());
        for &(addr, size) in regions {
            let range = GuestRange::new(addr.0, size as u64);
            list.push(range);
            // Keep the first page of guest RAM out of the allocator: no buffer at address 0.
            let start = addr.0.max(PAGE_SIZE);
            if start < range.end() {
                alloc.blocks.push((start, range.end() - start));
            }
        }
        Ok(GuestRam {
            inner: Arc::new(RamInner {
                mem,
                regions: list,
                alloc: Mutex::new(alloc),
            }),
        })
    }

    /// The vm-memory view of guest RAM.
    pub fn memory(&self) -> &GuestMemoryMmap<()> {
        &self.inner.mem
    }

    /// The guest-physical regions.
    pub fn regions(&self) -> &[GuestRange] {
        &self.inner.regions
    }

    /// Total bytes of guest RAM.
    pub fn size(&self) -> u64 {
        self.inner.regions.iter().map(|r| r.len).sum()
    }

    /// The address of guest-physical `addr` in this process (what vhost-user calls the
    /// frontend's user address).
    pub fn host_address(&self, addr: GuestAddress) -> Result<u64, MemoryError> {
        self.inner
            .mem
            .get_host_address(addr)
            .map(|p| p as u64)
            .map_err(|source| MemoryError::Access {
                addr: addr.0,
                source,
            })
    }

    fn lock(&self) -> MutexGuard<'_, FreeList> {
        // The allocator has no invariants a panic could break half-way, so a poisoned lock is
        // still usable.
        self.inner
            .alloc
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Allocates `len` bytes aligned to `align` (a power of two). The memory is not cleared.
    pub fn alloc(&self, len: u64, align: u64) -> Result<GuestRange, MemoryError> {
        if len == 0 || align == 0 || !align.is_power_of_two() {
            return Err(MemoryError::BadRequest { len, align });
        }
        let addr = self.lock().alloc(len, align);
        addr.map(|addr| GuestRange::new(addr, len))
            .ok_or(MemoryError::OutOfMemory { len, align })
    }

    /// Allocates `len` bytes aligned to `align` and fills them with zeroes.
    pub fn alloc_zeroed(&self, len: u64, align: u64) -> Result<GuestRange, MemoryError> {
        let range = self.alloc(len, align)?;
        if let Err(e) = self.fill(range, 0) {
            self.free(range)?;
            return Err(e);
        }
        Ok(range)
    }

    /// Returns a range obtained from [`GuestRam::alloc`].
    pub fn free(&self, range: GuestRange) -> Result<(), MemoryError> {
        let in_ram = self
            .inner
            .regions
            .iter()
            .any(|r| range.addr.0 >= r.addr.0 && range.end() <= r.end());
        if range.len == 0 || !in_ram || !self.lock().free(range.addr.0, range.len) {
            return Err(MemoryError::BadFree {
                addr: range.addr.0,
                len: range.len,
            });
        }
        Ok(())
    }

    /// Free bytes left in the allocator.
    pub fn free_bytes(&self) -> u64 {
        self.lock().free_bytes()
    }

    /// Bytes currently handed out by the allocator.
    pub fn allocated_bytes(&self) -> u64 {
        self.lock().allocated
    }

    /// Writes `data` at `addr`.
    pub fn write(&self, addr: GuestAddress, data: &[u8]) -> Result<(), MemoryError> {
        self.inner
            .mem
            .write_slice(data, addr)
            .map_err(|source| MemoryError::Access {
                addr: addr.0,
                source,
            })
    }

    /// Reads `buf.len()` bytes at `addr`.
    pub fn read(&self, addr: GuestAddress, buf: &mut [u8]) -> Result<(), MemoryError> {
        self.inner
            .mem
            .read_slice(buf, addr)
            .map_err(|source| MemoryError::Access {
                addr: addr.0,
                source,
            })
    }

    /// Writes a plain-data object at `addr`.
    pub fn write_obj<T: ByteValued>(&self, addr: GuestAddress, val: T) -> Result<(), MemoryError> {
        self.write(addr, val.as_slice())
    }

    /// Reads a plain-data object at `addr`.
    pub fn read_obj<T: ByteValued + Default>(&self, addr: GuestAddress) -> Result<T, MemoryError> {
        let mut val = T::default();
        self.read(addr, val.as_mut_slice())?;
        Ok(val)
    }

    /// Fills `range` with `byte`.
    pub fn fill(&self, range: GuestRange, byte: u8) -> Result<(), MemoryError> {
        const CHUNK: usize = 4096;
        let buf = [byte; CHUNK];
        let mut off = 0u64;
        while off < range.len {
            let n = (range.len - off).min(CHUNK as u64) as usize;
            self.write(GuestAddress(range.addr.0 + off), &buf[..n])?;
            off += n as u64;
        }
        Ok(())
    }
}

fn memfd(name: &str) -> Result<File, MemoryError> {
    let name = CString::new(name).map_err(|_| MemoryError::Layout("memfd name has a NUL"))?;
    // SAFETY: `name` is a valid NUL-terminated string that outlives the call; memfd_create reads
    // it and has no other memory-safety preconditions.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(MemoryError::Memfd(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just returned by memfd_create, is valid and owned by nobody else, so the
    // `File` becomes its only owner.
    Ok(unsafe { File::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryRegion;

    #[test]
    fn memory_is_a_shared_memfd_mapping() {
        let ram = GuestRam::new(1 << 20).expect("ram");
        assert_eq!(ram.size(), 1 << 20);
        let region = ram.memory().find_region(GuestAddress(0)).expect("region");
        let fo = region.file_offset().expect("memfd backed");
        assert_eq!(fo.start(), 0);
        ram.write(GuestAddress(0x2000), b"hello").expect("write");
        // Read the bytes back through the file: the mapping is MAP_SHARED.
        let mut back = [0u8; 5];
        std::os::unix::fs::FileExt::read_exact_at(fo.file(), &mut back, 0x2000).expect("pread");
        assert_eq!(&back, b"hello");
        assert_ne!(ram.host_address(GuestAddress(0)).expect("hva"), 0);
        assert!(ram.host_address(GuestAddress(1 << 20)).is_err());
    }

    #[test]
    fn allocator_aligns_coalesces_and_skips_page_zero() {
        let ram = GuestRam::new(64 * 1024).expect("ram");
        let total = ram.free_bytes();
        assert_eq!(total, 60 * 1024);
        let a = ram.alloc(10, 1).expect("a");
        assert_eq!(a.addr.0, PAGE_SIZE);
        let b = ram.alloc(100, 64).expect("b");
        assert_eq!(b.addr.0 % 64, 0);
        assert!(b.addr.0 >= a.end());
        let c = ram.alloc(4096, 4096).expect("c");
        assert_eq!(c.addr.0 % 4096, 0);
        assert_eq!(ram.allocated_bytes(), 10 + 100 + 4096);
        ram.free(b).expect("free b");
        assert!(matches!(ram.free(b), Err(MemoryError::BadFree { .. })));
        ram.free(a).expect("free a");
        ram.free(c).expect("free c");
        assert_eq!(ram.free_bytes(), total);
        assert_eq!(ram.allocated_bytes(), 0);
        // Everything coalesced back into one block: the whole space can be allocated again.
        let all = ram.alloc(total, 1).expect("all");
        assert!(matches!(
            ram.alloc(1, 1),
            Err(MemoryError::OutOfMemory { .. })
        ));
        ram.free(all).expect("free all");
    }

    #[test]
    fn allocator_rejects_bad_requests() {
        let ram = GuestRam::new(64 * 1024).expect("ram");
        assert!(matches!(
            ram.alloc(0, 8),
            Err(MemoryError::BadRequest { .. })
        ));
        assert!(matches!(
            ram.alloc(8, 3),
            Err(MemoryError::BadRequest { .. })
        ));
        assert!(ram.free(GuestRange::new(0x100_0000, 8)).is_err());
        // Part of an allocated range that overlaps a free block.
        let a = ram.alloc(64, 8).expect("a");
        assert!(ram.free(GuestRange::new(a.addr.0, 128)).is_err());
    }

    #[test]
    fn layout_with_a_hole() {
        let ram = GuestRam::with_layout(&[
            (GuestAddress(0), 0x10000),
            (GuestAddress(0x100000), 0x10000),
        ])
        .expect("ram");
        assert_eq!(ram.memory().num_regions(), 2);
        assert_eq!(ram.size(), 0x20000);
        ram.write(GuestAddress(0x100010), b"x")
            .expect("second region");
        assert!(ram.write(GuestAddress(0x20000), b"x").is_err());
        // An allocation never straddles the hole.
        let a = ram.alloc(0xf000, 1).expect("fills region 0");
        assert!(a.end() <= 0x10000);
        let b = ram.alloc(0x100, 1).expect("region 1");
        assert!(b.addr.0 >= 0x100000);
        assert!(GuestRam::with_layout(&[(GuestAddress(0), 100)]).is_err());
        assert!(GuestRam::with_layout(&[
            (GuestAddress(0x1000), 0x2000),
            (GuestAddress(0x2000), 0x1000)
        ])
        .is_err());
    }

    #[test]
    fn objects_and_fill_round_trip() {
        let ram = GuestRam::new(64 * 1024).expect("ram");
        let r = ram.alloc_zeroed(32, 8).expect("alloc");
        ram.write_obj(r.addr, 0x1122_3344u32).expect("write");
        assert_eq!(ram.read_obj::<u32>(r.addr).expect("read"), 0x1122_3344);
        ram.fill(r, 0xab).expect("fill");
        let mut buf = [0u8; 32];
        ram.read(r.addr, &mut buf).expect("read");
        assert!(buf.iter().all(|&b| b == 0xab));
        assert_eq!(r.sub(30, 10), GuestRange::new(r.addr.0 + 30, 2));
    }
}
