//! Element-wise methods: linear (weighted average), passthrough (copy, with an
//! optional scale) and nearswap.

use anyhow::Result;

use super::super::engine::{par_rows, Chunks, Output};

/// `Σ w_i x_i`, divided by `Σ w_i` when `normalize` (the plan rejects a zero
/// sum instead of dividing by it, which mergekit does).
pub fn linear(chunks: &Chunks, out: &mut Output, normalize: bool) -> Result<()> {
    let job = chunks.job;
    let mut weights: Vec<f64> = job.inputs.iter().map(|i| i.params.weight()).collect();
    if normalize {
        let sum: f64 = weights.iter().sum();
        weights.iter_mut().for_each(|w| *w /= sum);
    }
    let weights: Vec<f32> = weights.iter().map(|w| *w as f32).collect();
    let row_len = chunks.row_len();
    chunks.pass(|rows, inputs| {
        let mut result = vec![0.0f32; rows.len() * row_len];
        par_rows(&mut result, row_len, |r, row| {
            let span = r * row_len..(r + 1) * row_len;
            for (x, w) in inputs.iter().zip(&weights) {
                for (o, x) in row.iter_mut().zip(&x[span.clone()]) {
                    *o += w * x;
                }
            }
        });
        out.emit(&result)
    })
}

/// The single input, times its `scale` when given.
pub fn passthrough(chunks: &Chunks, out: &mut Output) -> Result<()> {
    let scale = chunks.job.inputs[0].params.scale;
    chunks.pass(|_, inputs| match scale {
        Some(s) => {
            let s = s as f32;
            let scaled: Vec<f32> = inputs[0].iter().map(|x| x * s).collect();
            out.emit(&scaled)
        }
        None => out.emit(&inputs[0]),
    })
}

/// `w = clamp(t / max(|B − x|, 1e-6), 0, 1)`, output `w·x + (1 − w)·B`: the
/// other model's value is taken where it is within `t` of the base.
pub fn nearswap(chunks: &Chunks, out: &mut Output, t: f64) -> Result<()> {
    let job = chunks.job;
    let base = job.base.expect("the plan checked the base model");
    let other = job.others()[0];
    let t = t as f32;
    let row_len = chunks.row_len();
    chunks.pass(|rows, inputs| {
        let mut result = vec![0.0f32; rows.len() * row_len];
        par_rows(&mut result, row_len, |r, row| {
            let span = r * row_len..(r + 1) * row_len;
            let (b, x) = (&inputs[base][span.clone()], &inputs[other][span]);
            for ((o, b), x) in row.iter_mut().zip(b).zip(x) {
                let w = (t / (b - x).abs().max(1e-6)).clamp(0.0, 1.0);
                *o = w * x + (1.0 - w) * b;
            }
        });
        out.emit(&result)
    })
}
