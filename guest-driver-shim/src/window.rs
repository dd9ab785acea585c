//! A mapped fast-path window (SPEC.md §13.1, §13.2): the ivshmem BAR 2 of a PCI device
//! `1af4:1110` found under `/sys/bus/pci/devices`, or any file (tests, debugging).
//!
//! The header is read once, at open, and checked against the mapping; afterwards only
//! `epoch` and `host_sleeping` are read again. Every offset comes from the [`Geometry`] of
//! the checked header, never from the window. All access to the shared memory goes through
//! atomics (indices and flags, naturally aligned) and `ptr::copy_nonoverlapping` (ring data),
//! each bounds-checked against the mapping.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use sockbypass_wire::fastpath::layout::{
    header, Geometry, LayoutError, WindowHeader, WindowKind, HEADER_SIZE,
};

/// PCI vendor of the ivshmem device.
pub const IVSHMEM_VENDOR: u16 = 0x1af4;
/// PCI device id of the ivshmem device.
pub const IVSHMEM_DEVICE: u16 = 0x1110;
/// Where the guest kernel lists PCI devices.
pub const SYSFS_PCI_DEVICES: &str = "/sys/bus/pci/devices";

/// Why a window cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum WindowError {
    /// The file (or `resource2`) cannot be opened.
    #[error("cannot open window {path}")]
    Open {
        /// The file.
        path: PathBuf,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// Its size cannot be read.
    #[error("cannot read the size of window {path}")]
    Stat {
        /// The file.
        path: PathBuf,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// Smaller than a header, or too large to map on this machine.
    #[error("window {path} has {len} bytes: too small or too large to map")]
    BadLength {
        /// The file.
        path: PathBuf,
        /// Its length.
        len: u64,
    },
    /// `mmap` refused.
    #[error("cannot map window {path}")]
    Map {
        /// The file.
        path: PathBuf,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// The header does not decode (magic, version, kind, geometry).
    #[error("window {path} has no valid header")]
    Header {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: LayoutError,
    },
    /// The header's size is not the size of the mapping.
    #[error("window {path}: the header says {header_size} bytes, the mapping has {mapped}")]
    SizeMismatch {
        /// The file.
        path: PathBuf,
        /// The header's `size`.
        header_size: u64,
        /// The mapped length.
        mapped: u64,
    },
    /// A PCI device directory cannot be read.
    #[error("cannot read {path}")]
    Sysfs {
        /// The file or directory.
        path: PathBuf,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// `enable` cannot be written.
    #[error("cannot enable PCI device {path}")]
    Enable {
        /// The `enable` file.
        path: PathBuf,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
}

/// A shared, read-write mapping. Unmapped on drop.
#[derive(Debug)]
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory; every access through it is atomic or a
// bounds-checked byte copy, so it may be used from any thread.
unsafe impl Send for Mapping {}
// SAFETY: as for `Send`: no access relies on exclusive ownership.
unsafe impl Sync for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly what `mmap` returned and nobody uses the mapping
        // after the `Window` that owns it is dropped (borrows of it cannot outlive `&self`).
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

/// A mapped, checked window.
#[derive(Debug)]
pub struct Window {
    map: Mapping,
    header: WindowHeader,
    path: PathBuf,
}

impl Window {
    /// Maps the file `path` (shared, read-write) and checks its header.
    pub fn open_path(path: impl AsRef<Path>) -> Result<Window, WindowError> {
        let path = path.as_ref().to_path_buf();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|source| WindowError::Open {
                path: path.clone(),
                source,
            })?;
        let len = file
            .metadata()
            .map_err(|source| WindowError::Stat {
                path: path.clone(),
                source,
            })?
            .len();
        Self::map_file(&file, len, path)
    }

    fn map_file(file: &File, len: u64, path: PathBuf) -> Result<Window, WindowError> {
        let bad_len = || WindowError::BadLength {
            path: path.clone(),
            len,
        };
        if len < HEADER_SIZE {
            return Err(bad_len());
        }
        let len_usize = usize::try_from(len).map_err(|_| bad_len())?;
        // SAFETY: a fresh mapping chosen by the kernel (no fixed address), of an open file
        // descriptor; the result is checked below before any use.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len_usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            return Err(WindowError::Map {
                path,
                source: io::Error::last_os_error(),
            });
        }
        let ptr = NonNull::new(raw.cast::<u8>()).ok_or_else(|| WindowError::Map {
            path: path.clone(),
            source: io::Error::other("mmap returned a null mapping"),
        })?;
        let map = Mapping {
            ptr,
            len: len_usize,
        };
        let mut bytes = [0u8; header::LEN];
        // SAFETY: the mapping has at least HEADER_SIZE (4096) > header::LEN bytes, `bytes` is
        // a private buffer of header::LEN bytes; the regions cannot overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(map.ptr.as_ptr(), bytes.as_mut_ptr(), header::LEN);
        }
        let header = WindowHeader::decode(&bytes).map_err(|source| WindowError::Header {
            path: path.clone(),
            source,
        })?;
        if header.geometry.size() != len {
            return Err(WindowError::SizeMismatch {
                path,
                header_size: header.geometry.size(),
                mapped: len,
            });
        }
        Ok(Window { map, header, path })
    }

    /// Finds, enables and maps every fast-path window among the guest's PCI devices.
    pub fn discover() -> Result<Vec<Window>, WindowError> {
        Self::discover_in(SYSFS_PCI_DEVICES)
    }

    /// [`Window::discover`] in another directory laid out like `/sys/bus/pci/devices` (each
    /// entry a directory with `vendor`, `device`, `enable` and `resource2`).
    ///
    /// Devices that are not `1af4:1110` are skipped. Matching devices whose window does not
    /// open or whose header does not decode are skipped too, as long as at least one window
    /// opens; when matching devices exist and none opens, the first failure is returned (so
    /// that, say, a permission error on `resource2` is not reported as "no window").
    pub fn discover_in(root: impl AsRef<Path>) -> Result<Vec<Window>, WindowError> {
        let mut windows = Vec::new();
        let mut first_err = None;
        for r in Self::probe_in(root)? {
            match r {
                Ok(w) => windows.push(w),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        match first_err {
            Some(e) if windows.is_empty() => Err(e),
            _ => Ok(windows),
        }
    }

    /// Every matching device under `root` and what opening it gave, in directory-name order
    /// (for diagnostics).
    pub fn probe_in(
        root: impl AsRef<Path>,
    ) -> Result<Vec<Result<Window, WindowError>>, WindowError> {
        let root = root.as_ref();
        let sysfs = |path: &Path| {
            let path = path.to_path_buf();
            move |source| WindowError::Sysfs { path, source }
        };
        let mut dirs = Vec::new();
        for entry in fs::read_dir(root).map_err(sysfs(root))? {
            dirs.push(entry.map_err(sysfs(root))?.path());
        }
        dirs.sort();
        let mut out = Vec::new();
        for dir in dirs {
            let id = |name: &str| {
                fs::read_to_string(dir.join(name))
                    .ok()
                    .and_then(|s| parse_hex_id(&s))
            };
            if id("vendor") != Some(IVSHMEM_VENDOR) || id("device") != Some(IVSHMEM_DEVICE) {
                continue;
            }
            out.push(Self::open_device(&dir));
        }
        Ok(out)
    }

    fn open_device(dir: &Path) -> Result<Window, WindowError> {
        let enable = dir.join("enable");
        // Already enabled (by another process, or at boot): no need to be allowed to write
        // `enable`, and no second increment of the kernel's enable count.
        let enabled = fs::read_to_string(&enable).is_ok_and(|s| s.trim() == "1");
        if !enabled {
            fs::write(&enable, b"1").map_err(|source| WindowError::Enable {
                path: enable,
                source,
            })?;
        }
        // resource2's size is the BAR's size: the window's.
        Self::open_path(dir.join("resource2"))
    }

    /// The file it was mapped from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The header as read at open.
    pub fn header(&self) -> &WindowHeader {
        &self.header
    }

    /// Own or pair.
    pub fn kind(&self) -> WindowKind {
        self.header.kind
    }

    /// Own window: the VM's CID; pair window: the lower CID.
    pub fn cid(&self) -> u64 {
        self.header.cid
    }

    /// Pair window: the higher CID; own window: 0.
    pub fn peer_cid(&self) -> u64 {
        self.header.peer_cid
    }

    /// The geometry (from the checked header's size).
    pub fn geometry(&self) -> Geometry {
        self.header.geometry
    }

    /// The epoch read at open.
    pub fn epoch(&self) -> u32 {
        self.header.epoch
    }

    /// The epoch now (the daemon rewrites it when it restarts).
    pub fn current_epoch(&self) -> u32 {
        self.u32_at(header::EPOCH as u64)
            .map_or(0, |a| a.load(Ordering::Acquire))
    }

    /// Whether the daemon's poller for this VM sleeps (own window; §13.5). Load it after a
    /// sequentially consistent fence.
    pub fn host_sleeping(&self) -> bool {
        self.u32_at(header::HOST_SLEEPING as u64)
            .is_some_and(|a| a.load(Ordering::SeqCst) != 0)
    }

    /// The 64-bit field at `off` (`None` if out of the mapping or not 8-aligned).
    pub(crate) fn u64_at(&self, off: u64) -> Option<&AtomicU64> {
        let p = self.field_ptr(off, 8)?;
        // SAFETY: `p` is inside the mapping, 8-aligned (checked by field_ptr), and valid for
        // as long as `&self` (the mapping lives as long as the Window). Every access to
        // shared memory made by this library is atomic.
        Some(unsafe { AtomicU64::from_ptr(p.cast()) })
    }

    /// The 32-bit field at `off` (`None` if out of the mapping or not 4-aligned).
    pub(crate) fn u32_at(&self, off: u64) -> Option<&AtomicU32> {
        let p = self.field_ptr(off, 4)?;
        // SAFETY: as in `u64_at`, with 4-byte alignment checked.
        Some(unsafe { AtomicU32::from_ptr(p.cast()) })
    }

    fn field_ptr(&self, off: u64, size: usize) -> Option<*mut u8> {
        let off = usize::try_from(off).ok()?;
        if off.checked_add(size)? > self.map.len {
            return None;
        }
        // SAFETY: `off + size <= len`, so the result is inside the mapping.
        let p = unsafe { self.map.ptr.as_ptr().add(off) };
        (p as usize % size == 0).then_some(p)
    }

    fn range_ptr(&self, off: u64, len: usize) -> Option<*mut u8> {
        let off = usize::try_from(off).ok()?;
        if off.checked_add(len)? > self.map.len {
            return None;
        }
        // SAFETY: `off + len <= mapping length`.
        Some(unsafe { self.map.ptr.as_ptr().add(off) })
    }

    /// Copies `src` into the window at `off`. `false` (nothing copied) if it does not fit.
    pub(crate) fn copy_in(&self, off: u64, src: &[u8]) -> bool {
        let Some(dst) = self.range_ptr(off, src.len()) else {
            return false;
        };
        // SAFETY: `dst..dst+len` is inside the mapping (range_ptr); `src` is private memory,
        // so the two cannot overlap.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len()) };
        true
    }

    /// Copies from the window at `off` into `dst`. `false` (nothing copied) if out of range.
    pub(crate) fn copy_out(&self, off: u64, dst: &mut [u8]) -> bool {
        let Some(src) = self.range_ptr(off, dst.len()) else {
            return false;
        };
        // SAFETY: `src..src+len` is inside the mapping (range_ptr); `dst` is private memory.
        unsafe { std::ptr::copy_nonoverlapping(src, dst.as_mut_ptr(), dst.len()) };
        true
    }
}

/// `0x1af4\n` → 0x1af4.
fn parse_hex_id(s: &str) -> Option<u16> {
    let s = s.trim();
    let hex = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X"))?;
    u16::from_str_radix(hex, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pci_ids_parse_like_sysfs_writes_them() {
        assert_eq!(parse_hex_id("0x1af4\n"), Some(0x1af4));
        assert_eq!(parse_hex_id("0x1110"), Some(0x1110));
        assert_eq!(parse_hex_id("1110"), None);
        assert_eq!(parse_hex_id("0xzz"), None);
    }
}
