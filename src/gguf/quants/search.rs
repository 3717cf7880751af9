//! The scale searches shared by ggml's quantizers (`ggml-quants.c`): for a
//! group of values, pick a scale (and for the "min" types an offset) and the
//! integer levels that minimise a weighted error.
//!
//! Each function reproduces the reference C routine operation by operation —
//! the same float expressions in the same order, the same round-half-to-even
//! `nearest_int` — because the point is byte-identical output, not merely a
//! good quantization. Rust does not contract `a*b+c` into FMA and does not
//! reorder float sums, so the results match ggml compiled without fast-math.

// Index loops mirror ggml-quants.c line by line, which keeps the port checkable.
#![allow(clippy::needless_range_loop)]

use crate::simd::with_widest_simd;

/// Groups whose largest magnitude is below this are treated as all zero
/// (`GROUP_MAX_EPS`).
pub const GROUP_MAX_EPS: f32 = 1e-15;

/// Rounds to the nearest integer, ties to even, the way ggml does it: by adding
/// 1.5·2²³ and reading the mantissa. Valid for |x| ≤ 2²²; outside that range it
/// returns the same garbage ggml's version does.
#[inline]
pub fn nearest_int(x: f32) -> i32 {
    let bits = (x + 12_582_912.0f32).to_bits() as i32;
    (bits & 0x007f_ffff) - 0x0040_0000
}

/// Trials of a scale search evaluated side by side (one AVX2 register of f32).
const LANES: usize = 8;

/// `nearest_int(v)` clamped to `lo..=hi`, computed in floats so that it
/// vectorizes: adding and subtracting 1.5·2²³ rounds to an integer ties to
/// even exactly as [`nearest_int`] does, for the |v| ≤ 2²² that the searches
/// produce (their scales keep levels near `nmax`).
#[inline(always)]
fn round_clamped(v: f32, lo: f32, hi: f32) -> f32 {
    ((v + 12_582_912.0f32) - 12_582_912.0f32).max(lo).min(hi)
}

/// Sum of squares of a block, accumulated in order in f32 (the `sigma2` of
/// the importance-weighted quantizers).
pub fn sum_sq(x: &[f32]) -> f32 {
    let mut s = 0.0f32;
    for &v in x {
        s += v * v;
    }
    s
}

/// Rounds `x` to f16 and returns the bit pattern (round to nearest even, as ggml).
#[inline]
pub fn f16_bits(x: f32) -> u16 {
    half::f16::from_f32(x).to_bits()
}

/// The value of an f16 bit pattern.
#[inline]
pub fn f16_value(bits: u16) -> f32 {
    half::f16::from_bits(bits).to_f32()
}

/// Reads the little-endian f16 at `bytes[at..at + 2]` as f32.
#[inline]
pub fn read_f16(bytes: &[u8], at: usize) -> f32 {
    f16_value(u16::from_le_bytes([bytes[at], bytes[at + 1]]))
}

/// Writes `x` rounded to f16 at `bytes[at..at + 2]` and returns the rounded value.
#[inline]
pub fn write_f16(bytes: &mut [u8], at: usize, x: f32) -> f32 {
    let bits = f16_bits(x);
    bytes[at..at + 2].copy_from_slice(&bits.to_le_bytes());
    f16_value(bits)
}

/// The weight of element `x` in `make_qx_quants` when no explicit weights are given.
#[inline]
fn rmse_weight(rmse_type: i32, x: f32) -> f32 {
    match rmse_type {
        1 => x * x,
        2 => 1.0,
        3 => x.abs(),
        _ => x.abs().sqrt(),
    }
}

/// Symmetric quantization of `x` to levels `-nmax..nmax-1`, stored in `levels`
/// offset by `nmax`. With `rmse_type` 0 the scale is just `max/-nmax`; otherwise
/// 18 trial scales around it are tried and the least-squares optimum (weighted
/// by `weights`, or by `x²` for `rmse_type` 1) is kept (`make_qx_quants`).
///
/// # Panics
/// When the group is not 16 or 32 values, the only sizes ggml uses.
#[inline]
pub fn make_qx_quants(
    nmax: i32,
    x: &[f32],
    levels: &mut [i8],
    rmse_type: i32,
    weights: Option<&[f32]>,
) -> f32 {
    fn fixed<const N: usize>(
        nmax: i32,
        x: &[f32],
        levels: &mut [i8],
        rmse_type: i32,
        weights: Option<&[f32]>,
    ) -> f32 {
        let x: &[f32; N] = x.try_into().expect("group length checked by caller");
        let levels: &mut [i8; N] = (&mut levels[..N])
            .try_into()
            .expect("levels hold the group");
        let weights =
            weights.map(|w| <&[f32; N]>::try_from(&w[..N]).expect("one weight per value"));
        with_widest_simd!(qx_search::<N>(nmax, x, levels, rmse_type, weights))
    }
    match x.len() {
        16 => fixed::<16>(nmax, x, levels, rmse_type, weights),
        32 => fixed::<32>(nmax, x, levels, rmse_type, weights),
        n => panic!("make_qx_quants: group of {n} values (ggml uses 16 or 32)"),
    }
}

/// [`make_qx_quants`] with the group size known at compile time, so the
/// per-trial loops unroll.
#[inline(always)]
fn qx_search<const N: usize>(
    nmax: i32,
    x: &[f32; N],
    levels: &mut [i8; N],
    rmse_type: i32,
    weights: Option<&[f32; N]>,
) -> f32 {
    let n = N;
    let mut max = 0.0f32;
    let mut amax = 0.0f32;
    for &v in x {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        levels[..n].fill(0);
        return 0.0;
    }
    let nmax_f = nmax as f32;
    let iscale = -nmax_f / max;
    if rmse_type == 0 {
        for i in 0..n {
            let l = nearest_int(iscale * x[i]);
            levels[i] = (nmax + l.max(-nmax).min(nmax - 1)) as i8;
        }
        return 1.0 / iscale;
    }
    // The weights are fixed across trials: compute them once.
    let mut own = [0.0f32; N];
    let w: &[f32; N] = match weights {
        Some(w) => w,
        None => {
            for (b, &v) in own.iter_mut().zip(x) {
                *b = rmse_weight(rmse_type, v);
            }
            &own
        }
    };
    let w_of = |i: usize| w[i];
    let mut sumlx = 0.0f32;
    let mut suml2 = 0.0f32;
    for i in 0..n {
        let l = nearest_int(iscale * x[i]).max(-nmax).min(nmax - 1);
        levels[i] = (l + nmax) as i8;
        let w = w_of(i);
        sumlx += w * x[i] * l as f32;
        suml2 += w * l as f32 * l as f32;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    // The 18 trial scales are independent: evaluate them LANES at a time
    // (each lane in the reference's operation order), then pick in order.
    const STEPS: [i8; 18] = [
        -9, -8, -7, -6, -5, -4, -3, -2, -1, 1, 2, 3, 4, 5, 6, 7, 8, 9,
    ];
    let (lo, hi) = (-nmax_f, nmax_f - 1.0);
    let mut chosen = None;
    for chunk in STEPS.chunks(LANES) {
        let mut iscales = [0.0f32; LANES];
        for (s, &is) in iscales.iter_mut().zip(chunk) {
            *s = -(nmax_f + 0.1f32 * is as f32) / max;
        }
        let mut sum_lx = [0.0f32; LANES];
        let mut sum_l2 = [0.0f32; LANES];
        for i in 0..n {
            let w = w_of(i);
            for t in 0..LANES {
                let l = round_clamped(iscales[t] * x[i], lo, hi);
                sum_lx[t] += w * x[i] * l;
                sum_l2[t] += w * l * l;
            }
        }
        for t in 0..chunk.len() {
            if sum_l2[t] > 0.0 && sum_lx[t] * sum_lx[t] > best * sum_l2[t] {
                scale = sum_lx[t] / sum_l2[t];
                best = scale * sum_lx[t];
                chosen = Some(iscales[t]);
            }
        }
    }
    if let Some(iscale) = chosen {
        for i in 0..n {
            levels[i] = (nmax + round_clamped(iscale * x[i], lo, hi) as i32) as i8;
        }
    }
    scale
}

/// Q3_K's symmetric search (`make_q3_quants` with `do_rmse`): start from the
/// max-based scale, then move single levels while the `x²`-weighted
/// least-squares fit improves, up to five passes.
#[inline]
pub fn make_q3_quants(nmax: i32, x: &[f32], levels: &mut [i8]) -> f32 {
    let n = x.len();
    let levels = &mut levels[..n];
    let mut max = 0.0f32;
    let mut amax = 0.0f32;
    for &v in x {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        levels[..n].fill(0);
        return 0.0;
    }
    let iscale = -(nmax as f32) / max;
    let mut sumlx = 0.0f32;
    let mut suml2 = 0.0f32;
    for i in 0..n {
        let l = nearest_int(iscale * x[i]).max(-nmax).min(nmax - 1);
        levels[i] = l as i8;
        let w = x[i] * x[i];
        sumlx += w * x[i] * l as f32;
        suml2 += w * l as f32 * l as f32;
    }
    for _ in 0..5 {
        let mut changed = 0;
        for i in 0..n {
            let w = x[i] * x[i];
            let li = levels[i] as f32;
            let mut slx = sumlx - w * x[i] * li;
            if slx > 0.0 {
                let mut sl2 = suml2 - w * li * li;
                let new_l = nearest_int(x[i] * sl2 / slx).max(-nmax).min(nmax - 1);
                if new_l != levels[i] as i32 {
                    slx += w * x[i] * new_l as f32;
                    sl2 += w * new_l as f32 * new_l as f32;
                    if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                        levels[i] = new_l as i8;
                        sumlx = slx;
                        suml2 = sl2;
                        changed += 1;
                    }
                }
            }
        }
        if changed == 0 {
            break;
        }
    }
    for l in levels[..n].iter_mut() {
        *l += nmax as i8;
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// The parameters of an asymmetric (scale + min) grid search.
#[derive(Debug, Clone, Copy)]
pub struct MinSearch {
    /// Highest level (15 for 4 bits).
    pub nmax: i32,
    /// First trial offset added to `nmax`.
    pub rmin: f32,
    /// Step between trials.
    pub rdelta: f32,
    /// Number of steps (trials are `0..=nstep`).
    pub nstep: i32,
    /// Minimise weighted absolute error instead of squared error.
    pub use_mad: bool,
}

/// Asymmetric quantization `x ≈ scale·l − min` with levels `0..=nmax`
/// (`make_qkx2_quants`, and `make_qkx3_quants` which differs only in the
/// defaults the callers pass). Returns `(scale, min)` with `min ≥ 0`.
#[inline]
pub fn make_qkx_quants(p: MinSearch, x: &[f32], weights: &[f32], levels: &mut [u8]) -> (f32, f32) {
    with_widest_simd!(if p.use_mad {
        qkx_search::<true>(p, x, weights, levels)
    } else {
        qkx_search::<false>(p, x, weights, levels)
    })
}

/// [`make_qkx_quants`] with the error metric fixed at compile time (the
/// hottest loop of Q2_K/Q4_K/Q5_K).
#[inline(always)]
fn qkx_search<const MAD: bool>(
    p: MinSearch,
    x: &[f32],
    weights: &[f32],
    levels: &mut [u8],
) -> (f32, f32) {
    let n = x.len();
    let (weights, levels) = (&weights[..n], &mut levels[..n]);
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max <= min {
        levels[..n].fill(0);
        return (0.0, -min);
    }
    let nmax_f = p.nmax as f32;
    let iscale = nmax_f / (max - min);
    let mut scale = 1.0 / iscale;
    let err = |d: f32| if MAD { d.abs() } else { d * d };
    let mut best_error = 0.0f32;
    for i in 0..n {
        let l = nearest_int(iscale * (x[i] - min)).max(0).min(p.nmax);
        levels[i] = l as u8;
        let diff = scale * levels[i] as f32 + min - x[i];
        best_error += weights[i] * err(diff);
    }
    if p.nstep < 1 {
        return (scale, -min);
    }
    // The trials run LANES at a time, each lane doing exactly the scalar
    // trial's operations in the same order (so the bytes are the
    // reference's) while the loops vectorize. A trial that wins moves `min`,
    // which every later trial depends on: the lanes after it are discarded
    // and the search goes on from the next trial.
    let trials = p.nstep as usize + 1;
    let mut chosen = None;
    let mut next = 0;
    while next < trials {
        let first = next;
        next = (first + LANES).min(trials);
        let mut iscale = [0.0f32; LANES];
        for (t, s) in iscale.iter_mut().enumerate() {
            *s = (p.rmin + p.rdelta * (first + t) as f32 + nmax_f) / (max - min);
        }
        let level = |t: usize, i: usize| round_clamped(iscale[t] * (x[i] - min), 0.0, nmax_f);
        let mut sum_l = [0.0f32; LANES];
        let mut sum_l2 = [0.0f32; LANES];
        let mut sum_xl = [0.0f32; LANES];
        for i in 0..n {
            let w = weights[i];
            for t in 0..LANES {
                let lf = level(t, i);
                sum_l[t] += w * lf;
                sum_l2[t] += w * lf * lf;
                sum_xl[t] += w * lf * x[i];
            }
        }
        let mut d = [0.0f32; LANES];
        let mut this_scale = [0.0f32; LANES];
        let mut this_min = [0.0f32; LANES];
        for t in 0..LANES {
            d[t] = sum_w * sum_l2[t] - sum_l[t] * sum_l[t];
            this_scale[t] = (sum_w * sum_xl[t] - sum_x * sum_l[t]) / d[t];
            this_min[t] = (sum_l2[t] * sum_x - sum_l[t] * sum_xl[t]) / d[t];
            if this_min[t] > 0.0 {
                this_min[t] = 0.0;
                this_scale[t] = sum_xl[t] / sum_l2[t];
            }
        }
        let mut cur_error = [0.0f32; LANES];
        for i in 0..n {
            for t in 0..LANES {
                let diff = this_scale[t] * level(t, i) + this_min[t] - x[i];
                cur_error[t] += weights[i] * err(diff);
            }
        }
        for t in 0..next - first {
            if d[t] > 0.0 && cur_error[t] < best_error {
                best_error = cur_error[t];
                scale = this_scale[t];
                chosen = Some((iscale[t], min));
                min = this_min[t];
                next = first + t + 1;
                break;
            }
        }
    }
    if let Some((iscale, trial_min)) = chosen {
        for i in 0..n {
            levels[i] = round_clamped(iscale * (x[i] - trial_min), 0.0, nmax_f) as u8;
        }
    }
    (scale, -min)
}

/// Quantizes non-negative values (the sub-block scales of an imatrix-weighted
/// k-quant) to `0..=nmax` (`make_qp_quants`): 8 trial scales, then up to five
/// passes of single-level moves on the weighted least-squares fit.
#[inline]
pub fn make_qp_quants(nmax: i32, x: &[f32], levels: &mut [u8], weights: &[f32]) -> f32 {
    let n = x.len();
    let (levels, weights) = (&mut levels[..n], &weights[..n]);
    let mut max = 0.0f32;
    for &v in x {
        max = max.max(v);
    }
    if max < GROUP_MAX_EPS {
        levels[..n].fill(0);
        return 0.0;
    }
    let nmax_f = nmax as f32;
    let mut iscale = nmax_f / max;
    for i in 0..n {
        levels[i] = nearest_int(iscale * x[i]) as u8;
    }
    let scale = 1.0 / iscale;
    let mut best_mse = 0.0f32;
    for i in 0..n {
        let diff = x[i] - scale * levels[i] as f32;
        best_mse += weights[i] * diff * diff;
    }
    for is in -4..=4 {
        if is == 0 {
            continue;
        }
        let iscale_is = (0.1f32 * is as f32 + nmax_f) / max;
        let scale_is = 1.0 / iscale_is;
        let mut mse = 0.0f32;
        for i in 0..n {
            let l = nearest_int(iscale_is * x[i]).min(nmax);
            let diff = x[i] - scale_is * l as f32;
            mse += weights[i] * diff * diff;
        }
        if mse < best_mse {
            best_mse = mse;
            iscale = iscale_is;
        }
    }
    let mut sumlx = 0.0f32;
    let mut suml2 = 0.0f32;
    for i in 0..n {
        let l = nearest_int(iscale * x[i]).min(nmax);
        levels[i] = l as u8;
        let w = weights[i];
        sumlx += w * x[i] * l as f32;
        suml2 += w * l as f32 * l as f32;
    }
    for _ in 0..5 {
        let mut changed = 0;
        for i in 0..n {
            let w = weights[i];
            let li = levels[i] as f32;
            let mut slx = sumlx - w * x[i] * li;
            let mut sl2 = suml2 - w * li * li;
            if slx > 0.0 && sl2 > 0.0 {
                let new_l = nearest_int(x[i] * sl2 / slx).min(nmax);
                if new_l != levels[i] as i32 {
                    slx += w * x[i] * new_l as f32;
                    sl2 += w * new_l as f32 * new_l as f32;
                    if slx * slx * suml2 > sumlx * sumlx * sl2 {
                        levels[i] = new_l as u8;
                        sumlx = slx;
                        suml2 = sl2;
                        changed += 1;
                    }
                }
            }
        }
        if changed == 0 {
            break;
        }
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_int_rounds_half_to_even() {
        assert_eq!(nearest_int(0.5), 0);
        assert_eq!(nearest_int(1.5), 2);
        assert_eq!(nearest_int(2.5), 2);
        assert_eq!(nearest_int(-0.5), 0);
        assert_eq!(nearest_int(-1.5), -2);
        assert_eq!(nearest_int(-2.6), -3);
        assert_eq!(nearest_int(31.49), 31);
    }
}
