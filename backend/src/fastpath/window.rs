//! One fast-path window (SPEC.md §13.1, §13.2): a file the VM's QEMU maps as an `ivshmem-plain`
//! BAR and the daemon maps too. The daemon creates it (mode 0660) next to the VM's vhost-user
//! socket, sizes it, zeroes the header and every slot's ring controls, and writes the header
//! with a new `epoch` (one more than the file had, so that guests notice a restart). Every
//! offset comes from the configured size ([`Geometry`]); nothing is read back from the window
//! but the previous `epoch`, and a window whose header does not parse starts at epoch 1.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use sockbypass_wire::fastpath::layout::{
    header, Geometry, LayoutError, WindowHeader, WindowKind, HEADER_SIZE, RING_CONTROL_SIZE,
    RING_SIZE, SLOT_CONTROL_SIZE,
};
use vm_memory::mmap::MmapRegion;
use vm_memory::{Bytes, FileOffset, VolatileMemory, VolatileSlice};

use super::ring_access::RingAccess;

/// Why a window could not be made.
#[derive(Debug, thiserror::Error)]
pub enum WindowError {
    /// The size is not one a window can have.
    #[error("fast-path window {path}: {source}")]
    Size {
        /// The window file.
        path: PathBuf,
        /// Why.
        #[source]
        source: LayoutError,
    },
    /// Creating, sizing or reading the file failed.
    #[error("fast-path window {path}: cannot {what}")]
    File {
        /// The window file.
        path: PathBuf,
        /// What failed.
        what: &'static str,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Mapping it failed.
    #[error("fast-path window {path}: cannot map it")]
    Map {
        /// The window file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: vm_memory::mmap::MmapRegionError,
    },
    /// Writing into the mapping failed (it cannot, short of a bug in the geometry).
    #[error("fast-path window {path}: cannot write at {offset}")]
    Write {
        /// The window file.
        path: PathBuf,
        /// Where.
        offset: u64,
        /// Cause.
        #[source]
        source: vm_memory::VolatileMemoryError,
    },
}

/// The window file of a VM: `<name>.window` beside its vhost-user socket.
pub fn window_path(socket: &Path, vm: &str) -> PathBuf {
    socket
        .parent()
        .unwrap_or_else(|| Path::new("."))
        .join(format!("{vm}.window"))
}

/// The pair window of VMs `a` and `b`: `<a>+<b>.window` beside `a`'s vhost-user socket.
pub fn pair_window_path(socket_of_a: &Path, a: &str, b: &str) -> PathBuf {
    window_path(socket_of_a, &format!("{a}+{b}"))
}

/// A mapped window.
#[derive(Debug)]
pub struct Window {
    path: PathBuf,
    header: WindowHeader,
    // Kept mapped for the daemon's life; the rings are read and written through it.
    region: MmapRegion,
}

impl Window {
    /// Creates (or takes over) the window file at `path` for a VM's own window of `size`
    /// bytes, and writes its header for `cid`.
    pub fn create_own(path: &Path, size: u64, cid: u64) -> Result<Window, WindowError> {
        Self::create(path, size, WindowKind::Own, cid, 0)
    }

    /// The same for the pair window of the VMs with CIDs `a` and `b` (the header names the
    /// lower one `cid` and the higher one `peer_cid`).
    pub fn create_pair(path: &Path, size: u64, a: u64, b: u64) -> Result<Window, WindowError> {
        Self::create(path, size, WindowKind::Pair, a.min(b), a.max(b))
    }

    fn create(
        path: &Path,
        size: u64,
        kind: WindowKind,
        cid: u64,
        peer_cid: u64,
    ) -> Result<Window, WindowError> {
        let geometry = Geometry::new(size).map_err(|source| WindowError::Size {
            path: path.to_owned(),
            source,
        })?;
        let file_err = |what: &'static str| {
            move |source: std::io::Error| WindowError::File {
                path: path.to_owned(),
                what,
                source,
            }
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o660)
            .open(path)
            .map_err(file_err("create or open it"))?;
        let epoch = previous_epoch(&mut file)
            .map_err(file_err("read it"))?
            .wrapping_add(1);
        file.set_len(size).map_err(file_err("size it"))?;
        let len = usize::try_from(size).map_err(|_| WindowError::Size {
            path: path.to_owned(),
            source: LayoutError::BadSize(size),
        })?;
        let region = MmapRegion::from_file(FileOffset::new(file, 0), len).map_err(|source| {
            WindowError::Map {
                path: path.to_owned(),
                source,
            }
        })?;
        let header = WindowHeader {
            kind,
            cid,
            peer_cid,
            geometry,
            epoch,
        };
        let window = Window {
            path: path.to_owned(),
            header,
            region,
        };
        window.reset()?;
        Ok(window)
    }

    /// The header the daemon wrote.
    pub fn header(&self) -> &WindowHeader {
        &self.header
    }

    /// The window file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn slice(&self, offset: u64, len: u64) -> Option<VolatileSlice<'_, ()>> {
        self.region
            .as_volatile_slice()
            .subslice(usize::try_from(offset).ok()?, usize::try_from(len).ok()?)
            .ok()
    }

    /// Ring `ring` (0 or 1) of slot `slot`; `None` for a slot or ring the window does not have.
    pub fn ring(&self, slot: u32, ring: u8) -> Option<RingAccess<'_>> {
        let g = self.header.geometry;
        let control = self.slice(g.ring_control(slot, ring)?, RING_CONTROL_SIZE)?;
        let data = self.slice(g.ring_data(slot, ring)?, RING_SIZE)?;
        Some(RingAccess::new(control, data))
    }

    /// Stores the header's `host_sleeping` (SeqCst: paired with the guests' fence, §13.5).
    pub fn set_host_sleeping(&self, sleeping: bool) {
        let at = header::HOST_SLEEPING;
        let _ = self.region.as_volatile_slice().store(
            u32::from(sleeping),
            at,
            std::sync::atomic::Ordering::SeqCst,
        );
    }

    /// Zeroes the header page and every slot's ring controls, then writes the header.
    fn reset(&self) -> Result<(), WindowError> {
        const ZEROES: [u8; 4096] = [0; 4096];
        const _: () = assert!(HEADER_SIZE == 4096 && SLOT_CONTROL_SIZE == 4096);
        let g = self.header.geometry;
        let controls = (0..g.slots()).filter_map(|slot| g.slot_offset(slot));
        for offset in std::iter::once(0).chain(controls) {
            self.write(offset, &ZEROES)?;
        }
        self.write(0, &self.header.encode())
    }

    fn write(&self, offset: u64, bytes: &[u8]) -> Result<(), WindowError> {
        let err = |source| WindowError::Write {
            path: self.path.clone(),
            offset,
            source,
        };
        let at = usize::try_from(offset)
            .map_err(|_| err(vm_memory::VolatileMemoryError::OutOfBounds { addr: usize::MAX }))?;
        self.region
            .as_volatile_slice()
            .write_slice(bytes, at)
            .map_err(err)
    }
}

/// The `epoch` of the header already in `file`, or 0 when it has none that parses.
fn previous_epoch(file: &mut File) -> std::io::Result<u32> {
    let mut head = Vec::with_capacity(4096);
    file.by_ref().take(4096).read_to_end(&mut head)?;
    Ok(WindowHeader::decode(&head).map_or(0, |h| h.epoch))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_is_sized_headed_and_its_epoch_counts_restarts() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = window_path(&dir.path().join("web.sock"), "web");
        assert_eq!(path, dir.path().join("web.window"));
        let w = Window::create_own(&path, 1 << 20, 7).expect("window");
        assert_eq!(std::fs::metadata(&path).expect("file").len(), 1 << 20);
        let bytes = std::fs::read(&path).expect("read");
        let h = WindowHeader::decode(&bytes).expect("header");
        assert_eq!((h.kind, h.cid, h.epoch), (WindowKind::Own, 7, 1));
        assert_eq!(h, *w.header());
        drop(w);
        // A guest scribbled over a ring control; a restart zeroes it and counts the epoch.
        let g = Geometry::new(1 << 20).expect("1 MiB");
        let ctl = g.ring_control(2, 1).expect("ring") as usize;
        let mut scribbled = bytes;
        scribbled[ctl..ctl + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        std::fs::write(&path, &scribbled).expect("scribble");
        let w = Window::create_own(&path, 1 << 20, 7).expect("window again");
        assert_eq!(w.header().epoch, 2);
        let bytes = std::fs::read(&path).expect("read");
        assert!(bytes[ctl..ctl + 8].iter().all(|b| *b == 0));
        // A file that is no window starts at epoch 1.
        std::fs::write(&path, b"not a window").expect("overwrite");
        assert_eq!(
            Window::create_own(&path, 1 << 20, 7)
                .expect("window")
                .header()
                .epoch,
            1
        );
        assert!(matches!(
            Window::create_own(&path, 3 << 20, 7),
            Err(WindowError::Size { .. })
        ));
        let pair = pair_window_path(&dir.path().join("a.sock"), "a", "b");
        assert_eq!(pair, dir.path().join("a+b.window"));
        let w = Window::create_pair(&pair, 1 << 20, 9, 4).expect("pair window");
        let h = WindowHeader::decode(&std::fs::read(&pair).expect("read")).expect("header");
        assert_eq!((h.kind, h.cid, h.peer_cid), (WindowKind::Pair, 4, 9));
        assert_eq!(h, *w.header());
    }
}
