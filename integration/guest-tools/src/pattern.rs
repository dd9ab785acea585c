//! Seeded pseudo-random data with random access: byte `i` of the stream for `seed` is byte
//! `i % 8` (little endian) of `word(seed, i / 8)`, so a reader can regenerate any range to
//! compare with what came back, whatever the chunking.

/// SplitMix64's finaliser: a well-mixed 64-bit value from any 64-bit input.
pub fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn keyed(key: u64, index: u64) -> u64 {
    splitmix(key ^ index.wrapping_mul(0xD6E8_FEB8_6659_FD93))
}

/// Word `index` of the stream for `seed`.
#[cfg(test)]
pub fn word(seed: u64, index: u64) -> u64 {
    keyed(splitmix(seed), index)
}

/// Fills `buf` with bytes `offset..offset + buf.len()` of the stream for `seed`.
pub fn fill(seed: u64, offset: u64, buf: &mut [u8]) {
    let key = splitmix(seed);
    let w = |index: u64| keyed(key, index).to_le_bytes();
    let mut index = offset / 8;
    let skip = usize::from((offset % 8) as u8);
    let mut out = buf;
    if skip != 0 {
        let bytes = w(index);
        let n = (8 - skip).min(out.len());
        out[..n].copy_from_slice(&bytes[skip..skip + n]);
        out = &mut out[n..];
        index += 1;
    }
    let mut words = out.chunks_exact_mut(8);
    for chunk in &mut words {
        chunk.copy_from_slice(&w(index));
        index += 1;
    }
    let rest = words.into_remainder();
    if !rest.is_empty() {
        let n = rest.len();
        rest.copy_from_slice(&w(index)[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_offset_matches_the_whole_stream() {
        let mut whole = vec![0u8; 1000];
        fill(3, 0, &mut whole);
        for (off, len) in [(0, 0), (1, 1), (5, 3), (7, 9), (8, 8), (13, 500), (999, 1)] {
            let mut part = vec![0u8; len];
            fill(3, off as u64, &mut part);
            assert_eq!(part[..], whole[off..off + len], "offset {off} len {len}");
        }
        assert_eq!(whole[16..24], word(3, 2).to_le_bytes());
    }

    #[test]
    fn seeds_differ() {
        let (mut a, mut b) = ([0u8; 64], [0u8; 64]);
        fill(0, 0, &mut a);
        fill(1, 0, &mut b);
        assert_ne!(a, b);
    }
}
