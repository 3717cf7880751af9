//! Counter-based randomness for DARE and DELLA masks.
//!
//! Each mask element is a pure function of (seed, output tensor name, model,
//! element index): a key is derived once per (seed, tensor, model) with blake3,
//! and element `i` draws the SplitMix64 output for counter `i` under that key.
//! No generator state is carried between elements, so the masks are the same
//! whatever the thread count, chunk size or machine, and adding a model or
//! changing one model's density leaves every other model's masks unchanged
//! (mergekit draws from one global torch generator, so any such change shifts
//! every later mask).

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

    /// A uniform number in [0, 1) for element `index` (53 random bits).
    #[inline]
    pub fn uniform(self, index: u64) -> f64 {
        let mut z = self
            .0
            .wrapping_add(index.wrapping_add(1).wrapping_mul(GAMMA));
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Bernoulli draw: true (keep) with probability `p`.
    #[inline]
    pub fn keep(self, index: u64, p: f64) -> bool {
        self.uniform(index) < p
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
    }
}
