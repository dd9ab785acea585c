//! A fast streaming checksum (not cryptographic) for the `bulk` and sink paths.
//!
//! Four independent lanes of a 64-bit multiply–rotate over little-endian u64 words, 32 bytes
//! per step, so the multiplies overlap (several GB/s natively, which matters in TCG guests).
//! The result depends only on the byte sequence, never on how it was split into `update`
//! calls: the sender and the receiver see different chunk boundaries.

const K: u64 = 0x9E37_79B9_7F4A_7C15;
const SEEDS: [u64; 4] = [
    0x243F_6A88_85A3_08D3,
    0x1319_8A2E_0370_7344,
    0xA409_3822_299F_31D0,
    0x082E_FA98_EC4E_6C89,
];
const BLOCK: usize = 32;

/// Streaming checksum state.
#[derive(Debug, Clone)]
pub struct Checksum {
    lanes: [u64; 4],
    len: u64,
    pending: [u8; BLOCK],
    pending_len: usize,
}

impl Default for Checksum {
    fn default() -> Self {
        Checksum {
            lanes: SEEDS,
            len: 0,
            pending: [0; BLOCK],
            pending_len: 0,
        }
    }
}

#[inline(always)]
fn mix(lane: u64, word: u64) -> u64 {
    (lane ^ word).wrapping_mul(K).rotate_left(29)
}

#[inline(always)]
fn word(b: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[..8]);
    u64::from_le_bytes(w)
}

/// Final avalanche (murmur3's fmix64).
fn fmix(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    h ^= h >> 33;
    h = h.wrapping_mul(0xC4CE_B9FE_1A85_EC53);
    h ^ (h >> 33)
}

impl Checksum {
    /// A fresh checksum.
    pub fn new() -> Self {
        Self::default()
    }

    #[inline(always)]
    fn block(lanes: &mut [u64; 4], b: &[u8]) {
        lanes[0] = mix(lanes[0], word(&b[0..]));
        lanes[1] = mix(lanes[1], word(&b[8..]));
        lanes[2] = mix(lanes[2], word(&b[16..]));
        lanes[3] = mix(lanes[3], word(&b[24..]));
    }

    /// Feeds `data`.
    pub fn update(&mut self, mut data: &[u8]) {
        self.len = self.len.wrapping_add(data.len() as u64);
        if self.pending_len > 0 {
            let take = (BLOCK - self.pending_len).min(data.len());
            self.pending[self.pending_len..self.pending_len + take].copy_from_slice(&data[..take]);
            self.pending_len += take;
            data = &data[take..];
            if self.pending_len < BLOCK {
                return;
            }
            let pending = self.pending;
            Self::block(&mut self.lanes, &pending);
            self.pending_len = 0;
        }
        let mut blocks = data.chunks_exact(BLOCK);
        let mut lanes = self.lanes;
        for b in &mut blocks {
            Self::block(&mut lanes, b);
        }
        self.lanes = lanes;
        let rest = blocks.remainder();
        self.pending[..rest.len()].copy_from_slice(rest);
        self.pending_len = rest.len();
    }

    /// Bytes fed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// The checksum of everything fed so far (the state is not consumed).
    pub fn finish(&self) -> u64 {
        let mut lanes = self.lanes;
        if self.pending_len > 0 {
            let mut last = [0u8; BLOCK];
            last[..self.pending_len].copy_from_slice(&self.pending[..self.pending_len]);
            Self::block(&mut lanes, &last);
        }
        let mut h = fmix(self.len ^ K);
        for lane in lanes {
            h = fmix(h ^ lane).wrapping_mul(K);
        }
        fmix(h)
    }
}

/// Checksum of `data` in one call.
#[cfg(test)]
pub fn checksum(data: &[u8]) -> u64 {
    let mut c = Checksum::new();
    c.update(data);
    c.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pattern;

    fn data(n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        pattern::fill(7, 0, &mut v);
        v
    }

    #[test]
    fn independent_of_chunk_boundaries() {
        let d = data(10_007);
        let whole = checksum(&d);
        for step in [1usize, 3, 7, 8, 31, 32, 33, 100, 4096, 9999] {
            let mut c = Checksum::new();
            for part in d.chunks(step) {
                c.update(part);
            }
            assert_eq!(c.finish(), whole, "step {step}");
            assert_eq!(c.len(), 10_007);
        }
        // Uneven, growing splits.
        let mut c = Checksum::new();
        let (mut at, mut n) = (0, 1);
        while at < d.len() {
            let end = (at + n).min(d.len());
            c.update(&d[at..end]);
            at = end;
            n = n * 3 % 1000 + 1;
        }
        assert_eq!(c.finish(), whole);
    }

    #[test]
    fn sensitive_to_content_order_and_length() {
        let d = data(4096);
        let base = checksum(&d);
        for i in [0usize, 1, 8, 31, 32, 2047, 4095] {
            let mut e = d.clone();
            e[i] ^= 1;
            assert_ne!(checksum(&e), base, "bit flip at {i}");
        }
        let mut swapped = d.clone();
        swapped.swap(0, 8);
        if swapped != d {
            assert_ne!(checksum(&swapped), base, "words swapped");
        }
        // Trailing zeros change the length, hence the checksum.
        let mut longer = d.clone();
        longer.push(0);
        assert_ne!(checksum(&longer), base);
        assert_ne!(checksum(&[]), checksum(&[0]));
        assert_ne!(checksum(&[0; 32]), checksum(&[0; 64]));
    }

    #[test]
    fn empty_is_stable() {
        assert_eq!(checksum(&[]), Checksum::new().finish());
    }
}
