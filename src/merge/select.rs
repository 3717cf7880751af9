//! Exact streaming top-k selection over a whole tensor without materializing it.
//!
//! TIES and breadcrumbs keep the k largest-magnitude entries of each model's
//! delta. Non-negative `f32` values order like their bit patterns, so a
//! two-level radix select finds the k-th largest value `T` exactly in two
//! streaming passes: one histogram of the high 16 bits, then one of the low 16
//! bits inside the bin that holds rank k. The top-k set is then "every value
//! above `T`, plus the first `k − count(> T)` values equal to `T` in element
//! order": exactly k entries, deterministic, with ties broken by position
//! (mergekit's argsort breaks them arbitrarily).

use rayon::prelude::*;

const BINS: usize = 1 << 16;

/// A request for the k largest of `n` non-negative values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopK {
    /// Bits of the threshold value `T`.
    pub threshold: u32,
    /// How many values equal to `T` (the first ones in element order) are in.
    pub ties_in: u64,
    /// True when k is 0: nothing is selected.
    pub empty: bool,
}

impl TopK {
    /// Whether a value is in the set, given how many values equal to the
    /// threshold came before it in element order.
    #[inline]
    pub fn contains(&self, bits: u32, ties_before: u64) -> bool {
        !self.empty
            && (bits > self.threshold || (bits == self.threshold && ties_before < self.ties_in))
    }
}

impl TopK {
    /// The membership mask (1 = in the set) of the next chunk of `keys`, in
    /// element order; `ties` counts threshold ties seen in earlier chunks of
    /// this pass and is updated. Rows of `row_len` are processed in parallel.
    pub fn mask_chunk(&self, keys: &[f32], row_len: usize, ties: &mut u64) -> Vec<u8> {
        let row_len = row_len.max(1);
        let per_row: Vec<u64> = keys
            .par_chunks(row_len)
            .map(|row| row.iter().filter(|v| v.to_bits() == self.threshold).count() as u64)
            .collect();
        let starts: Vec<u64> = per_row
            .iter()
            .map(|n| {
                let start = *ties;
                *ties += n;
                start
            })
            .collect();
        let mut mask = vec![0u8; keys.len()];
        mask.par_chunks_mut(row_len)
            .zip(keys.par_chunks(row_len))
            .zip(starts)
            .for_each(|((m, row), mut seen)| {
                for (m, v) in m.iter_mut().zip(row) {
                    let bits = v.to_bits();
                    *m = u8::from(self.contains(bits, seen));
                    seen += u64::from(bits == self.threshold);
                }
            });
        mask
    }
}

/// Histogram state of one selection while its passes run.
#[derive(Debug, Clone)]
pub struct Selection {
    k: u64,
    high: Vec<u64>,
    /// After the first pass: the high bin holding rank k and how many values
    /// lie above it.
    bin: Option<(u32, u64)>,
    low: Vec<u64>,
}

/// Histogram of one level of bits for a slice of values.
fn histogram(values: &[f32], level: Option<u32>) -> Vec<u64> {
    values
        .par_chunks(1 << 14)
        .fold(
            || vec![0u64; BINS],
            |mut h, part| {
                for v in part {
                    let bits = v.to_bits();
                    match level {
                        None => h[(bits >> 16) as usize] += 1,
                        Some(hi) if bits >> 16 == hi => h[(bits & 0xFFFF) as usize] += 1,
                        Some(_) => {}
                    }
                }
                h
            },
        )
        .reduce(
            || vec![0u64; BINS],
            |mut a, b| {
                a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
                a
            },
        )
}

/// The bin, counting down from the top, where the cumulative count reaches
/// `k`, and the count strictly above it.
fn find_bin(hist: &[u64], k: u64) -> (u32, u64) {
    let mut above = 0;
    for bin in (0..BINS).rev() {
        if above + hist[bin] >= k {
            return (bin as u32, above);
        }
        above += hist[bin];
    }
    (0, above)
}

impl Selection {
    /// Starts selecting the `k` largest values.
    pub fn new(k: u64) -> Selection {
        Selection {
            k,
            high: vec![0; BINS],
            bin: None,
            low: Vec::new(),
        }
    }

    /// True while the first pass (high bits) is running.
    pub fn first_pass(&self) -> bool {
        self.bin.is_none()
    }

    /// Feeds values of the current pass (absolute values, never NaN).
    pub fn observe(&mut self, values: &[f32]) {
        match self.bin {
            None => {
                let h = histogram(values, None);
                self.high.iter_mut().zip(h).for_each(|(a, b)| *a += b);
            }
            Some((hi, _)) => {
                let h = histogram(values, Some(hi));
                self.low.iter_mut().zip(h).for_each(|(a, b)| *a += b);
            }
        }
    }

    /// Ends the first pass.
    pub fn end_first_pass(&mut self) {
        self.bin = Some(find_bin(&self.high, self.k.max(1)));
        self.high = Vec::new();
        self.low = vec![0; BINS];
    }

    /// Ends the second pass and returns the selection.
    pub fn finish(self) -> TopK {
        let (hi, above_hi) = self.bin.expect("finish after end_first_pass");
        let remaining = self.k.max(1) - above_hi;
        let (lo, above_lo) = find_bin(&self.low, remaining);
        let above = above_hi + above_lo;
        TopK {
            threshold: (hi << 16) | lo,
            ties_in: self.k.saturating_sub(above),
            empty: self.k == 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive_topk(values: &[f32], k: usize) -> Vec<bool> {
        let mut idx: Vec<usize> = (0..values.len()).collect();
        // Descending by value, ties by position.
        idx.sort_by(|&a, &b| values[b].total_cmp(&values[a]).then(a.cmp(&b)));
        let mut keep = vec![false; values.len()];
        for &i in &idx[..k] {
            keep[i] = true;
        }
        keep
    }

    #[test]
    fn matches_a_sort_including_ties_and_chunking() {
        let mut rng = crate::fixtures::SplitMix(7);
        // Few distinct values, so the threshold lands on ties.
        let values: Vec<f32> = (0..10_000)
            .map(|_| (rng.next_u64() % 50) as f32 * 0.125)
            .collect();
        for k in [0usize, 1, 17, 5_000, 9_999, 10_000] {
            let mut sel = Selection::new(k as u64);
            for part in values.chunks(777) {
                sel.observe(part);
            }
            sel.end_first_pass();
            for part in values.chunks(1234) {
                sel.observe(part);
            }
            let top = sel.finish();
            let mut ties = 0;
            let got: Vec<bool> = values
                .chunks(999)
                .flat_map(|part| top.mask_chunk(part, 10, &mut ties))
                .map(|m| m == 1)
                .collect();
            assert_eq!(got, naive_topk(&values, k), "k = {k}");
        }
    }
}
