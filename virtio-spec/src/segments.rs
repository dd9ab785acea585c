//! A bounded list of guest buffers, and the copies the device makes through it.
//!
//! A [`Segments`] list lives on the stack (at most [`MAX_SEGMENTS`] entries), so parsing a chain
//! and copying its payload allocates nothing. [`copy_between`] moves bytes from one guest's
//! buffers straight into another guest's buffers: the one copy the switch makes per byte.

use std::io;

use arrayvec::ArrayVec;
use vm_memory::bitmap::BitmapSlice;
use vm_memory::{
    Bytes, GuestAddress, GuestMemory, GuestMemoryBackend, GuestMemoryError, GuestMemoryRegion,
    MemoryRegionAddress, Permissions, ReadVolatile, VolatileMemoryError, VolatileSlice,
    WriteVolatile,
};

use crate::consts::MAX_SEGMENTS;

/// One guest buffer: `len` bytes at `addr` in guest-physical memory.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Guest-physical start address.
    pub addr: GuestAddress,
    /// Length in bytes.
    pub len: u32,
}

/// Errors from building or using a [`Segments`] list.
#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    /// The list already holds the most segments a chain may have.
    #[error("more than {max} descriptors in one chain")]
    TooMany {
        /// The cap, [`MAX_SEGMENTS`].
        max: usize,
    },
    /// The total length of the buffers does not fit in 32 bits.
    #[error("buffer lengths add up to more than 4 GiB")]
    LengthOverflow,
    /// A range of the list lies outside it.
    #[error("range {offset}+{len} lies outside a {total}-byte buffer list")]
    OutOfBounds {
        /// Start of the range within the list.
        offset: u32,
        /// Length of the range.
        len: u32,
        /// Total length of the list.
        total: u32,
    },
    /// A buffer is not backed by guest memory.
    #[error("guest memory {addr:#x}+{len} is not mapped")]
    Unmapped {
        /// Guest-physical address of the access.
        addr: u64,
        /// Length of the access.
        len: usize,
        /// What vm-memory reported.
        #[source]
        source: GuestMemoryError,
    },
    /// Reading from or writing to a host file descriptor failed.
    #[error("host I/O on guest memory failed")]
    Io(#[source] io::Error),
}

/// A bounded list of guest buffers that together form one packet's payload or buffer space.
#[derive(Clone, Debug, Default)]
pub struct Segments {
    segs: ArrayVec<Segment, MAX_SEGMENTS>,
    total: u32,
}

impl Segments {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Empties the list, keeping it for reuse.
    pub fn clear(&mut self) {
        self.segs.clear();
        self.total = 0;
    }

    /// Appends a buffer. Zero-length buffers are skipped.
    pub fn push(&mut self, addr: GuestAddress, len: u32) -> Result<(), SegmentError> {
        if len == 0 {
            return Ok(());
        }
        let total = self
            .total
            .checked_add(len)
            .ok_or(SegmentError::LengthOverflow)?;
        self.segs
            .try_push(Segment { addr, len })
            .map_err(|_| SegmentError::TooMany { max: MAX_SEGMENTS })?;
        self.total = total;
        Ok(())
    }

    /// Total bytes in the list.
    pub fn len(&self) -> u32 {
        self.total
    }

    /// Whether the list holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// The buffers, in order.
    pub fn iter(&self) -> impl Iterator<Item = &Segment> {
        self.segs.iter()
    }

    /// Number of buffers.
    pub fn count(&self) -> usize {
        self.segs.len()
    }

    /// The list starting `offset` bytes in and holding at most `len` bytes.
    pub fn window(&self, offset: u32, len: u32) -> Result<Segments, SegmentError> {
        self.check(offset, len)?;
        let mut out = Segments::new();
        let mut cur = self.cursor(offset);
        let mut left = len;
        while left > 0 {
            let (seg, off) = match cur.current(&self.segs) {
                Some(v) => v,
                None => break,
            };
            let n = (seg.len - off).min(left);
            // `addr + off` stays inside a buffer the guest already described; `checked_add`
            // still guards against a wrapped address.
            let addr = seg
                .addr
                .0
                .checked_add(u64::from(off))
                .ok_or(SegmentError::LengthOverflow)?;
            out.push(GuestAddress(addr), n)?;
            cur.advance(&self.segs, n);
            left -= n;
        }
        Ok(out)
    }

    /// Narrows the list in place to `len` bytes from `offset` on: the same bytes
    /// [`Segments::window`] describes, without building a second list.
    pub fn narrow(&mut self, offset: u32, len: u32) -> Result<(), SegmentError> {
        self.check(offset, len)?;
        let cur = self.cursor(offset);
        // Segments wholly before `offset` go; the first kept one starts `cur.off` bytes in.
        self.segs.drain(..cur.idx);
        if let Some(first) = self.segs.first_mut() {
            first.addr = GuestAddress(
                first
                    .addr
                    .0
                    .checked_add(u64::from(cur.off))
                    .ok_or(SegmentError::LengthOverflow)?,
            );
            first.len -= cur.off;
        }
        // Keep segments until `len` bytes are covered; cut the last one short.
        let mut left = len;
        let mut keep = 0;
        for seg in self.segs.iter_mut() {
            if left == 0 {
                break;
            }
            seg.len = seg.len.min(left);
            left -= seg.len;
            keep += 1;
        }
        self.segs.truncate(keep);
        self.total = len;
        Ok(())
    }

    fn check(&self, offset: u32, len: u32) -> Result<(), SegmentError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.total => Ok(()),
            _ => Err(SegmentError::OutOfBounds {
                offset,
                len,
                total: self.total,
            }),
        }
    }

    fn cursor(&self, offset: u32) -> Cursor {
        let mut cur = Cursor { idx: 0, off: 0 };
        cur.advance(&self.segs, offset);
        cur
    }

    /// Copies `buf.len()` bytes starting `offset` bytes into the list out of guest memory.
    pub fn read_bytes<M: GuestMemory + ?Sized>(
        &self,
        mem: &M,
        offset: u32,
        buf: &mut [u8],
    ) -> Result<(), SegmentError> {
        let len = len_u32(buf.len())?;
        if let Some((region, at)) = self.one_region(mem, offset, len) {
            if region.read_slice(buf, at).is_ok() {
                return Ok(());
            }
        }
        let mut done = 0usize;
        self.for_each_slice(mem, offset, len, Permissions::Read, |slice| {
            let n = slice.copy_to(&mut buf[done..done + slice.len()]);
            done += n;
            Ok(n)
        })
        .map(|_| ())
    }

    /// Copies `buf` into guest memory, starting `offset` bytes into the list.
    pub fn write_bytes<M: GuestMemory + ?Sized>(
        &self,
        mem: &M,
        offset: u32,
        buf: &[u8],
    ) -> Result<(), SegmentError> {
        let len = len_u32(buf.len())?;
        if let Some((region, at)) = self.one_region(mem, offset, len) {
            if region.write_slice(buf, at).is_ok() {
                return Ok(());
            }
        }
        let mut done = 0usize;
        self.for_each_slice(mem, offset, len, Permissions::Write, |slice| {
            slice.copy_from(&buf[done..done + slice.len()]);
            done += slice.len();
            Ok(slice.len())
        })
        .map(|_| ())
    }

    /// Writes up to `len` bytes of the list, from `offset` on, into a host file descriptor.
    ///
    /// Stops early at a short write, or at `WouldBlock` after some bytes went out; returns how
    /// many bytes went out. `WouldBlock` before any byte is an error ([`io_would_block`]).
    pub fn write_to<M: GuestMemory + ?Sized, W: WriteVolatile>(
        &self,
        mem: &M,
        offset: u32,
        len: u32,
        dst: &mut W,
    ) -> Result<u32, SegmentError> {
        let mut moved = 0usize;
        self.for_each_slice(mem, offset, len, Permissions::Read, |slice| {
            let r = dst.write_volatile(&slice);
            host_io_result(r, &mut moved)
        })
    }

    /// Reads up to `len` bytes from a host file descriptor into the list, from `offset` on.
    ///
    /// Stops early at a short read, end of file, or `WouldBlock` after some bytes came in; returns
    /// how many bytes came in, 0 meaning end of file. `WouldBlock` before any byte is an error
    /// ([`io_would_block`]).
    pub fn read_from<M: GuestMemory + ?Sized, R: ReadVolatile>(
        &self,
        mem: &M,
        offset: u32,
        len: u32,
        src: &mut R,
    ) -> Result<u32, SegmentError> {
        let mut moved = 0usize;
        self.for_each_slice(mem, offset, len, Permissions::Write, |mut slice| {
            let r = src.read_volatile(&mut slice);
            host_io_result(r, &mut moved)
        })
    }

    /// Walks `[offset, offset + len)` as volatile slices. `f` returns how many bytes of the slice
    /// it used; a short count ends the walk. Returns the bytes used in total.
    /// The fast path of the copies: when `len` bytes from `offset` on lie in one segment, and
    /// that piece lies in one region of plain guest memory (no IOMMU), the region and the
    /// address in it. One region lookup instead of vm-memory's slice iterator; `None` sends the
    /// caller down the general path (which also reports errors).
    fn one_region<'m, M: GuestMemory + ?Sized>(
        &self,
        mem: &'m M,
        offset: u32,
        len: u32,
    ) -> Option<(
        &'m <M::PhysicalMemory as GuestMemoryBackend>::R,
        MemoryRegionAddress,
    )> {
        self.check(offset, len).ok()?;
        let (seg, off) = self.cursor(offset).current(&self.segs)?;
        if seg.len - off < len {
            return None;
        }
        region_of(mem, seg.addr.0.checked_add(u64::from(off))?, len)
    }

    fn for_each_slice<M, F>(
        &self,
        mem: &M,
        offset: u32,
        len: u32,
        access: Permissions,
        mut f: F,
    ) -> Result<u32, SegmentError>
    where
        M: GuestMemory + ?Sized,
        F: FnMut(
            VolatileSlice<'_, vm_memory::bitmap::BS<'_, M::Bitmap>>,
        ) -> Result<usize, SegmentError>,
    {
        self.check(offset, len)?;
        let mut cur = self.cursor(offset);
        let mut left = len;
        let mut used_total = 0u32;
        while left > 0 {
            let Some((seg, off)) = cur.current(&self.segs) else {
                break;
            };
            let want = (seg.len - off).min(left);
            let addr = byte_addr(seg.addr, off, want)?;
            let slices = mem
                .get_slices(addr, want as usize, access)
                .map_err(|source| unmapped(addr, want as usize, source))?;
            for slice in slices {
                let slice = slice.map_err(|source| unmapped(addr, want as usize, source))?;
                let slen = slice.len();
                let used = f(slice)?;
                let used32 = len_u32(used)?;
                used_total += used32;
                left -= used32;
                cur.advance(&self.segs, used32);
                if used < slen {
                    return Ok(used_total);
                }
            }
        }
        Ok(used_total)
    }
}

/// Copies `len` bytes from `src` (in `src_mem`, starting `src_off` in) to `dst` (in `dst_mem`,
/// starting `dst_off` in). This is the switch's one copy: guest memory to guest memory, with no
/// buffer in between.
pub fn copy_between<MS, MD>(
    src_mem: &MS,
    src: &Segments,
    src_off: u32,
    dst_mem: &MD,
    dst: &Segments,
    dst_off: u32,
    len: u32,
) -> Result<(), SegmentError>
where
    MS: GuestMemory + ?Sized,
    MD: GuestMemory + ?Sized,
{
    src.check(src_off, len)?;
    dst.check(dst_off, len)?;
    let mut sc = src.cursor(src_off);
    let mut dc = dst.cursor(dst_off);
    let mut left = len;
    while left > 0 {
        let (Some((sseg, soff)), Some((dseg, doff))) =
            (sc.current(&src.segs), dc.current(&dst.segs))
        else {
            break;
        };
        let want = (sseg.len - soff).min(dseg.len - doff).min(left);
        let n32 = match copy_in_regions(src_mem, sseg, soff, dst_mem, dseg, doff, want) {
            Some(n) => n,
            None => {
                let s = first_slice(src_mem, sseg.addr, soff, want, Permissions::Read)?;
                let d = first_slice(dst_mem, dseg.addr, doff, want, Permissions::Write)?;
                let n = s.len().min(d.len());
                s.subslice(0, n)
                    .map_err(volatile_oob)?
                    .copy_to_volatile_slice(d.subslice(0, n).map_err(volatile_oob)?);
                len_u32(n)?
            }
        };
        sc.advance(&src.segs, n32);
        dc.advance(&dst.segs, n32);
        left -= n32;
    }
    Ok(())
}

/// The first contiguous slice of `want` bytes at `base + off` (it can be shorter when the range
/// crosses a guest memory region boundary).
/// The fast path of [`copy_between`]: `want` bytes when both pieces lie in one region each of
/// plain guest memory; `None` sends the caller down the general path.
fn copy_in_regions<MS, MD>(
    src_mem: &MS,
    sseg: Segment,
    soff: u32,
    dst_mem: &MD,
    dseg: Segment,
    doff: u32,
    want: u32,
) -> Option<u32>
where
    MS: GuestMemory + ?Sized,
    MD: GuestMemory + ?Sized,
{
    let (sr, sat) = region_of(src_mem, sseg.addr.0.checked_add(u64::from(soff))?, want)?;
    let (dr, dat) = region_of(dst_mem, dseg.addr.0.checked_add(u64::from(doff))?, want)?;
    let s = sr.get_slice(sat, want as usize).ok()?;
    let d = dr.get_slice(dat, want as usize).ok()?;
    s.copy_to_volatile_slice(d);
    Some(want)
}

/// The region of plain guest memory (no IOMMU) holding all of `len` bytes at `addr`, and the
/// address in it.
pub(crate) fn region_of<M: GuestMemory + ?Sized>(
    mem: &M,
    addr: u64,
    len: u32,
) -> Option<(
    &<M::PhysicalMemory as GuestMemoryBackend>::R,
    MemoryRegionAddress,
)> {
    let region = mem.physical_memory()?.find_region(GuestAddress(addr))?;
    let at = addr - region.start_addr().0;
    (at + u64::from(len) <= region.len()).then_some((region, MemoryRegionAddress(at)))
}

fn first_slice<M: GuestMemory + ?Sized>(
    mem: &M,
    base: GuestAddress,
    off: u32,
    want: u32,
    access: Permissions,
) -> Result<VolatileSlice<'_, vm_memory::bitmap::BS<'_, M::Bitmap>>, SegmentError>
where
    for<'a> vm_memory::bitmap::BS<'a, M::Bitmap>: BitmapSlice,
{
    let addr = byte_addr(base, off, want)?;
    let mut it = mem
        .get_slices(addr, want as usize, access)
        .map_err(|source| unmapped(addr, want as usize, source))?;
    match it.next() {
        Some(Ok(slice)) => Ok(slice),
        Some(Err(source)) => Err(unmapped(addr, want as usize, source)),
        None => Err(SegmentError::Unmapped {
            addr: addr.0,
            len: want as usize,
            source: GuestMemoryError::InvalidGuestAddress(addr),
        }),
    }
}

/// The address `off` bytes into a buffer starting at `base`. A buffer that runs past the top of
/// the address space (a list built by hand; a parsed chain never has one) does not wrap around
/// to address 0: the bytes past the top are unmapped.
fn byte_addr(base: GuestAddress, off: u32, want: u32) -> Result<GuestAddress, SegmentError> {
    base.0
        .checked_add(u64::from(off))
        .map(GuestAddress)
        .ok_or(SegmentError::Unmapped {
            addr: base.0,
            len: want as usize,
            source: GuestMemoryError::InvalidGuestAddress(base),
        })
}

fn unmapped(addr: GuestAddress, len: usize, source: GuestMemoryError) -> SegmentError {
    SegmentError::Unmapped {
        addr: addr.0,
        len,
        source,
    }
}

fn volatile_oob(e: VolatileMemoryError) -> SegmentError {
    SegmentError::Io(io::Error::other(e))
}

/// Maps one host read/write: `WouldBlock` after some progress just ends the walk.
fn host_io_result(
    r: Result<usize, VolatileMemoryError>,
    moved: &mut usize,
) -> Result<usize, SegmentError> {
    match r {
        Ok(n) => {
            *moved += n;
            Ok(n)
        }
        Err(VolatileMemoryError::IOError(io))
            if io.kind() == io::ErrorKind::WouldBlock && *moved > 0 =>
        {
            Ok(0)
        }
        Err(VolatileMemoryError::IOError(io)) => Err(SegmentError::Io(io)),
        Err(other) => Err(SegmentError::Io(io::Error::other(other))),
    }
}

/// Whether a host I/O error from [`Segments::write_to`] / [`Segments::read_from`] only means
/// "try again later".
pub fn io_would_block(e: &SegmentError) -> bool {
    matches!(e, SegmentError::Io(io) if io.kind() == io::ErrorKind::WouldBlock)
}

fn len_u32(n: usize) -> Result<u32, SegmentError> {
    u32::try_from(n).map_err(|_| SegmentError::LengthOverflow)
}

/// A position inside a [`Segments`] list.
#[derive(Copy, Clone, Debug)]
struct Cursor {
    idx: usize,
    off: u32,
}

impl Cursor {
    fn current(&self, segs: &[Segment]) -> Option<(Segment, u32)> {
        segs.get(self.idx).map(|s| (*s, self.off))
    }

    fn advance(&mut self, segs: &[Segment], mut n: u32) {
        while n > 0 {
            let Some(seg) = segs.get(self.idx) else {
                return;
            };
            let room = seg.len - self.off;
            if n < room {
                self.off += n;
                return;
            }
            n -= room;
            self.idx += 1;
            self.off = 0;
        }
        // Land on the next buffer rather than at the end of a full one.
        if let Some(seg) = segs.get(self.idx) {
            if self.off == seg.len {
                self.idx += 1;
                self.off = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryMmap};

    fn mem() -> GuestMemoryMmap<()> {
        GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 0x10000),
            (GuestAddress(0x10000), 0x10000),
        ])
        .expect("anonymous guest memory")
    }

    fn segs(list: &[(u64, u32)]) -> Segments {
        let mut s = Segments::new();
        for &(a, l) in list {
            s.push(GuestAddress(a), l).expect("fits");
        }
        s
    }

    #[test]
    fn push_caps_count_and_skips_empty_buffers() {
        let mut s = Segments::new();
        s.push(GuestAddress(0), 0).expect("empty is fine");
        assert_eq!(s.count(), 0);
        for i in 0..MAX_SEGMENTS {
            s.push(GuestAddress(i as u64 * 16), 16).expect("below cap");
        }
        assert!(matches!(
            s.push(GuestAddress(0), 1),
            Err(SegmentError::TooMany { .. })
        ));
        assert_eq!(s.len(), (MAX_SEGMENTS * 16) as u32);
    }

    #[test]
    fn push_rejects_total_overflow() {
        let mut s = Segments::new();
        s.push(GuestAddress(0), u32::MAX).expect("one big buffer");
        assert!(matches!(
            s.push(GuestAddress(0), 1),
            Err(SegmentError::LengthOverflow)
        ));
    }

    #[test]
    fn read_and_write_span_buffers_and_regions() {
        let m = mem();
        // Second buffer crosses the region boundary at 0x10000.
        let s = segs(&[(0x100, 3), (0xfffe, 5), (0x2000, 4)]);
        let data: Vec<u8> = (1..=12).collect();
        s.write_bytes(&m, 0, &data).expect("write");
        let mut back = [0u8; 12];
        s.read_bytes(&m, 0, &mut back).expect("read");
        assert_eq!(&back[..], &data[..]);
        let mut mid = [0u8; 6];
        s.read_bytes(&m, 2, &mut mid).expect("read mid");
        assert_eq!(mid, [3, 4, 5, 6, 7, 8]);
        let b: u8 = m.read_obj(GuestAddress(0x10002)).expect("raw read");
        assert_eq!(b, 8);
        // Inside one buffer and one region: the one-lookup path, same bytes.
        let one = segs(&[(0x200, 16)]);
        one.write_bytes(&m, 4, &[9, 8, 7]).expect("write one");
        let raw: [u8; 3] = m.read_obj(GuestAddress(0x204)).expect("raw");
        assert_eq!(raw, [9, 8, 7]);
        let mut got = [0u8; 3];
        one.read_bytes(&m, 4, &mut got).expect("read one");
        assert_eq!(got, [9, 8, 7]);
    }

    #[test]
    fn out_of_range_access_is_an_error() {
        let m = mem();
        let s = segs(&[(0x100, 8)]);
        let mut buf = [0u8; 4];
        assert!(matches!(
            s.read_bytes(&m, 6, &mut buf),
            Err(SegmentError::OutOfBounds { .. })
        ));
        let unmapped = segs(&[(0x30000, 8)]);
        assert!(matches!(
            unmapped.read_bytes(&m, 0, &mut buf),
            Err(SegmentError::Unmapped { .. })
        ));
    }

    #[test]
    fn a_buffer_past_the_top_of_the_address_space_does_not_wrap_to_zero() {
        // Found by the `chains` fuzz target: the bytes of this buffer past 2^64 used to be read
        // from (and written to) guest address 0 onwards.
        let m = mem();
        m.write_slice(&[7u8; 16], GuestAddress(0))
            .expect("low memory");
        let s = segs(&[(u64::MAX - 3, 64)]);
        let mut buf = [0u8; 8];
        assert!(matches!(
            s.read_bytes(&m, 8, &mut buf),
            Err(SegmentError::Unmapped { .. })
        ));
        assert_eq!(buf, [0u8; 8], "nothing was read from address 0");
        assert!(s.write_bytes(&m, 8, &[1u8; 8]).is_err());
        let low: [u8; 16] = m.read_obj(GuestAddress(0)).expect("raw");
        assert_eq!(low, [7u8; 16], "nothing was written at address 0");
        let dst = segs(&[(0x100, 8)]);
        assert!(copy_between(&m, &s, 8, &m, &dst, 0, 8).is_err());
    }

    #[test]
    fn copy_between_two_memories_with_misaligned_buffers() {
        let a = mem();
        let b = mem();
        let src = segs(&[(0x0, 7), (0x800, 1), (0x1000, 100)]);
        let dst = segs(&[(0x4000, 50), (0xffff, 10), (0x9000, 100)]);
        let data: Vec<u8> = (0..108u32).map(|i| (i * 7 + 1) as u8).collect();
        src.write_bytes(&a, 0, &data).expect("fill src");
        copy_between(&a, &src, 3, &b, &dst, 5, 100).expect("copy");
        let mut out = vec![0u8; 100];
        dst.read_bytes(&b, 5, &mut out).expect("read dst");
        assert_eq!(&out[..], &data[3..103]);
    }

    #[test]
    fn narrow_keeps_the_same_bytes_as_window() {
        let base = segs(&[(0x100, 10), (0x200, 20), (0x300, 30)]);
        // Every (offset, len) inside the list, including empty and full ranges.
        for offset in 0..=60u32 {
            for len in 0..=(60 - offset) {
                let mut n = base.clone();
                n.narrow(offset, len).expect("inside");
                let w = base.window(offset, len).expect("inside");
                assert_eq!(n.len(), len, "{offset}+{len}");
                assert_eq!(
                    n.iter().collect::<Vec<_>>(),
                    w.iter().collect::<Vec<_>>(),
                    "{offset}+{len}"
                );
            }
        }
        let mut n = base.clone();
        assert!(matches!(
            n.narrow(50, 11),
            Err(SegmentError::OutOfBounds { .. })
        ));
        n.clear();
        assert_eq!((n.len(), n.count()), (0, 0));
    }

    #[test]
    fn window_selects_a_sub_range() {
        let s = segs(&[(0x0, 10), (0x100, 10), (0x200, 10)]);
        let w = s.window(5, 12).expect("window");
        let got: Vec<(u64, u32)> = w.iter().map(|s| (s.addr.0, s.len)).collect();
        assert_eq!(got, vec![(0x5, 5), (0x100, 7)]);
        assert!(s.window(25, 6).is_err());
    }

    #[test]
    fn host_io_moves_bytes_between_fd_and_guest() {
        let m = mem();
        let s = segs(&[(0x10, 5), (0x400, 5)]);
        let (mut a, mut b) = std::os::unix::net::UnixStream::pair().expect("pair");
        std::io::Write::write_all(&mut a, b"helloworld").expect("send");
        let n = s.read_from(&m, 0, 10, &mut b).expect("read into guest");
        assert_eq!(n, 10);
        let n = s.write_to(&m, 2, 8, &mut b).expect("write from guest");
        assert_eq!(n, 8);
        let mut back = [0u8; 8];
        std::io::Read::read_exact(&mut a, &mut back).expect("recv");
        assert_eq!(&back, b"lloworld");
    }
}
