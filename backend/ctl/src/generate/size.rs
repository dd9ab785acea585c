//! A guest memory size in the one syntax QEMU (`size=`), cloud-hypervisor (`--memory size=`)
//! and this crate's libvirt template all read the same way: decimal digits and an optional
//! binary suffix `K`, `M` or `G` (cloud-hypervisor v52 knows no other suffix and no lower
//! case).

use std::fmt;
use std::str::FromStr;

/// The memory size of a guest: a whole number of 4 KiB pages, at least 1 MiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemorySize {
    number: u64,
    shift: u32,
}

/// Why a memory size was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    /// Not digits with an optional `K`, `M` or `G`.
    #[error("{0:?} is not a size: digits with an optional K, M or G, e.g. 1G or 512M")]
    Syntax(String),
    /// Too large for 64 bits.
    #[error("{0:?} is too large")]
    TooLarge(String),
    /// Under 1 MiB, or not a whole number of 4 KiB pages.
    #[error("{0:?} is not a whole number of 4 KiB pages of at least 1 MiB")]
    NotPages(String),
}

impl MemorySize {
    /// The size in bytes.
    pub fn bytes(self) -> u64 {
        self.number << self.shift
    }

    /// The size in KiB (exact: the size is whole pages).
    pub fn kib(self) -> u64 {
        self.bytes() >> 10
    }
}

impl FromStr for MemorySize {
    type Err = SizeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (digits, shift) = match s.as_bytes().last() {
            Some(b'K') => (&s[..s.len() - 1], 10),
            Some(b'M') => (&s[..s.len() - 1], 20),
            Some(b'G') => (&s[..s.len() - 1], 30),
            _ => (s, 0),
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(SizeError::Syntax(s.to_owned()));
        }
        let number: u64 = digits
            .parse()
            .map_err(|_| SizeError::TooLarge(s.to_owned()))?;
        if number.leading_zeros() < shift {
            return Err(SizeError::TooLarge(s.to_owned()));
        }
        let size = MemorySize { number, shift };
        if size.bytes() < 1 << 20 || size.bytes() % 4096 != 0 {
            return Err(SizeError::NotPages(s.to_owned()));
        }
        Ok(size)
    }
}

impl fmt::Display for MemorySize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let suffix = match self.shift {
            10 => "K",
            20 => "M",
            30 => "G",
            _ => "",
        };
        write!(f, "{}{suffix}", self.number)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn size(s: &str) -> Result<MemorySize, SizeError> {
        s.parse()
    }

    #[test]
    fn suffixes_are_binary_and_printed_back_as_given() {
        let g = size("1G").expect("1G");
        assert_eq!(g.bytes(), 1 << 30);
        assert_eq!(g.kib(), 1 << 20);
        assert_eq!(g.to_string(), "1G");
        assert_eq!(size("512M").expect("512M").bytes(), 512 << 20);
        assert_eq!(size("2048K").expect("2048K").bytes(), 2 << 20);
        assert_eq!(size("1048576").expect("bytes").to_string(), "1048576");
    }

    #[test]
    fn what_a_vmm_would_misread_is_refused() {
        for bad in ["", "G", "1g", "1GB", "1T", "-1G", " 1G", "1.5G", "0x10M"] {
            assert!(
                matches!(size(bad), Err(SizeError::Syntax(_))),
                "{bad:?}: {:?}",
                size(bad)
            );
        }
        assert!(matches!(size("0"), Err(SizeError::NotPages(_))));
        assert!(matches!(size("512K"), Err(SizeError::NotPages(_))));
        assert!(matches!(size("1048577"), Err(SizeError::NotPages(_))));
        assert!(matches!(size("17179869184G"), Err(SizeError::TooLarge(_))));
        assert!(matches!(
            size("99999999999999999999"),
            Err(SizeError::TooLarge(_))
        ));
    }
}
