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
use super::model::{
    embed_tokens, layer_bias, layer_tensor, lm_head_name, Activation, ModelConfig, Unfused,
    WeightSource,
};
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

/// A decoder evaluated on the CPU with a private thread pool.
pub struct CpuModel<'w> {
    cfg: ModelConfig,
    weights: Unfused<'w>,
    pool: rayon::ThreadPool,
}

impl<'w> CpuModel<'w> {
    /// Prepares a model over `weights` (which must have passed
    /// [`check_weights`](super::model::check_weights)) using `threads` threads.
    pub fn new(cfg: ModelConfig, weights: &'w dyn WeightSource, threads: usize) -> Result<Self> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .thread_name(|i| format!("yibuild-eval-{i}"))
            .build()
            .context("cannot start the evaluation thread pool")?;
        let weights = Unfused::new(&cfg, weights);
        Ok(CpuModel { cfg, weights, pool })
    }

    fn vector(&self, name: &str) -> Result<Vec<f32>> {
        let (len, _) = self.weights.shape(name).context(name.to_owned())?;
        let mut out = vec![0.0; len];
        self.weights.read_rows(name, 0..len, &mut out)?;
        Ok(out)
    }

    /// An RMSNorm weight with the architecture's offset added (Gemma's `1 + w`).
    fn norm_weight(&self, name: &str) -> Result<Vec<f32>> {
        let mut w = self.vector(name)?;
        if self.cfg.norm_offset != 0.0 {
            w.iter_mut().for_each(|x| *x += self.cfg.norm_offset);
        }
        Ok(w)
    }

    /// [`CpuModel::linear`] of layer `l`'s `what`, plus its bias when stored.
    fn layer_linear(&self, x: &[f32], m: usize, l: usize, what: &str) -> Result<Vec<f32>> {
        let mut y = self.linear(x, m, &layer_tensor(l, what))?;
        let bias = layer_bias(l, what);
        if self.weights.shape(&bias).is_some() {
            let b = self.vector(&bias)?;
            y.par_chunks_mut(b.len())
                .for_each(|row| row.iter_mut().zip(&b).for_each(|(y, b)| *y += b));
        }
        Ok(y)
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

    /// Rotates the first `rotary_dim` dimensions of every head of every row
    /// of `x` (`width` = heads × head_dim) in place, rotate-half style, by
    /// the row's position.
    fn apply_rope(&self, x: &mut [f32], width: usize, rope: &RopeTable, positions: &[usize]) {
        let hd = self.cfg.head_dim;
        let half = rope.half;
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

    /// Causal attention over the batch's rows, limited to the last `window`
    /// positions when given; returns `[rows, heads × head_dim]`.
    fn attention(
        &self,
        batch: &Batch,
        window: Option<usize>,
        q: &[f32],
        k: &[f32],
        v: &[f32],
    ) -> Vec<f32> {
        let cfg = &self.cfg;
        let (hd, qd, kvd) = (cfg.head_dim, cfg.q_dim(), cfg.kv_dim());
        let rows = batch.rows();
        let group = cfg.heads / cfg.kv_heads;
        let scores = Scores {
            scale: cfg.attn_scale,
            softcap: cfg.attn_softcap,
            window,
        };
        let positions = batch.positions();
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
                        let heads = (h, g, hd, qd, kvd);
                        attend_block(block, heads, &scores, &positions, q, k, v, out)
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

    /// Per-head RMSNorm (Qwen3 and Gemma 3 `q_norm`/`k_norm`) of every head
    /// of every row of `x`, in place.
    fn head_norm(&self, x: &mut [f32], weight: &[f32]) {
        let eps = self.cfg.rms_eps as f64;
        x.par_chunks_mut(weight.len()).for_each(|head| {
            let ms =
                head.iter().map(|v| (*v as f64) * (*v as f64)).sum::<f64>() / head.len() as f64;
            let inv = (1.0 / (ms + eps).sqrt()) as f32;
            head.iter_mut()
                .zip(weight)
                .for_each(|(v, w)| *v = w * (*v * inv));
        });
    }

    /// Self-attention of layer `l` over the normalized rows `xn`.
    fn attention_layer(
        &self,
        l: usize,
        batch: &Batch,
        xn: &[f32],
        rope: &RopeTable,
        positions: &[usize],
    ) -> Result<Vec<f32>> {
        let cfg = &self.cfg;
        let rows = batch.rows();
        let mut q = self.layer_linear(xn, rows, l, "self_attn.q_proj")?;
        let mut k = self.layer_linear(xn, rows, l, "self_attn.k_proj")?;
        let v = self.layer_linear(xn, rows, l, "self_attn.v_proj")?;
        if cfg.qk_norm {
            self.head_norm(
                &mut q,
                &self.norm_weight(&layer_tensor(l, "self_attn.q_norm"))?,
            );
            self.head_norm(
                &mut k,
                &self.norm_weight(&layer_tensor(l, "self_attn.k_norm"))?,
            );
        }
        self.apply_rope(&mut q, cfg.q_dim(), rope, positions);
        self.apply_rope(&mut k, cfg.kv_dim(), rope, positions);
        let attn = self.attention(batch, cfg.window(l), &q, &k, &v);
        drop((q, k, v));
        self.layer_linear(&attn, rows, l, "self_attn.o_proj")
    }

    /// The gated MLP of layer `l` over the normalized rows `xn`.
    fn mlp(&self, l: usize, rows: usize, xn: &[f32]) -> Result<Vec<f32>> {
        let mut gate = self.layer_linear(xn, rows, l, "mlp.gate_proj")?;
        let up = self.layer_linear(xn, rows, l, "mlp.up_proj")?;
        match self.cfg.activation {
            Activation::Silu => gate.par_iter_mut().zip(&up).for_each(|(g, u)| {
                *g = *g / (1.0 + (-*g).exp()) * u;
            }),
            Activation::GeluTanh => gate.par_iter_mut().zip(&up).for_each(|(g, u)| {
                *g = gelu_tanh(*g) * u;
            }),
        }
        drop(up);
        self.layer_linear(&gate, rows, l, "mlp.down_proj")
    }

    /// Adds `d` to the residual stream `h`, normalized first by `norm` (Gemma's
    /// post-attention and post-feed-forward norms) when given.
    fn add_residual(&self, h: &mut [f32], d: Vec<f32>, norm: Option<&str>) -> Result<()> {
        let d = match norm {
            Some(name) => self.rms_norm(&d, &self.norm_weight(name)?),
            None => d,
        };
        h.par_iter_mut().zip(&d).for_each(|(h, d)| *h += d);
        Ok(())
    }

    fn forward_hidden(&self, batch: &Batch) -> Result<Vec<f32>> {
        let cfg = &self.cfg;
        let rows = batch.rows();
        let mut h = embed_tokens(&self.weights, cfg, batch)?;
        let positions = batch.positions();
        let seq_len = batch.max_position() + 1;
        let global = RopeTable::new(cfg.rope_frequencies(seq_len), seq_len);
        let local = cfg
            .local_rope_frequencies()
            .map(|f| RopeTable::new((f, 1.0), seq_len));
        for l in 0..cfg.layers {
            let rope = match (&local, cfg.window(l)) {
                (Some(local), Some(_)) => local,
                _ => &global,
            };
            let xn = self.rms_norm(&h, &self.norm_weight(&layer_tensor(l, "input_layernorm"))?);
            let attn = self.attention_layer(l, batch, &xn, rope, &positions)?;
            // Llama's `post_attention_layernorm` is the MLP's input norm;
            // Gemma's normalizes the attention output and has its own
            // `pre_feedforward_layernorm` and `post_feedforward_layernorm`.
            let (attn_out, mlp_in, mlp_out) = if cfg.sandwich_norms {
                (
                    Some(layer_tensor(l, "post_attention_layernorm")),
                    layer_tensor(l, "pre_feedforward_layernorm"),
                    Some(layer_tensor(l, "post_feedforward_layernorm")),
                )
            } else {
                (None, layer_tensor(l, "post_attention_layernorm"), None)
            };
            self.add_residual(&mut h, attn, attn_out.as_deref())?;
            let xn = self.rms_norm(&h, &self.norm_weight(&mlp_in)?);
            let down = self.mlp(l, rows, &xn)?;
            self.add_residual(&mut h, down, mlp_out.as_deref())?;
        }
        Ok(h)
    }
}

/// GELU with the tanh approximation (`gelu_pytorch_tanh`).
fn gelu_tanh(x: f32) -> f32 {
    const C: f32 = 0.797_884_6; // √(2/π)
    0.5 * x * (1.0 + (C * (x + 0.044_715 * x * x * x)).tanh())
}

/// How attention scores are formed and which keys a query sees.
struct Scores {
    /// Multiplier of `q·k`.
    scale: f32,
    /// `c·tanh(s/c)` after scaling (Gemma 2).
    softcap: Option<f32>,
    /// Keys at positions `q - k < window` only.
    window: Option<usize>,
}

/// Online-softmax attention of one query block for one head: per key block,
/// scores `Q·Kᵀ` and the update `P·V` both run through the block product.
#[allow(clippy::too_many_arguments)]
fn attend_block(
    block: &QueryBlock,
    (head, kv_head, hd, qd, kvd): (usize, usize, usize, usize, usize),
    how: &Scores,
    positions: &[usize],
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
    // With soft-capping the scores are final before the softmax loop.
    let scale = if how.softcap.is_some() {
        1.0
    } else {
        how.scale
    };
    let (mut keys, mut values_t) = (vec![0f32; KEY_BLOCK * hd], vec![0f32; hd * KEY_BLOCK]);
    let (mut scores, mut update) = (vec![0f32; rows * KEY_BLOCK], vec![0f32; rows * hd]);
    let (mut max, mut sum) = (vec![f32::NEG_INFINITY; rows], vec![0f32; rows]);
    out.iter_mut().for_each(|a| *a = 0.0);
    for range in block.keys.iter().filter(|r| !r.is_empty()) {
        // The first key row query `i` sees in this range: the range start,
        // or the window's start (positions are consecutive within a range).
        let window_start = |i: usize| match how.window {
            None => range.start,
            Some(w) => {
                range.start
                    + (positions[i] + 1)
                        .saturating_sub(w)
                        .saturating_sub(positions[range.start])
            }
        };
        let end = range.end.min(block.rows.end);
        let start = window_start(first).min(end);
        for k0 in (start..end).step_by(KEY_BLOCK) {
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
                // Keys after the query's own row (causality) and before its
                // window are masked.
                let visible = (first + qi + 1).saturating_sub(k0).min(nk);
                let from = window_start(first + qi).saturating_sub(k0).min(visible);
                let p = &mut scores[qi * nk..(qi + 1) * nk];
                if from == visible {
                    p.iter_mut().for_each(|x| *x = 0.0);
                    continue;
                }
                if let Some(cap) = how.softcap {
                    for x in &mut p[from..visible] {
                        *x = cap * (*x * how.scale / cap).tanh();
                    }
                }
                let block_max = p[from..visible]
                    .iter()
                    .fold(f32::NEG_INFINITY, |m, &x| m.max(x * scale));
                let new_max = max[qi].max(block_max);
                let correction = (max[qi] - new_max).exp();
                let mut block_sum = 0.0;
                for x in &mut p[from..visible] {
                    *x = (*x * scale - new_max).exp();
                    block_sum += *x;
                }
                p[..from].iter_mut().for_each(|x| *x = 0.0);
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
    /// The table of `freqs` (with their cos/sin factor) for `seq_len` positions.
    fn new((freqs, factor): (Vec<f64>, f64), seq_len: usize) -> RopeTable {
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
            let norm = self.norm_weight("model.norm.weight")?;
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
                let mut logits = self.linear(&xn, part.len(), head)?;
                if let Some(cap) = cfg.final_softcap {
                    logits
                        .par_iter_mut()
                        .for_each(|x| *x = cap * (*x / cap).tanh());
                }
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
