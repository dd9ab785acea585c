//! What a fuzz input describes, resolved into the layout of [`crate::layout`]. The enums bias
//! the fuzzer towards interesting values (inside a region, at its very end, an indirect table)
//! while still allowing any raw value.

use libfuzzer_sys::arbitrary::{self, Arbitrary};

use crate::layout::{table_addr, RawDesc, REGIONS};

/// A guest address.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum AddrSpec {
    /// `offset` bytes into region `region` (wrapped to its length).
    InRegion {
        /// Region index (modulo the region count).
        region: u8,
        /// Offset (modulo the region length).
        offset: u16,
    },
    /// `back` bytes before the end of region `region` (buffers running off its end).
    NearEnd {
        /// Region index (modulo the region count).
        region: u8,
        /// Distance from the end, at least 1.
        back: u8,
    },
    /// Indirect table `k`.
    Table(u8),
    /// Any address at all (holes, the top of the address space...).
    Raw(u64),
}

impl AddrSpec {
    /// The address it names.
    pub fn resolve(self) -> u64 {
        match self {
            AddrSpec::InRegion { region, offset } => {
                let (start, len) = REGIONS[usize::from(region) % REGIONS.len()];
                start + u64::from(offset) % len
            }
            AddrSpec::NearEnd { region, back } => {
                let (start, len) = REGIONS[usize::from(region) % REGIONS.len()];
                start + len - u64::from(back).max(1)
            }
            AddrSpec::Table(k) => table_addr(usize::from(k)),
            AddrSpec::Raw(a) => a,
        }
    }
}

/// A buffer length.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum LenSpec {
    /// Up to 255 bytes.
    Small(u8),
    /// Up to 64 KiB.
    Medium(u16),
    /// The exact size of an indirect table of `n` descriptors (`16 * n`).
    Table(u8),
    /// Any length.
    Raw(u32),
}

impl LenSpec {
    /// The length it names.
    pub fn resolve(self) -> u32 {
        match self {
            LenSpec::Small(n) => u32::from(n),
            LenSpec::Medium(n) => u32::from(n),
            LenSpec::Table(n) => 16 * u32::from(n),
            LenSpec::Raw(n) => n,
        }
    }
}

/// A descriptor.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub struct DescSpec {
    /// Buffer address.
    pub addr: AddrSpec,
    /// Buffer length.
    pub len: LenSpec,
    /// Flags, raw (NEXT, WRITE, INDIRECT and unknown bits).
    pub flags: u16,
    /// Next index, raw.
    pub next: u16,
}

impl DescSpec {
    /// The descriptor as written into a table.
    pub fn resolve(self) -> RawDesc {
        RawDesc {
            addr: self.addr.resolve(),
            len: self.len.resolve(),
            flags: self.flags,
            next: self.next,
        }
    }
}

/// One queue: its size, the descriptor table, indirect tables and the published head.
#[derive(Arbitrary, Debug, Clone)]
pub struct QueueSpec {
    /// Queue size is `1 << (size_log2 % 9)` (1 to 256).
    pub size_log2: u8,
    /// Head index published in the available ring (any value, also past the table).
    pub head: u16,
    /// Descriptor table slots 0, 1, 2...
    pub descs: Vec<DescSpec>,
    /// Indirect tables.
    pub tables: Vec<Vec<DescSpec>>,
    /// Bytes written into guest memory before the chain is parsed (headers, scribbles on the
    /// rings themselves).
    pub writes: Vec<(AddrSpec, Vec<u8>)>,
}

impl QueueSpec {
    /// The queue size.
    pub fn size(&self) -> u16 {
        1u16 << (self.size_log2 % 9)
    }
}
