//! The 32-element block types: Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0.
//!
//! Without an importance matrix these are ggml's `quantize_row_*_ref`
//! formulas (max- or min/max-based scale, truncating casts exactly as in C);
//! with one, the `quantize_row_*_impl` searches, whose weights
//! `imatrix_j · sqrt(σ² + x_j²)` use σ² = mean(x²) over the whole row.

// Index loops mirror ggml-quants.c line by line, which keeps the port checkable.
#![allow(clippy::needless_range_loop)]

use super::search::{make_qkx_quants, make_qx_quants, read_f16, write_f16, MinSearch};

/// Elements per block.
pub const QK: usize = 32;

/// The imatrix-path search settings of Q4_1/Q5_1 (`make_qkx3_quants(.., -0.9, 0.05, 36)`).
fn imatrix_min_search(nmax: i32) -> MinSearch {
    MinSearch {
        nmax,
        rmin: -0.9,
        rdelta: 0.05,
        nstep: 36,
        use_mad: false,
    }
}

/// The value with the largest magnitude (the first one on ties), and that magnitude.
fn signed_absmax(x: &[f32]) -> (f32, f32) {
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    (max, amax)
}

fn min_max(x: &[f32]) -> (f32, f32) {
    let (mut min, mut max) = (f32::MAX, -f32::MAX);
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    (min, max)
}

/// Mean of x² over a row: the σ² of the imatrix weights.
pub fn row_sigma2(x: &[f32]) -> f32 {
    let mut sum = 0.0f32;
    for &v in x {
        sum += v * v;
    }
    sum / x.len() as f32
}

/// `imatrix_j · sqrt(σ² + x_j²)` for one block.
fn imatrix_weights(x: &[f32], qw: &[f32], sigma2: f32, out: &mut [f32]) {
    for j in 0..x.len() {
        out[j] = qw[j] * (sigma2 + x[j] * x[j]).sqrt();
    }
}

/// Packs 32 levels of 0..15 as low nibbles (elements 0..16) and high nibbles (16..32).
fn pack_nibbles(levels: &[u8], qs: &mut [u8]) {
    for j in 0..QK / 2 {
        qs[j] = (levels[j] & 0x0f) | ((levels[j + QK / 2] & 0x0f) << 4);
    }
}

/// Packs the fifth bit of 32 levels into the little-endian u32 `qh`.
fn pack_high_bits(levels: &[u8], qh: &mut [u8]) {
    let mut bits = 0u32;
    for (j, &l) in levels.iter().enumerate().take(QK) {
        bits |= (((l & 0x10) >> 4) as u32) << j;
    }
    qh.copy_from_slice(&bits.to_le_bytes());
}

/// The scale and levels of a symmetric block with levels `0..2·half`
/// (x = (q − half)·d): ggml's `quantize_row_q4_0`/`q5_0` reference, or its
/// importance-weighted search when an imatrix is given. Writes d at `out[0..2]`.
fn symmetric_block(
    x: &[f32],
    imatrix: Option<(&[f32], f32)>,
    half: i32,
    levels: &mut [u8; QK],
    out: &mut [u8],
) {
    match imatrix {
        None => {
            let (max, _) = signed_absmax(x);
            let d = max / -(half as f32);
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            write_f16(out, 0, d);
            let offset = half as f32 + 0.5;
            let top = (2 * half - 1) as i8;
            for (l, &v) in levels.iter_mut().zip(x) {
                *l = ((v * id + offset) as i8).min(top) as u8;
            }
        }
        Some((qw, sigma2)) => {
            let mut w = [0.0f32; QK];
            imatrix_weights(x, qw, sigma2, &mut w);
            let mut l8 = [0i8; QK];
            let d = make_qx_quants(half, x, &mut l8, 1, Some(&w));
            write_f16(out, 0, d);
            for (l, v) in levels.iter_mut().zip(l8) {
                *l = v as u8;
            }
        }
    }
}

/// Q4_0 (18 bytes: f16 d, 16 bytes of nibbles; x = (q − 8)·d).
pub fn quantize_q4_0(x: &[f32], imatrix: Option<(&[f32], f32)>, out: &mut [u8]) {
    let mut levels = [0u8; QK];
    symmetric_block(x, imatrix, 8, &mut levels, out);
    pack_nibbles(&levels, &mut out[2..18]);
}

/// Q4_1 (20 bytes: f16 d, f16 m, nibbles; x = q·d + m).
pub fn quantize_q4_1(x: &[f32], imatrix: Option<(&[f32], f32)>, out: &mut [u8]) {
    let mut levels = [0u8; QK];
    asymmetric_block(x, imatrix, 15, &mut levels, out);
    pack_nibbles(&levels, &mut out[4..20]);
}

/// Q5_0 (22 bytes: f16 d, u32 fifth bits, nibbles; x = (q − 16)·d).
pub fn quantize_q5_0(x: &[f32], imatrix: Option<(&[f32], f32)>, out: &mut [u8]) {
    let mut levels = [0u8; QK];
    symmetric_block(x, imatrix, 16, &mut levels, out);
    pack_high_bits(&levels, &mut out[2..6]);
    pack_nibbles(&levels, &mut out[6..22]);
}

/// Q5_1 (24 bytes: f16 d, f16 m, u32 fifth bits, nibbles; x = q·d + m).
pub fn quantize_q5_1(x: &[f32], imatrix: Option<(&[f32], f32)>, out: &mut [u8]) {
    let mut levels = [0u8; QK];
    asymmetric_block(x, imatrix, 31, &mut levels, out);
    pack_high_bits(&levels, &mut out[4..8]);
    pack_nibbles(&levels, &mut out[8..24]);
}

/// Scale, minimum (written at `out[0..4]`) and levels of a Q4_1/Q5_1 block.
fn asymmetric_block(
    x: &[f32],
    imatrix: Option<(&[f32], f32)>,
    nmax: i32,
    levels: &mut [u8; QK],
    out: &mut [u8],
) {
    match imatrix {
        None => {
            let (min, max) = min_max(x);
            let d = (max - min) / nmax as f32;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            write_f16(out, 0, d);
            write_f16(out, 2, min);
            for (l, &v) in levels.iter_mut().zip(x) {
                let q = (v - min) * id + 0.5;
                *l = if nmax == 15 {
                    (q as i8).min(15) as u8
                } else {
                    q as u8
                };
            }
        }
        Some((qw, sigma2)) => {
            let mut w = [0.0f32; QK];
            imatrix_weights(x, qw, sigma2, &mut w);
            let (d, the_min) = make_qkx_quants(imatrix_min_search(nmax), x, &w, levels);
            write_f16(out, 0, d);
            write_f16(out, 2, -the_min);
        }
    }
}

/// Q8_0 (34 bytes: f16 d, 32 signed bytes; x = q·d). The imatrix is ignored, as in ggml.
pub fn quantize_q8_0(x: &[f32], out: &mut [u8]) {
    let (_, amax) = signed_absmax(x);
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    write_f16(out, 0, d);
    for (o, &v) in out[2..34].iter_mut().zip(x) {
        *o = ((v * id).round() as i8) as u8;
    }
}

/// Dequantizes one 32-element block of any legacy type into `y`.
pub fn dequantize_block(ty: super::GgmlType, b: &[u8], y: &mut [f32]) {
    use super::GgmlType as T;
    let nibble = |qs: &[u8], j: usize| {
        if j < 16 {
            qs[j] & 0x0f
        } else {
            qs[j - 16] >> 4
        }
    };
    let high = |qh: &[u8], j: usize| {
        let bits = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
        (((bits >> j) & 1) << 4) as u8
    };
    let d = read_f16(b, 0);
    match ty {
        T::Q4_0 => {
            for (j, o) in y.iter_mut().enumerate() {
                *o = (nibble(&b[2..], j) as i32 - 8) as f32 * d;
            }
        }
        T::Q4_1 => {
            let m = read_f16(b, 2);
            for (j, o) in y.iter_mut().enumerate() {
                *o = nibble(&b[4..], j) as f32 * d + m;
            }
        }
        T::Q5_0 => {
            for (j, o) in y.iter_mut().enumerate() {
                let q = nibble(&b[6..], j) | high(&b[2..6], j);
                *o = (q as i32 - 16) as f32 * d;
            }
        }
        T::Q5_1 => {
            let m = read_f16(b, 2);
            for (j, o) in y.iter_mut().enumerate() {
                let q = nibble(&b[8..], j) | high(&b[4..8], j);
                *o = q as f32 * d + m;
            }
        }
        T::Q8_0 => {
            for (j, o) in y.iter_mut().enumerate() {
                *o = b[2 + j] as i8 as f32 * d;
            }
        }
        _ => unreachable!("dequantize_block called with non-legacy type {ty}"),
    }
}
