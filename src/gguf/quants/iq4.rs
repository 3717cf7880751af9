//! The 4-bit non-linear i-quants: IQ4_NL (32-element blocks, one f16 scale)
//! and IQ4_XS (256-element super-blocks of eight 32-element groups with 6-bit
//! group scales). Both map each element to one of 16 fixed, non-uniformly
//! spaced levels ([`KVALUES_IQ4NL`]) times a scale, which fits the bell shape
//! of weight distributions better than Q4_0's evenly spaced levels.
//!
//! The quantizer reproduces ggml's `quantize_row_iq4_nl_impl` as
//! `quantize_iq4_nl` / `quantize_iq4_xs` call it (15 trial scales per group,
//! error weighted by `x²` or by the importance matrix), operation by operation.

// Index loops mirror ggml-quants.c line by line, which keeps the port checkable.
#![allow(clippy::needless_range_loop)]

use super::search::{nearest_int, read_f16, sum_sq, write_f16, GROUP_MAX_EPS};
use crate::gguf::types::QK_K;

/// The 16 levels of IQ4_NL and IQ4_XS (`kvalues_iq4nl` in ggml-common.h,
/// MIT licence), in increasing order.
pub const KVALUES_IQ4NL: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// Trial scales on each side of the first guess (`ntry` in ggml; both
/// quantizers pass 7).
const NTRY: i32 = 7;

/// Index of the level of `values` (sorted ascending) nearest to `x`, ties to
/// the upper one (`best_index_int8`).
fn best_index(values: &[i8; 16], x: f32) -> u8 {
    let n = values.len();
    if x <= values[0] as f32 {
        return 0;
    }
    if x >= values[n - 1] as f32 {
        return (n - 1) as u8;
    }
    let (mut ml, mut mu) = (0, n - 1);
    while mu - ml > 1 {
        let mav = (ml + mu) / 2;
        if x < values[mav] as f32 {
            mu = mav;
        } else {
            ml = mav;
        }
    }
    if x - (values[mu - 1] as f32) < values[mu] as f32 - x {
        (mu - 1) as u8
    } else {
        mu as u8
    }
}

/// Weighted sums `(Σ w·q·x, Σ w·q²)` of the levels `x·id` rounds to.
fn level_sums(xb: &[f32], weight: &[f32], id: f32, levels: Option<&mut [u8]>) -> (f32, f32) {
    let (mut sumqx, mut sumq2) = (0.0f32, 0.0f32);
    let mut store = levels;
    for j in 0..xb.len() {
        let l = best_index(&KVALUES_IQ4NL, id * xb[j]);
        if let Some(lv) = store.as_deref_mut() {
            lv[j] = l;
        }
        let q = KVALUES_IQ4NL[l as usize] as f32;
        let w = weight[j];
        sumqx += w * q * xb[j];
        sumq2 += w * q * q;
    }
    (sumqx, sumq2)
}

/// The best scale of one 32-element group (0 for an all-zero group), with the
/// group's levels for the first guess left in `levels`.
fn group_scale(xb: &[f32], qw: Option<&[f32]>, sigma2: f32, levels: &mut [u8]) -> f32 {
    let mut weight = [0.0f32; 32];
    match qw {
        Some(qw) => {
            for j in 0..32 {
                weight[j] = qw[j] * (sigma2 + xb[j] * xb[j]).sqrt();
            }
        }
        None => {
            for j in 0..32 {
                weight[j] = xb[j] * xb[j];
            }
        }
    }
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in xb {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        return 0.0;
    }
    let v0 = KVALUES_IQ4NL[0] as f32;
    let d = -max / v0;
    let (sumqx, sumq2) = level_sums(xb, &weight, 1.0 / d, Some(levels));
    let mut d = if sumq2 > 0.0 { sumqx / sumq2 } else { 0.0 };
    let mut best = d * sumqx;
    for itry in -NTRY..=NTRY {
        let id = (itry + KVALUES_IQ4NL[0] as i32) as f32 / max;
        let (sumqx, sumq2) = level_sums(xb, &weight, id, None);
        if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
            d = sumqx / sumq2;
            best = d * sumqx;
        }
    }
    d
}

/// Packs 32 levels into 16 bytes: low nibbles hold elements 0..16, high
/// nibbles 16..32.
fn pack_nibbles(levels: &[u8], qs: &mut [u8]) {
    for i in 0..levels.len() / 32 {
        for j in 0..16 {
            qs[16 * i + j] = levels[32 * i + j] | (levels[32 * i + 16 + j] << 4);
        }
    }
}

/// IQ4_NL (18 bytes: f16 d, qs[16]).
pub fn quantize_iq4_nl(x: &[f32], imatrix: Option<&[f32]>, out: &mut [u8]) {
    let sigma2 = sum_sq(x) * (2.0 / 32.0);
    let mut levels = [0u8; 32];
    let scale = group_scale(x, imatrix, sigma2, &mut levels);
    write_f16(out, 0, scale);
    let id = if scale != 0.0 { 1.0 / scale } else { 0.0 };
    for j in 0..32 {
        levels[j] = best_index(&KVALUES_IQ4NL, id * x[j]);
    }
    pack_nibbles(&levels, &mut out[2..18]);
}

/// IQ4_XS (136 bytes: f16 d, u16 scales_h, scales_l[4], qs[128]).
pub fn quantize_iq4_xs(x: &[f32], imatrix: Option<&[f32]>, out: &mut [u8]) {
    let sigma2 = sum_sq(x) * (2.0 / QK_K as f32);
    let mut levels = [0u8; QK_K];
    let mut scales = [0.0f32; QK_K / 32];
    let (mut max_scale, mut amax_scale) = (0.0f32, 0.0f32);
    for ib in 0..QK_K / 32 {
        let xb = &x[32 * ib..32 * ib + 32];
        let qw = imatrix.map(|w| &w[32 * ib..32 * ib + 32]);
        scales[ib] = group_scale(xb, qw, sigma2, &mut levels[32 * ib..32 * ib + 32]);
        let abs_d = scales[ib].abs();
        if abs_d > amax_scale {
            amax_scale = abs_d;
            max_scale = scales[ib];
        }
    }
    // An all-zero super-block stores d = -0.0 (0x8000), as ggml does.
    let d = -max_scale / 32.0;
    write_f16(out, 0, d);
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut scales_h = 0u16;
    out[4..8].fill(0);
    for ib in 0..QK_K / 32 {
        let l = nearest_int(id * scales[ib]).clamp(-32, 31);
        let dl = d * l as f32;
        let idl = if dl != 0.0 { 1.0 / dl } else { 0.0 };
        for j in 32 * ib..32 * ib + 32 {
            levels[j] = best_index(&KVALUES_IQ4NL, idl * x[j]);
        }
        let l = (l + 32) as u8;
        out[4 + ib / 2] |= (l & 0x0f) << (4 * (ib % 2));
        scales_h |= ((l >> 4) as u16) << (2 * ib);
    }
    out[2..4].copy_from_slice(&scales_h.to_le_bytes());
    pack_nibbles(&levels, &mut out[8..136]);
}

/// Decodes one IQ4_NL block (32 values) into `y`.
pub fn dequantize_iq4_nl(b: &[u8], y: &mut [f32]) {
    let d = read_f16(b, 0);
    unpack_scaled(d, &b[2..18], y);
}

/// Decodes one IQ4_XS super-block (256 values) into `y`.
pub fn dequantize_iq4_xs(b: &[u8], y: &mut [f32]) {
    let d = read_f16(b, 0);
    let scales_h = u16::from_le_bytes([b[2], b[3]]);
    for ib in 0..QK_K / 32 {
        let ls = ((b[4 + ib / 2] >> (4 * (ib % 2))) & 0x0f)
            | ((((scales_h >> (2 * ib)) & 3) as u8) << 4);
        let dl = d * (ls as i32 - 32) as f32;
        unpack_scaled(
            dl,
            &b[8 + 16 * ib..8 + 16 * ib + 16],
            &mut y[32 * ib..32 * ib + 32],
        );
    }
}

/// `y[j] = d · level(nibble j)` for one 32-element group packed as by [`pack_nibbles`].
fn unpack_scaled(d: f32, qs: &[u8], y: &mut [f32]) {
    for j in 0..16 {
        y[j] = d * KVALUES_IQ4NL[(qs[j] & 0x0f) as usize] as f32;
        y[j + 16] = d * KVALUES_IQ4NL[(qs[j] >> 4) as usize] as f32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_index_picks_the_nearest_level_and_the_upper_on_ties() {
        assert_eq!(best_index(&KVALUES_IQ4NL, -500.0), 0);
        assert_eq!(best_index(&KVALUES_IQ4NL, 500.0), 15);
        assert_eq!(best_index(&KVALUES_IQ4NL, 0.0), 8);
        assert_eq!(best_index(&KVALUES_IQ4NL, 7.0), 9);
        // -4.5 is equally far from -10 and 1: ggml keeps the upper one
        // (`x - lo < hi - x` is false on a tie).
        assert_eq!(best_index(&KVALUES_IQ4NL, -4.5), 8);
    }

    #[test]
    fn an_all_zero_super_block_stores_negative_zero_and_the_level_nearest_zero() {
        let mut out = [0xAAu8; 136];
        quantize_iq4_xs(&[0.0; QK_K], None, &mut out);
        assert_eq!(&out[0..2], &[0x00, 0x80]);
        assert!(out[8..].iter().all(|&b| b == 0x88));
        let mut y = [1.0f32; QK_K];
        dequantize_iq4_xs(&out, &mut y);
        assert!(y.iter().all(|v| *v == 0.0));
    }
}
