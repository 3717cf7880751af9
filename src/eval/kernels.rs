//! The CPU inner loop of the forward pass, the `X · Wᵀ` block product, with
//! an AVX2+FMA path chosen at run time and a portable fallback.
//!
//! Both operands are row-major with the reduction dimension contiguous (the
//! Hugging Face `[out, in]` weight layout), so every output element is one dot
//! product and its summation order depends only on `k`, never on how work is
//! split between threads: results are identical for any thread count.

/// Rows of `X` handled together by the block kernel.
const MR: usize = 3;
/// Rows of `W` handled together by the block kernel.
const NR: usize = 4;

/// `out[i * nb + j] = x[i] · w[j]` for the `m` rows of `x` and `nb` rows of `w`,
/// each row `k` long.
pub fn matmul_block(x: &[f32], m: usize, k: usize, w: &[f32], nb: usize, out: &mut [f32]) {
    debug_assert!(x.len() >= m * k && w.len() >= nb * k && out.len() >= m * nb);
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU supports AVX2 and FMA (checked above).
        unsafe { avx2::matmul_block(x, m, k, w, nb, out) };
        return;
    }
    for i in 0..m {
        for j in 0..nb {
            out[i * nb + j] = dot_portable(&x[i * k..(i + 1) * k], &w[j * k..(j + 1) * k]);
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn has_avx2_fma() -> bool {
    std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
}

/// Eight independent partial sums, so the compiler can vectorize without
/// reassociating.
fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{MR, NR};
    use std::arch::x86_64::*;

    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_extractf128_ps(v, 1), _mm256_castps256_ps128(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let n8 = n / 8 * 8;
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc = _mm256_setzero_ps();
        let mut p = 0;
        while p < n8 {
            acc = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(p)), _mm256_loadu_ps(pb.add(p)), acc);
            p += 8;
        }
        let mut s = hsum(acc);
        for q in n8..n {
            s += a[q] * b[q];
        }
        s
    }

    /// Register-blocked `MR × NR` tiles of dot products over the full `k`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn matmul_block(
        x: &[f32],
        m: usize,
        k: usize,
        w: &[f32],
        nb: usize,
        out: &mut [f32],
    ) {
        let k8 = k / 8 * 8;
        let mut i = 0;
        while i + MR <= m {
            let xp: [*const f32; MR] = std::array::from_fn(|r| x.as_ptr().add((i + r) * k));
            let mut j = 0;
            while j + NR <= nb {
                let wp: [*const f32; NR] = std::array::from_fn(|c| w.as_ptr().add((j + c) * k));
                let mut acc = [_mm256_setzero_ps(); MR * NR];
                let mut p = 0;
                while p < k8 {
                    let xv: [__m256; MR] = std::array::from_fn(|r| _mm256_loadu_ps(xp[r].add(p)));
                    for c in 0..NR {
                        let wv = _mm256_loadu_ps(wp[c].add(p));
                        for r in 0..MR {
                            acc[r * NR + c] = _mm256_fmadd_ps(xv[r], wv, acc[r * NR + c]);
                        }
                    }
                    p += 8;
                }
                for r in 0..MR {
                    for c in 0..NR {
                        let mut s = hsum(acc[r * NR + c]);
                        for q in k8..k {
                            s += *xp[r].add(q) * *wp[c].add(q);
                        }
                        out[(i + r) * nb + j + c] = s;
                    }
                }
                j += NR;
            }
            for jj in j..nb {
                for r in 0..MR {
                    out[(i + r) * nb + jj] =
                        dot(&x[(i + r) * k..(i + r + 1) * k], &w[jj * k..(jj + 1) * k]);
                }
            }
            i += MR;
        }
        for ii in i..m {
            for jj in 0..nb {
                out[ii * nb + jj] = dot(&x[ii * k..(ii + 1) * k], &w[jj * k..(jj + 1) * k]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_product_matches_naive_for_ragged_shapes() {
        let (m, k, nb) = (7, 21, 9);
        let x: Vec<f32> = (0..m * k)
            .map(|i| ((i * 37 % 11) as f32 - 5.0) / 7.0)
            .collect();
        let w: Vec<f32> = (0..nb * k)
            .map(|i| ((i * 13 % 17) as f32 - 8.0) / 9.0)
            .collect();
        let mut out = vec![0.0; m * nb];
        matmul_block(&x, m, k, &w, nb, &mut out);
        for i in 0..m {
            for j in 0..nb {
                let naive: f64 = (0..k)
                    .map(|p| x[i * k + p] as f64 * w[j * k + p] as f64)
                    .sum();
                assert!((out[i * nb + j] as f64 - naive).abs() < 1e-5, "({i},{j})");
            }
        }
        assert!((dot_portable(&x[..k], &w[..k]) - out[0]).abs() < 1e-5);
    }
}
