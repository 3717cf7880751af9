//! Model Stock: move from the base towards the mean of the fine-tunes by a
//! ratio set by the average angle between their task vectors.

use anyhow::Result;

use super::super::engine::{Chunks, Output};
use super::spherical::gram_combine;

/// `t = N·cos / (1 + (N−1)·cos)` with `cos` the mean pairwise cosine of the
/// task vectors; output `t·mean(x_i) + (1 − t)·B`, per tensor or per row
/// (`filter_wise`).
pub fn model_stock(chunks: &Chunks, out: &mut Output, filter_wise: bool) -> Result<()> {
    let job = chunks.job;
    let others = job.others();
    let n = others.len();
    gram_combine(chunks, out, &others, job.base, !filter_wise, |g| {
        let mut sum = 0.0;
        let mut pairs = 0;
        for i in 0..n {
            for j in i + 1..n {
                let denom = (g[i * n + i].sqrt() * g[j * n + j].sqrt()).max(1e-6);
                sum += (g[i * n + j] / denom).clamp(-1.0, 1.0);
                pairs += 1;
            }
        }
        let cos = sum / f64::from(pairs.max(1));
        let t = n as f64 * cos / (1.0 + (n as f64 - 1.0) * cos);
        Ok(vec![t / n as f64; n])
    })
}
