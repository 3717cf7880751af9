//! The k-quants: 256-element super-blocks of 16- or 32-element groups, each
//! group with its own quantized scale (and min for Q2_K/Q4_K/Q5_K).
//!
//! Without an importance matrix these reproduce ggml's current
//! `quantize_row_q*_K_ref` (grid-searched `make_qkx2_quants` for Q2/Q4/Q5_K,
//! the 18-trial `make_qx_quants` for Q6_K, `make_q3_quants` for Q3_K); with
//! one, `quantize_row_q*_K_impl` (`make_qkx3_quants` + `make_qp_quants` for
//! the group scales). candle still ships the 2023 algorithms, whose bytes differ.

// Index loops mirror ggml-quants.c line by line, which keeps the port checkable.
#![allow(clippy::needless_range_loop)]

use super::search::{
    make_q3_quants, make_qkx_quants, make_qp_quants, make_qx_quants, nearest_int, read_f16, sum_sq,
    write_f16, MinSearch, GROUP_MAX_EPS,
};
use crate::gguf::types::QK_K;

/// Packs 2-bit levels: byte `j/4 + l` of each 128-element half holds
/// elements `l`, `l+32`, `l+64`, `l+96` (Q2_K and the low bits of Q3_K).
fn pack_2bit(levels: &[u8; QK_K], qs: &mut [u8]) {
    for j in (0..QK_K).step_by(128) {
        for l in 0..32 {
            qs[j / 4 + l] = levels[j + l]
                | (levels[j + l + 32] << 2)
                | (levels[j + l + 64] << 4)
                | (levels[j + l + 96] << 6);
        }
    }
}

/// Stores the 6-bit scale `ls` and min `lm` of group `j` in the 12-byte
/// Q4_K/Q5_K scale array.
fn put_scale_min_k4(j: usize, ls: u8, lm: u8, s: &mut [u8]) {
    if j < 4 {
        s[j] = ls;
        s[j + 4] = lm;
    } else {
        s[j + 4] = (ls & 0x0f) | ((lm & 0x0f) << 4);
        s[j - 4] |= (ls >> 4) << 6;
        s[j] |= (lm >> 4) << 6;
    }
}

/// Reads the 6-bit scale and min of group `j` (`get_scale_min_k4`).
fn get_scale_min_k4(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// Re-derives the levels of a scale+min group from the stored (rounded)
/// scale and min: `l = clamp(round((x + dm)/d), 0, nmax)`.
fn requantize_min_group(x: &[f32], d: f32, dm: f32, nmax: i32, levels: &mut [u8]) {
    if d == 0.0 {
        return;
    }
    for (l, &v) in levels.iter_mut().zip(x) {
        *l = nearest_int((v + dm) / d).max(0).min(nmax) as u8;
    }
}

/// Q2_K (84 bytes: scales[16] (low nibble scale, high nibble min), qs[64], f16 d, f16 dmin).
pub fn quantize_q2_k(x: &[f32], imatrix: Option<&[f32]>, out: &mut [u8]) {
    let mut levels = [0u8; QK_K];
    let mut weights = [0.0f32; 16];
    let mut scales = [0.0f32; 16];
    let mut mins = [0.0f32; 16];
    let (d, dmin);
    match imatrix {
        None => {
            let search = MinSearch {
                nmax: 3,
                rmin: -0.5,
                rdelta: 0.1,
                nstep: 15,
                use_mad: true,
            };
            let (mut max_scale, mut max_min) = (0.0f32, 0.0f32);
            for j in 0..16 {
                let g = &x[16 * j..16 * j + 16];
                for (w, &v) in weights.iter_mut().zip(g) {
                    *w = v.abs();
                }
                let lv = &mut levels[16 * j..16 * j + 16];
                (scales[j], mins[j]) = make_qkx_quants(search, g, &weights, lv);
                if scales[j] > max_scale {
                    max_scale = scales[j];
                }
                if mins[j] > max_min {
                    max_min = mins[j];
                }
            }
            let sc = &mut out[0..16];
            if max_scale > 0.0 {
                let iscale = 15.0 / max_scale;
                for j in 0..16 {
                    sc[j] = nearest_int(iscale * scales[j]) as u8;
                }
                d = write_f16(out, 80, max_scale / 15.0);
            } else {
                sc.fill(0);
                d = write_f16(out, 80, 0.0);
            }
            if max_min > 0.0 {
                let iscale = 15.0 / max_min;
                for j in 0..16 {
                    out[j] |= (nearest_int(iscale * mins[j]) << 4) as u8;
                }
                dmin = write_f16(out, 82, max_min / 15.0);
            } else {
                dmin = write_f16(out, 82, 0.0);
            }
        }
        Some(qw) => {
            let search = MinSearch {
                nmax: 3,
                rmin: -0.9,
                rdelta: 0.05,
                nstep: 36,
                use_mad: false,
            };
            let sigma2 = sum_sq(x) / QK_K as f32;
            let mut sw = [0.0f32; 16];
            for j in 0..16 {
                let g = &x[16 * j..16 * j + 16];
                for l in 0..16 {
                    weights[l] = qw[16 * j + l] * (sigma2 + g[l] * g[l]).sqrt();
                }
                for &w in &weights {
                    sw[j] += w;
                }
                let lv = &mut levels[16 * j..16 * j + 16];
                (scales[j], mins[j]) = make_qkx_quants(search, g, &weights, lv);
            }
            let mut ls = [0u8; 16];
            let mut lm = [0u8; 16];
            let dm = make_qp_quants(15, &scales, &mut ls, &sw);
            let mm = make_qp_quants(15, &mins, &mut lm, &sw);
            d = write_f16(out, 80, dm);
            dmin = write_f16(out, 82, mm);
            for j in 0..16 {
                out[j] = ls[j] | (lm[j] << 4);
            }
        }
    }
    for j in 0..16 {
        let sc = out[j];
        let dj = d * (sc & 0x0f) as f32;
        let mj = dmin * (sc >> 4) as f32;
        requantize_min_group(
            &x[16 * j..16 * j + 16],
            dj,
            mj,
            3,
            &mut levels[16 * j..16 * j + 16],
        );
    }
    pack_2bit(&levels, &mut out[16..80]);
}

/// The signed 6-bit scale of group `j` from Q3_K's 12-byte scale array.
fn q3_scale(s: &[u8], j: usize) -> i8 {
    let low = if j < 8 { s[j] & 0x0f } else { s[j - 8] >> 4 };
    let high = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
    ((low | (high << 4)) as i8) - 32
}

/// Stores the offset 6-bit scale `l` (0..=63) of group `j` in Q3_K's scale array.
fn put_q3_scale(s: &mut [u8], j: usize, l: u8) {
    if j < 8 {
        s[j] = l & 0x0f;
    } else {
        s[j - 8] |= (l & 0x0f) << 4;
    }
    s[j % 4 + 8] |= (l >> 4) << (2 * (j / 4));
}

/// Q3_K (110 bytes: hmask[32], qs[64], scales[12], f16 d).
pub fn quantize_q3_k(x: &[f32], imatrix: Option<&[f32]>, out: &mut [u8]) {
    let mut levels = [0i8; QK_K];
    let mut scales = [0.0f32; 16];
    out[96..108].fill(0);
    let d = match imatrix {
        None => {
            let (mut max_scale, mut amax) = (0.0f32, 0.0f32);
            for j in 0..16 {
                scales[j] =
                    make_q3_quants(4, &x[16 * j..16 * j + 16], &mut levels[16 * j..16 * j + 16]);
                if scales[j].abs() > amax {
                    amax = scales[j].abs();
                    max_scale = scales[j];
                }
            }
            if max_scale != 0.0 {
                let iscale = -32.0 / max_scale;
                for j in 0..16 {
                    let l = (nearest_int(iscale * scales[j]) as i8).clamp(-32, 31) + 32;
                    put_q3_scale(&mut out[96..108], j, l as u8);
                }
                write_f16(out, 108, 1.0 / iscale)
            } else {
                write_f16(out, 108, 0.0)
            }
        }
        Some(qw) => {
            let sigma2 = 2.0 * sum_sq(x) / QK_K as f32;
            let mut weights = [0.0f32; 16];
            let mut sw = [0.0f32; 16];
            for j in 0..16 {
                let g = &x[16 * j..16 * j + 16];
                for l in 0..16 {
                    weights[l] = qw[16 * j + l] * (sigma2 + g[l] * g[l]).sqrt();
                }
                let mut sumw = 0.0f32;
                for &w in &weights {
                    sumw += w;
                }
                sw[j] = sumw;
                scales[j] =
                    make_qx_quants(4, g, &mut levels[16 * j..16 * j + 16], 1, Some(&weights));
            }
            let mut ls = [0i8; 16];
            let d_block = make_qx_quants(32, &scales, &mut ls, 1, Some(&sw));
            for j in 0..16 {
                put_q3_scale(&mut out[96..108], j, ls[j] as u8);
            }
            write_f16(out, 108, d_block)
        }
    };
    for j in 0..16 {
        let dj = d * q3_scale(&out[96..108], j) as f32;
        if dj == 0.0 {
            continue;
        }
        for i in 16 * j..16 * j + 16 {
            levels[i] = (nearest_int(x[i] / dj).clamp(-4, 3) + 4) as i8;
        }
    }
    let hmask = &mut out[0..32];
    hmask.fill(0);
    let mut low = [0u8; QK_K];
    let (mut m, mut hm) = (0usize, 1u8);
    for j in 0..QK_K {
        let mut l = levels[j] as u8;
        if l > 3 {
            hmask[m] |= hm;
            l -= 4;
        }
        low[j] = l;
        m += 1;
        if m == QK_K / 8 {
            m = 0;
            hm <<= 1;
        }
    }
    pack_2bit(&low, &mut out[32..96]);
}

/// Scale and min search settings of the Q4_K/Q5_K groups.
fn k4_search(nmax: i32, imatrix: bool) -> MinSearch {
    match (imatrix, nmax) {
        (true, _) => MinSearch {
            nmax,
            rmin: -0.9,
            rdelta: 0.05,
            nstep: 36,
            use_mad: false,
        },
        (false, 15) => MinSearch {
            nmax,
            rmin: -1.0,
            rdelta: 0.1,
            nstep: 20,
            use_mad: false,
        },
        (false, _) => MinSearch {
            nmax,
            rmin: -0.5,
            rdelta: 0.1,
            nstep: 15,
            use_mad: false,
        },
    }
}

/// The shared part of Q4_K and Q5_K: group search, 6-bit scales and mins in
/// `out[4..16]`, f16 d/dmin in `out[0..4]`, and the final levels (0..=nmax).
fn quantize_scale_min_k(
    x: &[f32],
    imatrix: Option<&[f32]>,
    nmax: i32,
    out: &mut [u8],
) -> [u8; QK_K] {
    let mut levels = [0u8; QK_K];
    let mut weights = [0.0f32; 32];
    let mut scales = [0.0f32; 8];
    let mut mins = [0.0f32; 8];
    let search = k4_search(nmax, imatrix.is_some());
    out[4..16].fill(0);
    match imatrix {
        None => {
            let (mut max_scale, mut max_min) = (0.0f32, 0.0f32);
            for j in 0..8 {
                let g = &x[32 * j..32 * j + 32];
                let av_x = (sum_sq(g) / 32.0).sqrt();
                for (w, &v) in weights.iter_mut().zip(g) {
                    *w = av_x + v.abs();
                }
                let lv = &mut levels[32 * j..32 * j + 32];
                (scales[j], mins[j]) = make_qkx_quants(search, g, &weights, lv);
                if scales[j] > max_scale {
                    max_scale = scales[j];
                }
                if mins[j] > max_min {
                    max_min = mins[j];
                }
            }
            let inv_scale = if max_scale > 0.0 {
                63.0 / max_scale
            } else {
                0.0
            };
            let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
            for j in 0..8 {
                let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
                let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
                put_scale_min_k4(j, ls, lm, &mut out[4..16]);
            }
            write_f16(out, 0, max_scale / 63.0);
            write_f16(out, 2, max_min / 63.0);
        }
        Some(qw) => {
            let sigma2 = 2.0 * sum_sq(x) / QK_K as f32;
            let mut sw = [0.0f32; 8];
            for j in 0..8 {
                let g = &x[32 * j..32 * j + 32];
                for l in 0..32 {
                    weights[l] = qw[32 * j + l] * (sigma2 + g[l] * g[l]).sqrt();
                }
                let mut sumw = 0.0f32;
                for &w in &weights {
                    sumw += w;
                }
                sw[j] = sumw;
                let lv = &mut levels[32 * j..32 * j + 32];
                (scales[j], mins[j]) = make_qkx_quants(search, g, &weights, lv);
            }
            let mut ls = [0u8; 8];
            let mut lm = [0u8; 8];
            let d_block = make_qp_quants(63, &scales, &mut ls, &sw);
            let m_block = make_qp_quants(63, &mins, &mut lm, &sw);
            for j in 0..8 {
                put_scale_min_k4(j, ls[j].min(63), lm[j].min(63), &mut out[4..16]);
            }
            write_f16(out, 0, d_block);
            write_f16(out, 2, m_block);
        }
    }
    let d = read_f16(out, 0);
    let dmin = read_f16(out, 2);
    for j in 0..8 {
        let (sc, m) = get_scale_min_k4(j, &out[4..16]);
        requantize_min_group(
            &x[32 * j..32 * j + 32],
            d * sc as f32,
            dmin * m as f32,
            nmax,
            &mut levels[32 * j..32 * j + 32],
        );
    }
    levels
}

/// Q4_K (144 bytes: f16 d, f16 dmin, scales[12], qs[128]).
pub fn quantize_q4_k(x: &[f32], imatrix: Option<&[f32]>, out: &mut [u8]) {
    let levels = quantize_scale_min_k(x, imatrix, 15, out);
    let qs = &mut out[16..144];
    for (c, j) in (0..QK_K).step_by(64).enumerate() {
        for l in 0..32 {
            qs[32 * c + l] = levels[j + l] | (levels[j + l + 32] << 4);
        }
    }
}

/// Q5_K (176 bytes: f16 d, f16 dmin, scales[12], qh[32], qs[128]).
pub fn quantize_q5_k(x: &[f32], imatrix: Option<&[f32]>, out: &mut [u8]) {
    let levels = quantize_scale_min_k(x, imatrix, 31, out);
    let (qh, qs) = out[16..176].split_at_mut(32);
    qh.fill(0);
    let (mut m1, mut m2) = (1u8, 2u8);
    for (c, n) in (0..QK_K).step_by(64).enumerate() {
        for j in 0..32 {
            let mut l1 = levels[n + j];
            if l1 > 15 {
                l1 -= 16;
                qh[j] |= m1;
            }
            let mut l2 = levels[n + j + 32];
            if l2 > 15 {
                l2 -= 16;
                qh[j] |= m2;
            }
            qs[32 * c + j] = l1 | (l2 << 4);
        }
        m1 <<= 2;
        m2 <<= 2;
    }
}

/// Q6_K (210 bytes: ql[128], qh[64], i8 scales[16], f16 d).
pub fn quantize_q6_k(x: &[f32], imatrix: Option<&[f32]>, out: &mut [u8]) {
    let mut levels = [0i8; QK_K];
    let mut scales = [0.0f32; 16];
    let (mut max_scale, mut max_abs_scale) = (0.0f32, 0.0f32);
    for ib in 0..16 {
        let g = &x[16 * ib..16 * ib + 16];
        let w = imatrix.map(|qw| &qw[16 * ib..16 * ib + 16]);
        scales[ib] = make_qx_quants(32, g, &mut levels[16 * ib..16 * ib + 16], 1, w);
        if scales[ib].abs() > max_abs_scale {
            max_abs_scale = scales[ib].abs();
            max_scale = scales[ib];
        }
    }
    if max_abs_scale < GROUP_MAX_EPS {
        out[..210].fill(0);
        return;
    }
    let iscale = -128.0 / max_scale;
    let d = write_f16(out, 208, 1.0 / iscale);
    for ib in 0..16 {
        out[192 + ib] = nearest_int(iscale * scales[ib]).min(127) as i8 as u8;
    }
    for j in 0..16 {
        let dj = d * (out[192 + j] as i8) as f32;
        if dj == 0.0 {
            continue;
        }
        for i in 16 * j..16 * j + 16 {
            levels[i] = (nearest_int(x[i] / dj).clamp(-32, 31) + 32) as i8;
        }
    }
    let (ql, rest) = out.split_at_mut(128);
    let qh = &mut rest[..64];
    for (c, j) in (0..QK_K).step_by(128).enumerate() {
        for l in 0..32 {
            let q = |k: usize| levels[j + l + 32 * k] as u8;
            ql[64 * c + l] = (q(0) & 0x0f) | ((q(2) & 0x0f) << 4);
            ql[64 * c + l + 32] = (q(1) & 0x0f) | ((q(3) & 0x0f) << 4);
            qh[32 * c + l] =
                (q(0) >> 4) | ((q(1) >> 4) << 2) | ((q(2) >> 4) << 4) | ((q(3) >> 4) << 6);
        }
    }
}

/// Dequantizes one super-block of a k-quant type into `y` (256 values),
/// with the same float expressions as ggml's `dequantize_row_q*_K`.
pub fn dequantize_block(ty: super::GgmlType, b: &[u8], y: &mut [f32]) {
    use super::GgmlType as T;
    match ty {
        T::Q2_K => {
            let (d, dmin) = (read_f16(b, 80), read_f16(b, 82));
            let mut is = 0;
            let mut out = 0;
            for half in 0..2 {
                let q = &b[16 + 32 * half..16 + 32 * half + 32];
                for shift in (0..8).step_by(2) {
                    for part in 0..2 {
                        let sc = b[is];
                        is += 1;
                        let dl = d * (sc & 0x0f) as f32;
                        let ml = dmin * (sc >> 4) as f32;
                        for l in 0..16 {
                            y[out] = dl * ((q[l + 16 * part] >> shift) & 3) as f32 - ml;
                            out += 1;
                        }
                    }
                }
            }
        }
        T::Q3_K => {
            let d = read_f16(b, 108);
            let (hm, scales) = (&b[0..32], &b[96..108]);
            let mut is = 0;
            let mut out = 0;
            let mut m = 1u8;
            for half in 0..2 {
                let q = &b[32 + 32 * half..32 + 32 * half + 32];
                for shift in (0..8).step_by(2) {
                    for part in 0..2 {
                        let dl = d * q3_scale(scales, is) as f32;
                        is += 1;
                        for l in 0..16 {
                            let k = l + 16 * part;
                            let low = ((q[k] >> shift) & 3) as i32;
                            let sub = if hm[k] & m != 0 { 0 } else { 4 };
                            y[out] = dl * (low - sub) as f32;
                            out += 1;
                        }
                    }
                    m <<= 1;
                }
            }
        }
        T::Q4_K | T::Q5_K => {
            let (d, dmin) = (read_f16(b, 0), read_f16(b, 2));
            let scales = &b[4..16];
            let five = ty == T::Q5_K;
            let (qh, qs) = if five {
                (&b[16..48], &b[48..176])
            } else {
                (&b[0..0], &b[16..144])
            };
            let (mut u1, mut u2) = (1u8, 2u8);
            for c in 0..4 {
                let (sc1, m1) = get_scale_min_k4(2 * c, scales);
                let (sc2, m2) = get_scale_min_k4(2 * c + 1, scales);
                let (d1, m1) = (d * sc1 as f32, dmin * m1 as f32);
                let (d2, m2) = (d * sc2 as f32, dmin * m2 as f32);
                let q = &qs[32 * c..32 * c + 32];
                for l in 0..32 {
                    let hi1 = if five && qh[l] & u1 != 0 { 16 } else { 0 };
                    let hi2 = if five && qh[l] & u2 != 0 { 16 } else { 0 };
                    y[64 * c + l] = d1 * ((q[l] & 0x0f) + hi1) as f32 - m1;
                    y[64 * c + 32 + l] = d2 * ((q[l] >> 4) + hi2) as f32 - m2;
                }
                u1 <<= 2;
                u2 <<= 2;
            }
        }
        T::Q6_K => {
            let d = read_f16(b, 208);
            for c in 0..2 {
                let ql = &b[64 * c..64 * c + 64];
                let qh = &b[128 + 32 * c..128 + 32 * c + 32];
                let sc = &b[192 + 8 * c..192 + 8 * c + 8];
                for l in 0..32 {
                    let is = l / 16;
                    let q1 = ((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) as i32 - 32;
                    let q2 = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                    let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                    let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                    let y = &mut y[128 * c..128 * c + 128];
                    y[l] = d * (sc[is] as i8) as f32 * q1 as f32;
                    y[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
                    y[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
                    y[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
                }
            }
        }
        _ => unreachable!("dequantize_block called with non-k-quant type {ty}"),
    }
}
