//! Window geometry (SPEC.md §13.2): a 4 KiB header, then slots; each slot has two ring controls
//! in its first 4 KiB and two data areas after them. Every offset is computed from the window's
//! size, never read from the window, so a guest that rewrites its header cannot move what the
//! host touches.

/// `magic`: the ASCII bytes `SBYPWIN1`.
pub const MAGIC: u64 = u64::from_le_bytes(*b"SBYPWIN1");
/// Layout version.
pub const VERSION: u32 = 1;
/// Bytes of the header at the start of a window.
pub const HEADER_SIZE: u64 = 4096;
/// Bytes of a slot's ring controls (the rest of the slot is data).
pub const SLOT_CONTROL_SIZE: u64 = 4096;
/// Bytes of one ring control.
pub const RING_CONTROL_SIZE: u64 = 256;
/// Data bytes per ring in version 1.
pub const RING_SIZE: u64 = 64 * 1024;
/// [`Geometry::slot_size`] and [`RING_SIZE`] as the header's 32-bit fields carry them.
const SLOT_SIZE_LE32: u32 = 4096 + 2 * 64 * 1024;
const RING_SIZE_LE32: u32 = 64 * 1024;
const _: () = assert!(SLOT_SIZE_LE32 as u64 == Geometry::slot_size());
const _: () = assert!(RING_SIZE_LE32 as u64 == RING_SIZE);
/// Smallest window.
pub const MIN_WINDOW: u64 = 1 << 20;
/// Largest window.
pub const MAX_WINDOW: u64 = 1 << 30;

/// Header field offsets.
pub mod header {
    /// `magic`, le64.
    pub const MAGIC: usize = 0;
    /// `version`, le32.
    pub const VERSION: usize = 8;
    /// `kind`, le32.
    pub const KIND: usize = 12;
    /// `cid`, le64.
    pub const CID: usize = 16;
    /// `peer_cid`, le64.
    pub const PEER_CID: usize = 24;
    /// `size`, le64.
    pub const SIZE: usize = 32;
    /// `slots`, le32.
    pub const SLOTS: usize = 40;
    /// `slot_size`, le32.
    pub const SLOT_SIZE: usize = 44;
    /// `ring_size`, le32.
    pub const RING_SIZE: usize = 48;
    /// `epoch`, le32.
    pub const EPOCH: usize = 52;
    /// `host_sleeping`, le32.
    pub const HOST_SLEEPING: usize = 64;
    /// Bytes the fields above take.
    pub const LEN: usize = 68;
}

/// Ring-control field offsets, from the start of the ring control. Producer and consumer
/// fields are on separate cache lines.
pub mod ring_control {
    /// `head`, le64 (producer).
    pub const HEAD: u64 = 0;
    /// `closed`, le32 (producer).
    pub const CLOSED: u64 = 8;
    /// `producer_sleeping`, le32 (producer).
    pub const PRODUCER_SLEEPING: u64 = 12;
    /// `tail`, le64 (consumer).
    pub const TAIL: u64 = 64;
    /// `consumer_sleeping`, le32 (consumer).
    pub const CONSUMER_SLEEPING: u64 = 72;
    /// `generation`, le32 (host).
    pub const GENERATION: u64 = 128;
}

// Producer, consumer and host fields on separate cache lines.
const _: () = assert!(ring_control::TAIL / 64 != ring_control::HEAD / 64);
const _: () = assert!(ring_control::GENERATION / 64 != ring_control::TAIL / 64);
const _: () = assert!(ring_control::GENERATION + 4 <= RING_CONTROL_SIZE);

/// Which window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowKind {
    /// A VM's own window: host-copied connections.
    Own,
    /// A pair window, shared by exactly two VMs: direct connections.
    Pair,
}

impl WindowKind {
    /// The `kind` value.
    pub fn raw(self) -> u32 {
        match self {
            WindowKind::Own => 1,
            WindowKind::Pair => 2,
        }
    }

    /// The kind of a `kind` value.
    pub fn from_raw(raw: u32) -> Option<WindowKind> {
        match raw {
            1 => Some(WindowKind::Own),
            2 => Some(WindowKind::Pair),
            _ => None,
        }
    }
}

/// Why a window size or a header is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// The size is not a power of two between 1 MiB and 1 GiB (ivshmem needs a power of two).
    #[error("window size {0} bytes: must be a power of two from 1 MiB to 1 GiB")]
    BadSize(u64),
    /// The header is shorter than its fields.
    #[error("window header of {0} bytes: needs {len}", len = header::LEN)]
    ShortHeader(usize),
    /// The magic is wrong: not a sockbypass window.
    #[error("not a sockbypass window (magic {0:#018x})")]
    BadMagic(u64),
    /// A layout version this code does not know.
    #[error("window layout version {0}: this code knows version {VERSION}")]
    BadVersion(u32),
    /// An unknown `kind`.
    #[error("window kind {0}: expected 1 (own) or 2 (pair)")]
    BadKind(u32),
    /// The header's geometry is not the one its size gives.
    #[error("window header says {field} = {found}, the size of {size} bytes gives {expected}")]
    Inconsistent {
        /// Which field.
        field: &'static str,
        /// What the header says.
        found: u64,
        /// What the size gives.
        expected: u64,
        /// The window size.
        size: u64,
    },
}

/// A window's geometry, from its size alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    size: u64,
    slots: u32,
}

impl Geometry {
    /// The geometry of a window of `size` bytes.
    pub fn new(size: u64) -> Result<Geometry, LayoutError> {
        if !size.is_power_of_two() || !(MIN_WINDOW..=MAX_WINDOW).contains(&size) {
            return Err(LayoutError::BadSize(size));
        }
        let slots = (size - HEADER_SIZE) / Self::slot_size();
        // At most 1 GiB / 132 KiB slots: fits.
        let slots = u32::try_from(slots).map_err(|_| LayoutError::BadSize(size))?;
        Ok(Geometry { size, slots })
    }

    /// The window's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Slots in the window.
    pub fn slots(&self) -> u32 {
        self.slots
    }

    /// Bytes per slot: its ring controls and its two data areas.
    pub const fn slot_size() -> u64 {
        SLOT_CONTROL_SIZE + 2 * RING_SIZE
    }

    /// Where slot `slot` starts; `None` past the last slot.
    pub fn slot_offset(&self, slot: u32) -> Option<u64> {
        (slot < self.slots).then(|| HEADER_SIZE + u64::from(slot) * Self::slot_size())
    }

    /// Where ring `ring` (0 or 1) of slot `slot` has its control; `None` for a bad slot or ring.
    pub fn ring_control(&self, slot: u32, ring: u8) -> Option<u64> {
        (ring < 2).then_some(())?;
        Some(self.slot_offset(slot)? + u64::from(ring) * RING_CONTROL_SIZE)
    }

    /// Where ring `ring` of slot `slot` has its data area (`RING_SIZE` bytes).
    pub fn ring_data(&self, slot: u32, ring: u8) -> Option<u64> {
        (ring < 2).then_some(())?;
        Some(self.slot_offset(slot)? + SLOT_CONTROL_SIZE + u64::from(ring) * RING_SIZE)
    }
}

/// The header the host writes at the start of a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowHeader {
    /// Own or pair.
    pub kind: WindowKind,
    /// Own: the VM's CID; pair: the lower of the two CIDs.
    pub cid: u64,
    /// Pair: the higher CID; own: 0.
    pub peer_cid: u64,
    /// The geometry.
    pub geometry: Geometry,
    /// Changes each time the daemon writes the header anew.
    pub epoch: u32,
}

impl WindowHeader {
    /// The header's bytes (the first [`header::LEN`] of the window; `host_sleeping` 0).
    pub fn encode(&self) -> [u8; header::LEN] {
        let mut b = [0u8; header::LEN];
        let mut put = |at: usize, bytes: &[u8]| b[at..at + bytes.len()].copy_from_slice(bytes);
        put(header::MAGIC, &MAGIC.to_le_bytes());
        put(header::VERSION, &VERSION.to_le_bytes());
        put(header::KIND, &self.kind.raw().to_le_bytes());
        put(header::CID, &self.cid.to_le_bytes());
        put(header::PEER_CID, &self.peer_cid.to_le_bytes());
        put(header::SIZE, &self.geometry.size.to_le_bytes());
        put(header::SLOTS, &self.geometry.slots.to_le_bytes());
        put(header::SLOT_SIZE, &SLOT_SIZE_LE32.to_le_bytes());
        put(header::RING_SIZE, &RING_SIZE_LE32.to_le_bytes());
        put(header::EPOCH, &self.epoch.to_le_bytes());
        b
    }

    /// Reads and checks a header (for the guest library: the host wrote it, but a guest that
    /// mapped the wrong BAR, or an older daemon, must get a clear error).
    pub fn decode(b: &[u8]) -> Result<WindowHeader, LayoutError> {
        if b.len() < header::LEN {
            return Err(LayoutError::ShortHeader(b.len()));
        }
        let u64_at = |at: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[at..at + 8]);
            u64::from_le_bytes(w)
        };
        let u32_at = |at: usize| {
            let mut w = [0u8; 4];
            w.copy_from_slice(&b[at..at + 4]);
            u32::from_le_bytes(w)
        };
        let magic = u64_at(header::MAGIC);
        if magic != MAGIC {
            return Err(LayoutError::BadMagic(magic));
        }
        let version = u32_at(header::VERSION);
        if version != VERSION {
            return Err(LayoutError::BadVersion(version));
        }
        let kind = u32_at(header::KIND);
        let kind = WindowKind::from_raw(kind).ok_or(LayoutError::BadKind(kind))?;
        let size = u64_at(header::SIZE);
        let geometry = Geometry::new(size)?;
        for (field, found, expected) in [
            (
                "slots",
                u64::from(u32_at(header::SLOTS)),
                u64::from(geometry.slots),
            ),
            (
                "slot_size",
                u64::from(u32_at(header::SLOT_SIZE)),
                Geometry::slot_size(),
            ),
            ("ring_size", u64::from(u32_at(header::RING_SIZE)), RING_SIZE),
        ] {
            if found != expected {
                return Err(LayoutError::Inconsistent {
                    field,
                    found,
                    expected,
                    size,
                });
            }
        }
        Ok(WindowHeader {
            kind,
            cid: u64_at(header::CID),
            peer_cid: u64_at(header::PEER_CID),
            geometry,
            epoch: u32_at(header::EPOCH),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_window_has_124_slots_that_fit_and_do_not_overlap() {
        let g = Geometry::new(16 << 20).expect("16 MiB");
        assert_eq!(g.slots(), 124);
        let last = g.slots() - 1;
        let end = g.ring_data(last, 1).expect("last ring") + RING_SIZE;
        assert!(end <= g.size(), "{end} > {}", g.size());
        assert_eq!(g.slot_offset(g.slots()), None);
        assert_eq!(g.ring_control(0, 2), None);
        // Controls before data, each ring's data after the previous one's.
        let s = g.slot_offset(3).expect("slot 3");
        assert_eq!(g.ring_control(3, 0), Some(s));
        assert_eq!(g.ring_control(3, 1), Some(s + RING_CONTROL_SIZE));
        assert_eq!(g.ring_data(3, 0), Some(s + SLOT_CONTROL_SIZE));
        assert_eq!(g.ring_data(3, 1), Some(s + SLOT_CONTROL_SIZE + RING_SIZE));
        assert_eq!(g.slot_offset(4), Some(s + Geometry::slot_size()));
    }

    #[test]
    fn sizes_must_be_powers_of_two_in_range() {
        for bad in [0, 1 << 19, (1 << 20) + 4096, 3 << 20, 1 << 31] {
            assert_eq!(Geometry::new(bad), Err(LayoutError::BadSize(bad)));
        }
        assert_eq!(Geometry::new(1 << 20).expect("1 MiB").slots(), 7);
        assert_eq!(Geometry::new(1 << 30).expect("1 GiB").slots(), 7943);
    }

    #[test]
    fn headers_round_trip_and_bad_ones_are_named() {
        let h = WindowHeader {
            kind: WindowKind::Pair,
            cid: 3,
            peer_cid: 4,
            geometry: Geometry::new(16 << 20).expect("16 MiB"),
            epoch: 7,
        };
        let b = h.encode();
        assert_eq!(&b[..8], b"SBYPWIN1");
        assert_eq!(WindowHeader::decode(&b), Ok(h));
        assert_eq!(
            WindowHeader::decode(&b[..20]),
            Err(LayoutError::ShortHeader(20))
        );
        let mut bad = b;
        bad[0] = b'X';
        assert!(matches!(
            WindowHeader::decode(&bad),
            Err(LayoutError::BadMagic(_))
        ));
        let mut bad = b;
        bad[header::VERSION] = 2;
        assert_eq!(WindowHeader::decode(&bad), Err(LayoutError::BadVersion(2)));
        let mut bad = b;
        bad[header::KIND] = 9;
        assert_eq!(WindowHeader::decode(&bad), Err(LayoutError::BadKind(9)));
        let mut bad = b;
        bad[header::SLOTS] = 200;
        assert!(matches!(
            WindowHeader::decode(&bad),
            Err(LayoutError::Inconsistent { field: "slots", .. })
        ));
    }
}
