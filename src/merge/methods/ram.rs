//! RAM and RAM+ (tensor-local): deltas that only one model changes are summed,
//! deltas several models change are averaged over those models.

use anyhow::Result;

use super::super::engine::{par_rows, Chunks, Output};

/// Runs `ram`, or `ramplus_tl` when `plus` holds its `r` and `alpha`, for
/// one tensor.
pub fn run(
    chunks: &Chunks,
    out: &mut Output,
    epsilon: f64,
    plus: Option<(f64, f64)>,
) -> Result<()> {
    let job = chunks.job;
    let base = job.base.expect("the plan checked the base model");
    let others = job.others();
    let eps = epsilon as f32;
    let row_len = chunks.row_len();
    let mut unique_scale = vec![1.0f32; others.len()];
    if let Some((r, alpha)) = plus {
        // Per model: entries it shares with others and entries only it changes.
        let mut shared = vec![0u64; others.len()];
        let mut unique = vec![0u64; others.len()];
        chunks.pass(|_, inputs| {
            for (e, b) in inputs[base].iter().enumerate() {
                let changed = |i: usize| (inputs[i][e] - b).abs() > eps;
                let count = others.iter().filter(|&&i| changed(i)).count();
                for (p, &i) in others.iter().enumerate() {
                    if changed(i) {
                        if count == 1 {
                            unique[p] += 1;
                        } else {
                            shared[p] += 1;
                        }
                    }
                }
            }
            Ok(())
        })?;
        for p in 0..others.len() {
            let rho = shared[p] as f64 / (unique[p] as f64).max(f64::from(eps));
            unique_scale[p] = (1.0 + r * rho.clamp(0.0, alpha)) as f32;
        }
    }
    chunks.pass(|rows, inputs| {
        let mut result = vec![0.0f32; rows.len() * row_len];
        par_rows(&mut result, row_len, |r, row| {
            let start = r * row_len;
            for (e, o) in row.iter_mut().enumerate() {
                let b = inputs[base][start + e];
                let count = others
                    .iter()
                    .filter(|&&i| (inputs[i][start + e] - b).abs() > eps)
                    .count();
                let mut acc = 0.0f32;
                for (p, &i) in others.iter().enumerate() {
                    let d = inputs[i][start + e] - b;
                    if d.abs() > eps {
                        acc += if count == 1 {
                            d * unique_scale[p]
                        } else {
                            d / count as f32
                        };
                    }
                }
                *o = b + acc;
            }
        });
        out.emit(&result)
    })
}
