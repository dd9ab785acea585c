//! A test's guest-side view of a fast-path window (SPEC.md §13.2): the window file the daemon
//! made, read and written with `pread`/`pwrite`. The file is the memory the daemon maps
//! (`MAP_SHARED`), so a write here is what a guest's store into its BAR would be; each call is a
//! system call, which orders it like a fence. Slow, simple, and able to write any value a
//! hostile guest would.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use sockbypass_wire::fastpath::layout::{ring_control, Geometry, WindowHeader, RING_SIZE};
use sockbypass_wire::fastpath::ring::pieces;

/// A window file opened by a test.
#[derive(Debug)]
pub struct WindowFile {
    file: File,
    /// The header the daemon wrote.
    pub header: WindowHeader,
}

/// One ring of one slot.
#[derive(Debug, Clone, Copy)]
pub struct Ring<'a> {
    file: &'a File,
    control: u64,
    data: u64,
}

impl WindowFile {
    /// Opens `path` and reads its header.
    pub fn open(path: &Path) -> WindowFile {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap_or_else(|e| panic!("open window {}: {e}", path.display()));
        let mut head = vec![0u8; 4096];
        file.read_exact_at(&mut head, 0).expect("read header");
        let header = WindowHeader::decode(&head).expect("the daemon's header decodes");
        WindowFile { file, header }
    }

    /// The geometry.
    pub fn geometry(&self) -> Geometry {
        self.header.geometry
    }

    /// Ring `ring` of `slot`.
    pub fn ring(&self, slot: u32, ring: u8) -> Ring<'_> {
        let g = self.header.geometry;
        Ring {
            file: &self.file,
            control: g.ring_control(slot, ring).expect("slot in the window"),
            data: g.ring_data(slot, ring).expect("slot in the window"),
        }
    }

    /// The header's `host_sleeping`.
    pub fn host_sleeping(&self) -> u32 {
        self.read32(64)
    }

    fn read32(&self, at: u64) -> u32 {
        let mut b = [0u8; 4];
        self.file.read_exact_at(&mut b, at).expect("read window");
        u32::from_le_bytes(b)
    }
}

impl Ring<'_> {
    fn read64(&self, field: u64) -> u64 {
        let mut b = [0u8; 8];
        self.file
            .read_exact_at(&mut b, self.control + field)
            .expect("read ring control");
        u64::from_le_bytes(b)
    }

    fn read32(&self, field: u64) -> u32 {
        let mut b = [0u8; 4];
        self.file
            .read_exact_at(&mut b, self.control + field)
            .expect("read ring control");
        u32::from_le_bytes(b)
    }

    fn write(&self, at: u64, bytes: &[u8]) {
        self.file.write_all_at(bytes, at).expect("write window");
    }

    /// `head`.
    pub fn head(&self) -> u64 {
        self.read64(ring_control::HEAD)
    }

    /// Stores `head` (any value: tests play hostile guests too).
    pub fn set_head(&self, v: u64) {
        self.write(self.control + ring_control::HEAD, &v.to_le_bytes());
    }

    /// `tail`.
    pub fn tail(&self) -> u64 {
        self.read64(ring_control::TAIL)
    }

    /// Stores `tail`.
    pub fn set_tail(&self, v: u64) {
        self.write(self.control + ring_control::TAIL, &v.to_le_bytes());
    }

    /// `closed`.
    pub fn closed(&self) -> bool {
        self.read32(ring_control::CLOSED) != 0
    }

    /// Sets `closed`.
    pub fn set_closed(&self) {
        self.write(self.control + ring_control::CLOSED, &1u32.to_le_bytes());
    }

    /// Stores `consumer_sleeping`.
    pub fn set_consumer_sleeping(&self, on: bool) {
        self.write(
            self.control + ring_control::CONSUMER_SLEEPING,
            &u32::from(on).to_le_bytes(),
        );
    }

    /// `generation`.
    pub fn generation(&self) -> u32 {
        self.read32(ring_control::GENERATION)
    }

    /// Produces `bytes` at the current `head` (at most the free space, which the caller
    /// checked) and publishes the new `head`.
    pub fn produce(&self, bytes: &[u8]) {
        let head = self.head();
        self.write_stream(head, bytes);
        self.set_head(head.wrapping_add(bytes.len() as u64));
    }

    /// Consumes every readable byte, publishing the new `tail`.
    pub fn consume(&self) -> Vec<u8> {
        let (head, tail) = (self.head(), self.tail());
        let n = head.wrapping_sub(tail);
        assert!(
            n <= RING_SIZE,
            "the daemon never puts more than a ring in flight"
        );
        let mut out = Vec::with_capacity(usize::try_from(n).expect("fits"));
        for piece in pieces(tail, n, RING_SIZE) {
            let mut part = vec![0u8; usize::try_from(piece.end - piece.start).expect("fits")];
            self.file
                .read_exact_at(&mut part, self.data + piece.start)
                .expect("read ring data");
            out.extend_from_slice(&part);
        }
        self.set_tail(head);
        out
    }

    fn write_stream(&self, pos: u64, bytes: &[u8]) {
        let mut done = 0usize;
        for piece in pieces(pos, bytes.len() as u64, RING_SIZE) {
            let len = usize::try_from(piece.end - piece.start).expect("fits");
            self.write(self.data + piece.start, &bytes[done..done + len]);
            done += len;
        }
    }
}
