//! The CPU forward pass: multi-threaded, `f32` compute over weights decoded
//! from their storage type (bf16, f16, f32 or a quantized GGUF type) one panel
//! of rows at a time, so no `f32` copy of the model is ever held.
//!
//! Attention runs over blocks of keys with an online softmax (running maximum,
//! running sum, rescaled accumulator), so memory grows linearly with the
//! context. The output head is applied only to the rows that are scored, in
//! chunks, followed by a log-softmax and a gather of the target tokens.

use anyhow::{bail, Context, Result};
use rayon::prelude::*;

use super::kernels::matmul_block;
use super::model::{embed_tokens, layer_tensor, lm_head_name, LlamaConfig, WeightSource};
use super::{Backend, Batch, QueryBlock};

/// Weight rows decoded and multiplied per parallel task.
const PANEL: usize = 64;
/// Activation rows per pass over a weight panel (keeps the panel and the rows
/// in the L2 cache together).
const ROW_BLOCK: usize = 128;
/// Queries per attention task.
const QUERY_BLOCK: usize = 64;
/// Keys per online-softmax update.
const KEY_BLOCK: usize = 64;
/// Upper bound on logits held at once (rows × vocabulary), 64 MiB of `f32`.
const LOGITS_BUDGET: usize = 16 << 20;

/// A Llama-family model evaluated on the CPU with a private thread pool.
pub struct CpuModel<'w> {
    cfg: LlamaConfig,
    weights: &'w dyn WeightSource,
    pool: rayon::ThreadPool,
}

impl<'w> CpuModel<'w> {
    /// Prepares a model over `weights` (which must have passed
    /// [`check_weights`](super::model::check_weights)) using `threads` threads.
    pub fn new(cfg: LlamaConfig, weights: &'w dyn WeightSource, threads: usize) -> Result<Self> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .thread_name(|i| format!("yibuild-eval-{i}"))
            .build()
            .context("cannot start the evaluation thread pool")?;
        Ok(CpuModel { cfg, weights, pool })
    }

    fn vector(&self, name: &str) -> Result<Vec<f32>> {
        let (len, _) = self.weights.shape(name).context(name.to_owned())?;
        let mut out = vec![0.0; len];
        self.weights.read_rows(name, 0..len, &mut out)?;
        Ok(out)
    }

    /// `x · Wᵀ` for the `m` rows of `x` and the weight `name` (`[n, k]`).
    fn linear(&self, x: &[f32], m: usize, name: &str) -> Result<Vec<f32>> {
        let (n, k) = self.weights.shape(name).context(name.to_owned())?;
        debug_assert_eq!(x.len(), m * k);
        let panels: Vec<Vec<f32>> = (0..n.div_ceil(PANEL))
            .into_par_iter()
            .map(|p| {
                let rows = p * PANEL..((p + 1) * PANEL).min(n);
                let nb = rows.len();
                let mut w = vec![0.0; nb * k];
                self.weights.read_rows(name, rows, &mut w)?;
                let mut out = vec![0.0; m * nb];
                for r0 in (0..m).step_by(ROW_BLOCK) {
                    let mb = ROW_BLOCK.min(m - r0);
                    matmul_block(&x[r0 * k..], mb, k, &w, nb, &mut out[r0 * nb..]);
                }
                Ok(out)
            })
            .collect::<Result<_>>()?;
        let mut y = vec![0.0; m * n];
        for (p, panel) in panels.iter().enumerate() {
            let nb = panel.len() / m.max(1);
            for i in 0..m {
                y[i * n + p * PANEL..i * n + p * PANEL + nb]
                    .copy_from_slice(&panel[i * nb..(i + 1) * nb]);
            }
        }
        Ok(y)
    }

    fn rms_norm(&self, x: &[f32], weight: &[f32]) -> Vec<f32> {
        let eps = self.cfg.rms_eps as f64;
        let mut out = vec![0.0; x.len()];
        out.par_chunks_mut(weight.len())
            .zip(x.par_chunks(weight.len()))
            .for_each(|(o, row)| {
                let ms =
                    row.iter().map(|v| (*v as f64) * (*v as f64)).sum::<f64>() / row.len() as f64;
                let inv = (1.0 / (ms + eps).sqrt()) as f32;
                for ((o, v), w) in o.iter_mut().zip(row).zip(weight) {
                    *o = w * (v * inv);
                }
            });
        out
    }

    /// Rotates every head of every row of `x` (`width` = heads × head_dim) in
    /// place, rotate-half style, by the row's position.
    fn apply_rope(&self, x: &mut [f32], width: usize, rope: &RopeTable, positions: &[usize]) {
        let hd = self.cfg.head_dim;
        let half = hd / 2;
        x.par_chunks_mut(width)
            .zip(positions.par_iter())
            .for_each(|(row, &pos)| {
                let (cos, sin) = rope.at(pos);
                for head in row.chunks_mut(hd) {
                    for i in 0..half {
                        let (a, b) = (head[i], head[i + half]);
                        head[i] = a * cos[i] - b * sin[i];
                        head[i + half] = b * cos[i] + a * sin[i];
                    }
                }
            });
    }

    /// Causal attention over the batch's rows; returns `[rows, heads × head_dim]`.
    fn attention(&self, batch: &Batch, q: &[f32], k: &[f32], v: &[f32]) -> Vec<f32> {
        let cfg = &self.cfg;
        let (hd, qd, kvd) = (cfg.head_dim, cfg.q_dim(), cfg.kv_dim());
        let rows = batch.rows();
        let group = cfg.heads / cfg.kv_heads;
        let scale = 1.0 / (hd as f32).sqrt();
        let blocks = batch.query_blocks(QUERY_BLOCK);
        // Head-major output so every (head, query block) task owns a contiguous slice.
        let mut by_head = vec![0.0f32; cfg.heads * rows * hd];
        by_head
            .par_chunks_mut(rows * hd)
            .enumerate()
            .for_each(|(h, head_out)| {
                let g = h / group;
                let mut rest: &mut [f32] = head_out;
                let mut slices = Vec::with_capacity(blocks.len());
                for b in &blocks {
                    let (s, tail) = rest.split_at_mut(b.rows.len() * hd);
                    slices.push(s);
                    rest = tail;
                }
                slices
                    .into_par_iter()
                    .zip(blocks.par_iter())
                    .for_each(|(out, block)| {
                        attend_block(block, h, g, (hd, qd, kvd), scale, q, k, v, out)
                    });
            });
        let mut out = vec![0.0; rows * qd];
        for h in 0..cfg.heads {
            for i in 0..rows {
                out[i * qd + h * hd..i * qd + (h + 1) * hd]
                    .copy_from_slice(&by_head[(h * rows + i) * hd..(h * rows + i + 1) * hd]);
            }
        }
        out
    }

    fn forward_hidden(&self, batch: &Batch) -> Result<Vec<f32>> {
        let cfg = &self.cfg;
        let rows = batch.rows();
        let mut h = embed_tokens(self.weights, cfg, batch)?;
        let positions = batch.positions();
        let rope = RopeTable::new(cfg, batch.max_position() + 1);
        for l in 0..cfg.layers {
            let xn = self.rms_norm(&h, &self.vector(&layer_tensor(l, "input_layernorm"))?);
            let mut q = self.linear(&xn, rows, &layer_tensor(l, "self_attn.q_proj"))?;
            let mut k = self.linear(&xn, rows, &layer_tensor(l, "self_attn.k_proj"))?;
            let v = self.linear(&xn, rows, &layer_tensor(l, "self_attn.v_proj"))?;
            self.apply_rope(&mut q, cfg.q_dim(), &rope, &positions);
            self.apply_rope(&mut k, cfg.kv_dim(), &rope, &positions);
            let attn = self.attention(batch, &q, &k, &v);
            drop((q, k, v));
            let o = self.linear(&attn, rows, &layer_tensor(l, "self_attn.o_proj"))?;
            h.par_iter_mut().zip(&o).for_each(|(h, o)| *h += o);
            let xn = self.rms_norm(
                &h,
                &self.vector(&layer_tensor(l, "post_attention_layernorm"))?,
            );
            let mut gate = self.linear(&xn, rows, &layer_tensor(l, "mlp.gate_proj"))?;
            let up = self.linear(&xn, rows, &layer_tensor(l, "mlp.up_proj"))?;
            gate.par_iter_mut().zip(&up).for_each(|(g, u)| {
                *g = *g / (1.0 + (-*g).exp()) * u;
            });
            drop(up);
            let down = self.linear(&gate, rows, &layer_tensor(l, "mlp.down_proj"))?;
            h.par_iter_mut().zip(&down).for_each(|(h, d)| *h += d);
        }
        Ok(h)
    }
}

/// Online-softmax attention of one query block for one head: per key block,
/// scores `Q·Kᵀ` and the update `P·V` both run through the block product.
#[allow(clippy::too_many_arguments)]
fn attend_block(
    block: &QueryBlock,
    head: usize,
    kv_head: usize,
    (hd, qd, kvd): (usize, usize, usize),
    scale: f32,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &mut [f32],
) {
    let rows = block.rows.len();
    let first = block.rows.start;
    let mut queries = vec![0f32; rows * hd];
    for (qi, i) in block.rows.clone().enumerate() {
        queries[qi * hd..(qi + 1) * hd].copy_from_slice(&q[i * qd + head * hd..][..hd]);
    }
    let (mut keys, mut values_t) = (vec![0f32; KEY_BLOCK * hd], vec![0f32; hd * KEY_BLOCK]);
    let (mut scores, mut update) = (vec![0f32; rows * KEY_BLOCK], vec![0f32; rows * hd]);
    let (mut max, mut sum) = (vec![f32::NEG_INFINITY; rows], vec![0f32; rows]);
    out.iter_mut().for_each(|a| *a = 0.0);
    for range in &block.keys {
        let end = range.end.min(block.rows.end);
        for k0 in (range.start..end).step_by(KEY_BLOCK) {
            let nk = (k0 + KEY_BLOCK).min(end) - k0;
            for j in 0..nk {
                let row = &k[(k0 + j) * kvd + kv_head * hd..][..hd];
                keys[j * hd..(j + 1) * hd].copy_from_slice(row);
                for (d, x) in v[(k0 + j) * kvd + kv_head * hd..][..hd].iter().enumerate() {
                    values_t[d * nk + j] = *x;
                }
            }
            matmul_block(&queries, rows, hd, &keys, nk, &mut scores);
            for qi in 0..rows {
                // Keys after the query's own row are masked (causality).
                let visible = (first + qi + 1).saturating_sub(k0).min(nk);
                let p = &mut scores[qi * nk..(qi + 1) * nk];
                if visible == 0 {
                    p.iter_mut().for_each(|x| *x = 0.0);
                    continue;
                }
                let block_max = p[..visible]
                    .iter()
                    .fold(f32::NEG_INFINITY, |m, &x| m.max(x * scale));
                let new_max = max[qi].max(block_max);
                let correction = (max[qi] - new_max).exp();
                let mut block_sum = 0.0;
                for x in &mut p[..visible] {
                    *x = (*x * scale - new_max).exp();
                    block_sum += *x;
                }
                p[visible..].iter_mut().for_each(|x| *x = 0.0);
                sum[qi] = sum[qi] * correction + block_sum;
                max[qi] = new_max;
                out[qi * hd..(qi + 1) * hd]
                    .iter_mut()
                    .for_each(|a| *a *= correction);
            }
            matmul_block(&scores, rows, nk, &values_t, hd, &mut update);
            out.iter_mut().zip(&update).for_each(|(a, u)| *a += u);
        }
    }
    for (qi, acc) in out.chunks_mut(hd).enumerate() {
        let inv = 1.0 / sum[qi];
        acc.iter_mut().for_each(|a| *a *= inv);
    }
}

/// cos and sin per position and frequency, with the scaling variant's
/// attention factor folded in.
struct RopeTable {
    half: usize,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl RopeTable {
    fn new(cfg: &LlamaConfig, seq_len: usize) -> RopeTable {
        let (freqs, factor) = cfg.rope_frequencies(seq_len);
        let half = freqs.len();
        let mut cos = Vec::with_capacity(seq_len * half);
        let mut sin = Vec::with_capacity(seq_len * half);
        for p in 0..seq_len {
            for f in &freqs {
                let angle = p as f64 * f;
                cos.push((angle.cos() * factor) as f32);
                sin.push((angle.sin() * factor) as f32);
            }
        }
        RopeTable { half, cos, sin }
    }

    fn at(&self, pos: usize) -> (&[f32], &[f32]) {
        let r = pos * self.half..(pos + 1) * self.half;
        (&self.cos[r.clone()], &self.sin[r])
    }
}

impl Backend for CpuModel<'_> {
    fn kind(&self) -> &'static str {
        "cpu"
    }

    fn device(&self) -> String {
        format!("cpu, {} threads", self.pool.current_num_threads())
    }

    fn log_probs(&self, batch: &Batch, targets: &[(usize, u32)]) -> Result<Vec<f64>> {
        self.pool.install(|| {
            let cfg = &self.cfg;
            let h = self.forward_hidden(batch)?;
            let norm = self.vector("model.norm.weight")?;
            let head = lm_head_name(cfg);
            let chunk = (LOGITS_BUDGET / cfg.vocab).clamp(16, 1024);
            let mut out = Vec::with_capacity(targets.len());
            for part in targets.chunks(chunk) {
                let mut rows = Vec::with_capacity(part.len() * cfg.hidden);
                for &(row, token) in part {
                    if token as usize >= cfg.vocab {
                        bail!(
                            "target token id {token} is outside the vocabulary of {}",
                            cfg.vocab
                        );
                    }
                    rows.extend_from_slice(&h[row * cfg.hidden..(row + 1) * cfg.hidden]);
                }
                let xn = self.rms_norm(&rows, &norm);
                let logits = self.linear(&xn, part.len(), head)?;
                let lps: Vec<f64> = logits
                    .par_chunks(cfg.vocab)
                    .zip(part.par_iter())
                    .map(|(row, &(_, token))| log_softmax_at(row, token as usize))
                    .collect();
                out.extend(lps);
            }
            Ok(out)
        })
    }
}

/// `log softmax(row)[index]`, accumulated in `f64`.
pub fn log_softmax_at(row: &[f32], index: usize) -> f64 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
    row[index] as f64 - max - sum.ln()
}
