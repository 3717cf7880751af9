//! SCE: select the entries whose task vectors vary most across models,
//! weight each model by its mean squared task vector, erase minority signs.

use anyhow::Result;

use super::super::engine::{par_rows, sum_rows, Chunks, Output};
use super::super::select::{Selection, TopK};

/// Population variance over the models of the task vectors at element `e`.
fn variance(inputs: &[Vec<f32>], others: &[usize], base: usize, e: usize) -> f32 {
    let n = others.len() as f64;
    let d: Vec<f64> = others
        .iter()
        .map(|&i| f64::from(inputs[i][e]) - f64::from(inputs[base][e]))
        .collect();
    let mean = d.iter().sum::<f64>() / n;
    (d.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n) as f32
}

/// Runs `sce` for one tensor.
pub fn sce(chunks: &Chunks, out: &mut Output, topk: f64) -> Result<()> {
    let job = chunks.job;
    let base = job.base.expect("the plan checked the base model");
    let others = job.others();
    let row_len = chunks.row_len();
    // `None`: keep everything; `Some(None)`: keep nothing.
    let selection: Option<Option<TopK>> = if topk >= 1.0 {
        None
    } else if topk <= 0.0 {
        Some(None)
    } else {
        let mut nonzero = 0u64;
        chunks.pass(|_, inputs| {
            nonzero += (0..inputs[base].len())
                .filter(|&e| variance(inputs, &others, base, e) != 0.0)
                .count() as u64;
            Ok(())
        })?;
        let k = (nonzero as f64 * topk) as u64;
        let mut sel = Selection::new(k);
        for _ in 0..2 {
            chunks.pass(|_, inputs| {
                let v: Vec<f32> = (0..inputs[base].len())
                    .map(|e| variance(inputs, &others, base, e))
                    .collect();
                sel.observe(&v);
                Ok(())
            })?;
            if sel.first_pass() {
                sel.end_first_pass();
            }
        }
        Some((k > 0).then(|| sel.finish()))
    };
    let chunk_mask = |inputs: &[Vec<f32>], ties: &mut u64| -> Option<Vec<u8>> {
        match &selection {
            None => None,
            Some(None) => Some(vec![0; inputs[base].len()]),
            Some(Some(top)) => {
                let v: Vec<f32> = (0..inputs[base].len())
                    .map(|e| variance(inputs, &others, base, e))
                    .collect();
                Some(top.mask_chunk(&v, row_len, ties))
            }
        }
    };
    // Model weights: mean squared (selected) task vector, normalized.
    let mut squares = vec![0.0f64; others.len()];
    let mut ties = 0;
    chunks.pass(|rows, inputs| {
        let mask = chunk_mask(inputs, &mut ties);
        sum_rows(&mut squares, rows.len(), |r| {
            others
                .iter()
                .map(|&i| {
                    (r * row_len..(r + 1) * row_len)
                        .filter(|&e| mask.as_ref().is_none_or(|m| m[e] == 1))
                        .map(|e| {
                            let d = f64::from(inputs[i][e] - inputs[base][e]);
                            d * d
                        })
                        .sum()
                })
                .collect()
        });
        Ok(())
    })?;
    let total: f64 = squares.iter().sum();
    let weights: Vec<f32> = if total.abs() < 1e-6 * (chunks.rows() * row_len) as f64 {
        vec![1.0 / others.len() as f32; others.len()]
    } else {
        squares.iter().map(|s| (s / total) as f32).collect()
    };
    let mut ties = 0;
    chunks.pass(|rows, inputs| {
        let mask = chunk_mask(inputs, &mut ties);
        let mut result = vec![0.0f32; rows.len() * row_len];
        par_rows(&mut result, row_len, |r, row| {
            for (j, o) in row.iter_mut().enumerate() {
                let e = r * row_len + j;
                let b = inputs[base][e];
                if mask.as_ref().is_some_and(|m| m[e] == 0) {
                    *o = b;
                    continue;
                }
                let sum: f32 = others.iter().map(|&i| inputs[i][e] - b).sum();
                let (mut acc, mut div) = (0.0f32, 0.0f32);
                for (p, &i) in others.iter().enumerate() {
                    let d = inputs[i][e] - b;
                    if (sum >= 0.0 && d > 0.0) || (sum < 0.0 && d < 0.0) {
                        acc += weights[p] * d;
                        div += weights[p];
                    }
                }
                *o = b + acc / div.max(1e-6);
            }
        });
        out.emit(&result)
    })
}
