//! Spherical methods: slerp, nuslerp, multislerp and karcher.
//!
//! Each result is a linear combination of the input vectors whose coefficients
//! depend only on their norms and dot products. So one streaming pass gathers
//! the Gram matrix (in `f64`, per row then summed in row order) and a second
//! pass writes the combination; no method needs a whole tensor in memory.
//! Vectors are whole flattened tensors, or rows with `nuslerp_flatten: false`.

use anyhow::{bail, Result};

use super::super::engine::{par_rows, sum_rows, Chunks, Output};

/// Gram matrix of `vectors` (indexes into the inputs), each minus the input
/// `origin` when given, over one span of elements.
fn gram_of(
    inputs: &[Vec<f32>],
    vectors: &[usize],
    origin: Option<usize>,
    span: std::ops::Range<usize>,
) -> Vec<f64> {
    let k = vectors.len();
    let mut g = vec![0.0f64; k * k];
    let value = |i: usize, e: usize| -> f64 {
        let x = f64::from(inputs[vectors[i]][e]);
        origin.map_or(x, |o| x - f64::from(inputs[o][e]))
    };
    for e in span {
        for i in 0..k {
            let vi = value(i, e);
            for j in i..k {
                g[i * k + j] += vi * value(j, e);
            }
        }
    }
    for i in 0..k {
        for j in 0..i {
            g[i * k + j] = g[j * k + i];
        }
    }
    g
}

/// Writes `origin + Σ c_i (x_i − origin)` (or `Σ c_i x_i` without an origin)
/// where the coefficients come from the Gram matrix of the vectors: of the whole
/// tensor when `flatten`, else of each row.
pub(super) fn gram_combine(
    chunks: &Chunks,
    out: &mut Output,
    vectors: &[usize],
    origin: Option<usize>,
    flatten: bool,
    coefficients: impl Fn(&[f64]) -> Result<Vec<f64>, String> + Sync,
) -> Result<()> {
    let row_len = chunks.row_len();
    let k = vectors.len();
    let global = if flatten {
        let mut g = vec![0.0f64; k * k];
        chunks.pass(|rows, inputs| {
            sum_rows(&mut g, rows.len(), |r| {
                gram_of(inputs, vectors, origin, r * row_len..(r + 1) * row_len)
            });
            Ok(())
        })?;
        Some(coefficients(&g).map_err(anyhow::Error::msg)?)
    } else {
        None
    };
    chunks.pass(|rows, inputs| {
        let per_row: Vec<Vec<f64>> = match &global {
            Some(_) => Vec::new(),
            None => (0..rows.len())
                .map(|r| {
                    coefficients(&gram_of(
                        inputs,
                        vectors,
                        origin,
                        r * row_len..(r + 1) * row_len,
                    ))
                })
                .collect::<Result<_, _>>()
                .map_err(anyhow::Error::msg)?,
        };
        let mut result = vec![0.0f32; rows.len() * row_len];
        par_rows(&mut result, row_len, |r, row| {
            let c = global.as_ref().unwrap_or_else(|| &per_row[r]);
            let span = r * row_len..(r + 1) * row_len;
            for (e, o) in row.iter_mut().enumerate() {
                let at = span.start + e;
                let b = origin.map_or(0.0, |o| f64::from(inputs[o][at]));
                let mut acc = b;
                for (ci, &v) in c.iter().zip(vectors) {
                    acc += ci * (f64::from(inputs[v][at]) - b);
                }
                *o = acc as f32;
            }
        });
        out.emit(&result)
    })
}

/// mergekit's slerp: `t = 0` gives the base; nearly parallel tensors are lerped.
pub fn slerp(chunks: &Chunks, out: &mut Output, t: f64) -> Result<()> {
    let job = chunks.job;
    let base = job.base.expect("the plan checked the base model");
    let other = job.others()[0];
    gram_combine(chunks, out, &[base, other], None, true, |g| {
        let norm = |x: f64| if x.sqrt() > 1e-8 { x.sqrt() } else { 1.0 };
        let dot = g[1] / (norm(g[0]) * norm(g[3]));
        if dot.abs() > 0.9995 {
            return Ok(vec![1.0 - t, t]);
        }
        let theta = dot.acos();
        let s = theta.sin();
        Ok(vec![((1.0 - t) * theta).sin() / s, (t * theta).sin() / s])
    })
}

/// nuslerp: slerp of two models (task vectors when a base is given) at
/// `t = w_2 / (w_1 + w_2)`, of whole tensors or row by row.
pub fn nuslerp(chunks: &Chunks, out: &mut Output, flatten: bool, row_wise: bool) -> Result<()> {
    let job = chunks.job;
    let others = job.others();
    if row_wise && !flatten {
        bail!("`nuslerp_row_wise: true` is not supported yet");
    }
    let (w1, w2) = (
        job.inputs[others[0]].params.weight(),
        job.inputs[others[1]].params.weight(),
    );
    let t = if (w1 + w2).abs() < 1e-6 {
        0.5
    } else {
        w2 / (w1 + w2)
    };
    gram_combine(chunks, out, &others, job.base, flatten, |g| {
        let n0 = g[0].sqrt().max(1e-7);
        let n1 = g[3].sqrt().max(1e-7);
        let theta = (g[1] / (n0 * n1)).clamp(-1.0, 1.0).acos();
        let s = theta.sin();
        if s.abs() < 1e-8 {
            return Ok(vec![1.0 - t, t]);
        }
        Ok(vec![((1.0 - t) * theta).sin() / s, (t * theta).sin() / s])
    })
}

/// `aᵀ G b` for coefficient vectors over a basis with Gram matrix `g`.
fn bilinear(g: &[f64], a: &[f64], b: &[f64]) -> f64 {
    let k = a.len();
    (0..k)
        .map(|i| (0..k).map(|j| a[i] * g[i * k + j] * b[j]).sum::<f64>())
        .sum()
}

/// multislerp: barycentric interpolation on the sphere through the tangent
/// space at the weighted mean direction, rescaled to the weighted mean norm.
pub fn multislerp(
    chunks: &Chunks,
    out: &mut Output,
    normalize_weights: bool,
    eps: f64,
) -> Result<()> {
    let job = chunks.job;
    let others = job.others();
    if others.len() == 1 {
        // mergekit returns the single model unchanged.
        return chunks.pass(|_, inputs| out.emit(&inputs[others[0]]));
    }
    let mut w: Vec<f64> = others
        .iter()
        .map(|&i| job.inputs[i].params.weight())
        .collect();
    if normalize_weights {
        let s: f64 = w.iter().sum();
        w.iter_mut().for_each(|x| *x /= s);
    }
    let k = others.len();
    gram_combine(chunks, out, &others, job.base, true, |g| {
        let norms: Vec<f64> = (0..k).map(|i| g[i * k + i].sqrt()).collect();
        // Gram matrix of the unit vectors u_i = v_i / (|v_i| + eps).
        let u: Vec<f64> = (0..k * k)
            .map(|ij| g[ij] / ((norms[ij / k] + eps) * (norms[ij % k] + eps)))
            .collect();
        let mean_norm = bilinear(&u, &w, &w).max(0.0).sqrt();
        if mean_norm < eps {
            if k == 2 {
                return Ok(w.clone());
            }
            return Err("the weighted sum of the input directions is zero (antipodal models with balancing weights)".into());
        }
        let m: Vec<f64> = w.iter().map(|x| x / mean_norm).collect();
        // T = Σ w_i u_i − (Σ w_i (u_i·m)) m
        let dots: Vec<f64> = (0..k)
            .map(|i| (0..k).map(|j| u[i * k + j] * m[j]).sum())
            .collect();
        let along: f64 = w.iter().zip(&dots).map(|(w, d)| w * d).sum();
        let tangent: Vec<f64> = (0..k).map(|i| w[i] - along * m[i]).collect();
        let tn = bilinear(&u, &tangent, &tangent).max(0.0).sqrt() + eps;
        let avg_norm: f64 = w.iter().zip(&norms).map(|(w, n)| w * n).sum();
        Ok((0..k)
            .map(|i| avg_norm * (m[i] * tn.cos() + tangent[i] * tn.sin() / tn) / (norms[i] + eps))
            .collect())
    })
}

/// karcher: the weighted Riemannian mean of the directions, iterated in the
/// span of the inputs, scaled by the weighted mean norm. Unlike mergekit,
/// per-model `weight`s are honoured (default 1: equal weights).
pub fn karcher(chunks: &Chunks, out: &mut Output, max_iter: usize, tol: f64) -> Result<()> {
    let job = chunks.job;
    let all: Vec<usize> = (0..job.inputs.len()).collect();
    let weights: Vec<f64> = job.inputs.iter().map(|i| i.params.weight()).collect();
    let k = all.len();
    gram_combine(chunks, out, &all, None, true, |g| {
        let norms: Vec<f64> = (0..k).map(|i| g[i * k + i].sqrt()).collect();
        let live: Vec<bool> = norms.iter().map(|n| *n > tol).collect();
        let wsum: f64 = (0..k).filter(|i| live[*i]).map(|i| weights[i]).sum();
        if wsum.abs() < 1e-12 {
            return Ok(vec![0.0; k]);
        }
        let alpha: Vec<f64> = (0..k)
            .map(|i| if live[i] { weights[i] / wsum } else { 0.0 })
            .collect();
        let u: Vec<f64> = (0..k * k)
            .map(|ij| {
                let (i, j) = (ij / k, ij % k);
                if live[i] && live[j] {
                    g[ij] / (norms[i] * norms[j])
                } else {
                    0.0
                }
            })
            .collect();
        let normalize = |a: &mut Vec<f64>| {
            let n = bilinear(&u, a, a).max(0.0).sqrt();
            if n > 1e-12 {
                a.iter_mut().for_each(|x| *x /= n);
                true
            } else {
                false
            }
        };
        let mut a = alpha.clone();
        if !normalize(&mut a) {
            let first = live.iter().position(|l| *l).unwrap_or(0);
            a = (0..k).map(|i| f64::from(u8::from(i == first))).collect();
        }
        for _ in 0..max_iter {
            let mut t = vec![0.0; k];
            for i in (0..k).filter(|i| live[*i]) {
                let cos: f64 = (0..k)
                    .map(|j| u[i * k + j] * a[j])
                    .sum::<f64>()
                    .clamp(-1.0, 1.0);
                let theta = cos.acos();
                if theta < tol {
                    continue;
                }
                let f = alpha[i] * theta / theta.sin();
                t[i] += f;
                for j in 0..k {
                    t[j] -= f * cos * a[j];
                }
            }
            let tn = bilinear(&u, &t, &t).max(0.0).sqrt();
            if tn < tol {
                break;
            }
            for j in 0..k {
                a[j] = tn.cos() * a[j] + tn.sin() * t[j] / tn;
            }
            normalize(&mut a);
        }
        let scale: f64 = (0..k).map(|i| alpha[i] * norms[i]).sum();
        Ok((0..k)
            .map(|i| {
                if live[i] {
                    scale * a[i] / norms[i]
                } else {
                    0.0
                }
            })
            .collect())
    })
}
