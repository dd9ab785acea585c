//! The device config space: `struct virtio_vsock_config { le64 guest_cid; }`.

/// Size of the config space in bytes.
pub const CONFIG_SPACE_SIZE: usize = 8;

/// The config space of one VM's device, as returned by vhost-user GET_CONFIG.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct VsockConfigSpace {
    /// The CID the guest owns.
    pub guest_cid: u64,
}

impl VsockConfigSpace {
    /// The raw little-endian bytes of the config space.
    pub fn to_bytes(self) -> [u8; CONFIG_SPACE_SIZE] {
        self.guest_cid.to_le_bytes()
    }

    /// The bytes `[offset, offset + size)` of the config space, as GET_CONFIG asks.
    ///
    /// A window that leaves the config space is clipped; a window entirely outside it yields an
    /// empty vector, which the vhost-user layer reports as a failed request.
    pub fn read(self, offset: u32, size: u32) -> Vec<u8> {
        let bytes = self.to_bytes();
        let start = (offset as usize).min(CONFIG_SPACE_SIZE);
        let end = start.saturating_add(size as usize).min(CONFIG_SPACE_SIZE);
        bytes[start..end].to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_cid_is_le64() {
        let cfg = VsockConfigSpace {
            guest_cid: 0x0102_0304,
        };
        assert_eq!(cfg.read(0, 8), vec![4, 3, 2, 1, 0, 0, 0, 0]);
        assert_eq!(cfg.read(0, 4), vec![4, 3, 2, 1]);
        assert_eq!(cfg.read(2, 2), vec![2, 1]);
    }

    #[test]
    fn out_of_range_reads_are_clipped() {
        let cfg = VsockConfigSpace { guest_cid: 3 };
        assert_eq!(cfg.read(6, 10), vec![0, 0]);
        assert!(cfg.read(8, 4).is_empty());
        assert!(cfg.read(u32::MAX, u32::MAX).is_empty());
    }
}
