//! Counter-based randomness for DARE and DELLA masks.
//!
//! Each mask element is a pure function of (seed, output tensor name, model,
//! element index): a key is derived once per (seed, tensor, model) with blake3,
//! and element `i` draws 16-bit lane `i % 4` of the SplitMix64 output for
//! counter `i / 4` under that key.
//! No generator state is carried between elements, so the masks are the same
//! whatever the thread count, chunk size or machine, and adding a model or
//! changing one model's density leaves every other model's masks unchanged
//! (mergekit draws from one global torch generator, so any such change shifts
//! every later mask).

use crate::simd::with_widest_simd;

/// The random stream of one model's mask over one output tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaskStream(u64);

const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

impl MaskStream {
    /// The stream for `model` (its reference as written, plus its position
    /// among entries naming the same model) in output tensor `tensor`.
    pub fn new(seed: u64, tensor: &str, model: &str, occurrence: usize) -> MaskStream {
        let mut h = blake3::Hasher::new();
        h.update(b"yibuild merge mask v1\0");
        h.update(&seed.to_le_bytes());
        for part in [tensor, model] {
            h.update(&(part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        h.update(&(occurrence as u64).to_le_bytes());
        let bytes = h.finalize();
        MaskStream(u64::from_le_bytes(
            bytes.as_bytes()[..8]
                .try_into()
                .expect("blake3 gives 32 bytes"),
        ))
    }

    /// The 64 random bits of counter `counter`.
    #[inline(always)]
    fn bits(self, counter: u64) -> u64 {
        let mut z = self
            .0
            .wrapping_add(counter.wrapping_add(1).wrapping_mul(GAMMA));
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform number in [0, 1) for counter `counter` (53 random bits), for
    /// uses other than masks.
    #[inline]
    pub fn uniform(self, counter: u64) -> f64 {
        (self.bits(counter) >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// The keep threshold of probability `p`: masks draw 16-bit lanes, so keep
    /// probabilities are quantized to 1/65536 (mergekit rounds them to the
    /// work dtype: 1/256 in bf16).
    #[inline]
    pub fn threshold(p: f64) -> u32 {
        (p.clamp(0.0, 1.0) * 65536.0).round() as u32
    }

    /// Bernoulli draw for element `index`: true (keep) with probability `p`.
    /// Element `i` uses 16-bit lane `i % 4` of the bits of counter `i / 4`.
    #[inline]
    pub fn keep(self, index: u64, p: f64) -> bool {
        let lane = (self.bits(index >> 2) >> ((index & 3) * 16)) & 0xFFFF;
        (lane as u32) < Self::threshold(p)
    }

    /// 32 mask bytes from counters `counter..counter + 8`.
    #[inline(always)]
    fn fill_block(self, counter: u64, threshold: u32, block: &mut [u8]) {
        let mut words = [0u64; 8];
        for (k, w) in words.iter_mut().enumerate() {
            *w = self.bits(counter + k as u64);
        }
        for (quad, word) in block.chunks_exact_mut(4).zip(words) {
            for (lane, m) in quad.iter_mut().enumerate() {
                *m = u8::from((((word >> (lane * 16)) & 0xFFFF) as u32) < threshold);
            }
        }
    }

    /// Writes the keep mask (1 = keep) of elements `first..first + out.len()`
    /// at probability `p`: the same draws as [`keep`](Self::keep), one hash per
    /// four elements.
    pub fn fill_mask(self, first: u64, p: f64, out: &mut [u8]) {
        let threshold = Self::threshold(p);
        let mut index = first;
        let mut rest = out;
        // Unaligned head, element by element.
        while index & 3 != 0 && !rest.is_empty() {
            rest[0] = u8::from(self.keep(index, p));
            rest = &mut rest[1..];
            index += 1;
        }
        // Eight hashes at a time, so the 64-bit multiplies vectorize.
        let whole = rest.len() / 32 * 32;
        let (blocks, tail) = rest.split_at_mut(whole);
        with_widest_simd!({
            for (b, block) in blocks.chunks_exact_mut(32).enumerate() {
                self.fill_block((index >> 2) + 8 * b as u64, threshold, block);
            }
        });
        index += whole as u64;
        let mut quads = tail.chunks_exact_mut(4);
        for quad in &mut quads {
            let word = self.bits(index >> 2);
            for (lane, m) in quad.iter_mut().enumerate() {
                *m = u8::from((((word >> (lane * 16)) & 0xFFFF) as u32) < threshold);
            }
            index += 4;
        }
        for m in quads.into_remainder() {
            *m = u8::from(self.keep(index, p));
            index += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_keyed_and_unbiased() {
        let a = MaskStream::new(1, "w", "model-a", 0);
        assert_eq!(a, MaskStream::new(1, "w", "model-a", 0));
        assert_ne!(a, MaskStream::new(1, "w", "model-b", 0));
        assert_ne!(a, MaskStream::new(2, "w", "model-a", 0));
        assert_ne!(a, MaskStream::new(1, "w", "model-a", 1));
        let n = 200_000;
        let kept = (0..n).filter(|&i| a.keep(i, 0.3)).count() as f64 / n as f64;
        assert!((kept - 0.3).abs() < 0.005, "{kept}");
        let mut mask = vec![0u8; 1001];
        a.fill_mask(7, 0.3, &mut mask);
        for (j, m) in mask.iter().enumerate() {
            assert_eq!(*m == 1, a.keep(7 + j as u64, 0.3), "element {}", 7 + j);
        }
        let mut mask = vec![0u8; 1001];
        a.fill_mask(7, 0.3, &mut mask);
        for (j, m) in mask.iter().enumerate() {
            assert_eq!(*m == 1, a.keep(7 + j as u64, 0.3), "element {}", 7 + j);
        }
    }
}
