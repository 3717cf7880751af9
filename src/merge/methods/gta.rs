//! The generalized task-arithmetic family (mergekit
//! `generalized_task_arithmetic.py`): task_arithmetic, ties, dare_ties,
//! dare_linear, breadcrumbs, breadcrumbs_ties, della, della_linear.
//!
//! Per element, with base `B` and task vectors `δ_i = x_i − B`:
//! `wd_i = w_i · rescale_i · mask_i · δ_i`; with sign consensus only the
//! `wd_i` whose sign matches the sign of `Σ wd_i` count (weights are applied
//! before the election, as in mergekit); `mixed = Σ wd_i` over those,
//! divided by `Σ w_i` over those when `normalize`, times `lambda`; output `B + mixed`.

use anyhow::Result;

use super::super::engine::{par_rows_with, sum_rows, Chunks, Output};
use super::super::method::Method;
use super::super::typed::{GtaParams, Rescale};
use super::sparsify::{Kind, Masks};
use crate::simd::with_widest_simd;

fn sparsifier(method: Method) -> Option<Kind> {
    match method {
        Method::Ties => Some(Kind::Magnitude),
        Method::DareTies | Method::DareLinear => Some(Kind::Bernoulli),
        Method::Breadcrumbs | Method::BreadcrumbsTies => Some(Kind::Outliers),
        Method::Della | Method::DellaLinear => Some(Kind::Della),
        _ => None,
    }
}

fn consensus(method: Method) -> bool {
    matches!(
        method,
        Method::Ties | Method::DareTies | Method::BreadcrumbsTies | Method::Della
    )
}

/// Adds, row by row, each model's `Σ|δ|` and `Σ|δ·mask|` over a chunk to
/// `totals` (two slots per model; models without a mask are skipped).
fn add_l1(
    totals: &mut [f64],
    inputs: &[Vec<f32>],
    base: usize,
    others: &[usize],
    masks: &[Option<Vec<u8>>],
    rows: usize,
    row_len: usize,
) {
    sum_rows(totals, rows, |r| {
        let span = r * row_len..(r + 1) * row_len;
        let b = &inputs[base][span.clone()];
        let mut v = vec![0.0f64; 2 * others.len()];
        for (p, &i) in others.iter().enumerate() {
            let Some(m) = &masks[p] else { continue };
            let (all, kept) = l1_row(&inputs[i][span.clone()], b, &m[span.clone()]);
            v[2 * p] = all;
            v[2 * p + 1] = kept;
        }
        v
    });
}

/// `Σ|x−b|` and `Σ|x−b|·mask` over one row, in `f64`. The sums run in
/// eight interleaved lanes added up in a fixed order at the end: the same
/// result everywhere, and it vectorizes, where one running sum is bound by
/// the latency of each addition.
fn l1_row(x: &[f32], b: &[f32], m: &[u8]) -> (f64, f64) {
    const LANES: usize = 8;
    with_widest_simd!({
        let (mut all, mut kept) = ([0.0f64; LANES], [0.0f64; LANES]);
        let whole = x.len() / LANES * LANES;
        for ((x, b), m) in x[..whole]
            .chunks_exact(LANES)
            .zip(b[..whole].chunks_exact(LANES))
            .zip(m[..whole].chunks_exact(LANES))
        {
            for k in 0..LANES {
                let d = f64::from((x[k] - b[k]).abs());
                all[k] += d;
                kept[k] += d * f64::from(m[k]);
            }
        }
        for (k, ((x, b), m)) in x[whole..]
            .iter()
            .zip(&b[whole..])
            .zip(&m[whole..])
            .enumerate()
        {
            let d = f64::from((x - b).abs());
            all[k] += d;
            kept[k] += d * f64::from(*m);
        }
        (all.iter().sum(), kept.iter().sum())
    })
}

/// mergekit's L1 rescale factor: restore the unmasked delta's L1 norm.
fn l1_factors(totals: &[f64], scale: &mut [f64]) {
    for (p, s) in scale.iter_mut().enumerate() {
        let (all, kept) = (totals[2 * p], totals[2 * p + 1]);
        if all >= 1e-7 && kept >= 1e-7 {
            *s = all / kept;
        }
    }
}

/// Runs one tensor of a task-arithmetic-family merge.
pub fn run(method: Method, params: &GtaParams, chunks: &Chunks, out: &mut Output) -> Result<()> {
    let job = chunks.job;
    let base = job.base.expect("the plan checked the base model");
    let others = job.others();
    let row_len = chunks.row_len();
    let weights: Vec<f32> = others
        .iter()
        .map(|&i| job.inputs[i].params.weight() as f32)
        .collect();
    let mut masks = match sparsifier(method) {
        Some(kind) => Some(Masks::prepare(kind, chunks, base, &others)?),
        None => None,
    };
    let mode = params.rescale;
    // Per-model factor applied to kept deltas.
    let mut scale = vec![1.0f64; others.len()];
    if mode == Rescale::InverseDensity && masks.is_some() {
        for (s, &i) in scale.iter_mut().zip(&others) {
            let d = job.inputs[i].params.density();
            if d < 1.0 && d > 0.0 {
                *s = 1.0 / d;
            }
        }
    }
    let l1 = mode == Rescale::L1 && masks.is_some();
    // A tensor that fits in one chunk gets its L1 sums from the masks of the
    // output pass; larger ones need a pass of their own first.
    let separate_l1 = l1 && !chunks.single_chunk();
    let chunk_masks = |masks: &mut Option<Masks>,
                       rows: std::ops::Range<usize>,
                       inputs: &[Vec<f32>]|
     -> Vec<Option<Vec<u8>>> {
        (0..others.len())
            .map(|p| match masks.as_mut() {
                Some(m) if !m.keeps_all(p) => {
                    Some(m.chunk(p, rows.clone(), row_len, &inputs[others[p]], &inputs[base]))
                }
                _ => None,
            })
            .collect()
    };
    if separate_l1 {
        let mut totals = vec![0.0f64; 2 * others.len()];
        chunks.pass(|rows, inputs| {
            let ms = chunk_masks(&mut masks, rows.clone(), inputs);
            add_l1(&mut totals, inputs, base, &others, &ms, rows.len(), row_len);
            Masks::recycle(ms);
            Ok(())
        })?;
        l1_factors(&totals, &mut scale);
        if let Some(m) = masks.as_mut() {
            m.restart();
        }
    }
    let elect = consensus(method);
    let normalize = params.normalize;
    let lambda = params.lambda as f32;
    let total_weight: f32 = weights.iter().sum();
    chunks.pass(|rows, inputs| {
        let ms = chunk_masks(&mut masks, rows.clone(), inputs);
        if l1 && !separate_l1 {
            let mut totals = vec![0.0f64; 2 * others.len()];
            add_l1(&mut totals, inputs, base, &others, &ms, rows.len(), row_len);
            l1_factors(&totals, &mut scale);
        }
        let factors: Vec<f32> = weights
            .iter()
            .zip(&scale)
            .map(|(w, s)| (f64::from(*w) * s) as f32)
            .collect();
        let mut result = out.buffer(rows.len() * row_len);
        let scratch = || vec![0.0f32; (others.len() + 3) * row_len];
        par_rows_with(&mut result, row_len, scratch, |r, row, scratch| {
            // Plain loops over the row, compiled for the widest vectors.
            with_widest_simd!({
                let span = r * row_len..(r + 1) * row_len;
                let b = &inputs[base][span.clone()];
                // wd_i for this row, model by model, then room for the election.
                let (wd, election) = scratch.split_at_mut(others.len() * row_len);
                for (p, &i) in others.iter().enumerate() {
                    let x = &inputs[i][span.clone()];
                    let out = &mut wd[p * row_len..(p + 1) * row_len];
                    let f = factors[p];
                    match &ms[p] {
                        Some(m) => {
                            let m = &m[span.clone()];
                            for (((o, x), b), m) in out.iter_mut().zip(x).zip(b).zip(m) {
                                *o = f * ((x - b) * f32::from(*m));
                            }
                        }
                        None => {
                            for ((o, x), b) in out.iter_mut().zip(x).zip(b) {
                                *o = f * (x - b);
                            }
                        }
                    }
                }
                if elect {
                    elect_row(row, b, wd, &weights, normalize, lambda, election);
                } else {
                    let div = if total_weight.abs() < 1e-8 {
                        1.0
                    } else {
                        total_weight
                    };
                    row.copy_from_slice(b);
                    for p in 0..others.len() {
                        let w = &wd[p * row_len..(p + 1) * row_len];
                        for (o, v) in row.iter_mut().zip(w) {
                            *o += if normalize {
                                v / div * lambda
                            } else {
                                v * lambda
                            };
                        }
                    }
                }
            })
        });
        Masks::recycle(ms);
        out.emit_buffer(result)
    })
}

/// TIES sign election over one row: only deltas agreeing with the sign of
/// their sum count; `normalize` divides by the weights of those that count.
/// Loops run model by model over the row, branch-free, so they vectorize.
#[inline(always)]
fn elect_row(
    row: &mut [f32],
    b: &[f32],
    wd: &[f32],
    weights: &[f32],
    normalize: bool,
    lambda: f32,
    scratch: &mut [f32],
) {
    let n = row.len();
    let (sum, rest) = scratch.split_at_mut(n);
    let (mixed, div) = rest.split_at_mut(n);
    let div = &mut div[..n];
    sum.fill(0.0);
    mixed.fill(0.0);
    div.fill(0.0);
    for p in 0..weights.len() {
        for (s, v) in sum.iter_mut().zip(&wd[p * n..(p + 1) * n]) {
            *s += v;
        }
    }
    for (p, &w) in weights.iter().enumerate() {
        let values = &wd[p * n..(p + 1) * n];
        for (((m, d), s), &v) in mixed.iter_mut().zip(div.iter_mut()).zip(&*sum).zip(values) {
            // Non-short-circuit `&`/`|` keep this branch-free.
            let positive = *s >= 0.0;
            let agree = ((v > 0.0) & positive) | ((v < 0.0) & !positive);
            let keep = f32::from(u8::from(agree));
            *m += v * keep;
            *d += w * keep;
        }
    }
    for (((o, b), m), d) in row.iter_mut().zip(b).zip(&*mixed).zip(&*div) {
        let d = if *d == 0.0 { 1.0 } else { *d };
        let m = if normalize { m / d } else { *m };
        *o = b + m * lambda;
    }
}
