//! The CPU forward pass of every supported architecture against a
//! straightforward reference written here (naive attention in f64, no code
//! shared with `src/eval`), on tiny random models written to a temporary
//! folder in the layout transformers 5 saves (config.json + safetensors).
//! Each fixture switches on the features of its architecture: biases, q/k
//! norms, soft-capping, sliding windows, fused projections, Gemma's `1 + w`
//! norms and scaled embeddings, GELU-tanh, yarn and longrope scaling,
//! partial rotary, Gemma 3's local/global rotary bases. GGUF files written by
//! the project's converter (Llama, Qwen2), and GGUFs written here in
//! llama.cpp's layout (Qwen3, Gemma 2/3, Phi-3), must give the same
//! log-probabilities as the folder they came from.

use std::collections::HashMap;
use std::path::Path;

use serde_json::{json, Value as Json};
use yibuild::eval::cpu::CpuModel;
use yibuild::eval::gguf_weights::GgufWeights;
use yibuild::eval::model::{check_weights, ModelConfig, WeightSource};
use yibuild::eval::{Backend, Batch};
use yibuild::fixtures::{write_byte_level_tokenizer, write_model_files, SplitMix};
use yibuild::gguf::file::{GgufWriter, TensorDesc, Value};
use yibuild::gguf::GgmlType;
use yibuild::tensor::{DType, ModelTensors};

const HIDDEN: usize = 32;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const FF: usize = 48;
const VOCAB: usize = 320;
const LAYERS: usize = 3;
const TOKENS: usize = 14;

/// One fixture: the architecture's config.json keys and the features the
/// reference must reproduce.
#[derive(Clone)]
struct Arch {
    class: &'static str,
    model_type: &'static str,
    head_dim: usize,
    /// Extra config.json keys (transformers 5 layout).
    keys: Json,
    /// `rope_parameters`.
    rope: Json,
    qkv_bias: bool,
    qk_norm: bool,
    /// Gemma: `1 + w` norms, four norms per layer, √hidden embeddings, GELU-tanh.
    gemma: bool,
    /// Phi-3: `qkv_proj` and `gate_up_proj`.
    fused: bool,
    tie: bool,
}

impl Arch {
    fn new(class: &'static str, model_type: &'static str) -> Arch {
        Arch {
            class,
            model_type,
            head_dim: HIDDEN / HEADS,
            keys: json!({}),
            rope: json!({"rope_type": "default", "rope_theta": 10000.0}),
            qkv_bias: false,
            qk_norm: false,
            gemma: false,
            fused: false,
            tie: false,
        }
    }

    fn config(&self) -> Json {
        let mut c = json!({
            "architectures": [self.class], "model_type": self.model_type,
            "hidden_size": HIDDEN, "intermediate_size": FF, "num_hidden_layers": LAYERS,
            "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS,
            "head_dim": self.head_dim, "vocab_size": VOCAB, "max_position_embeddings": 64,
            "rms_norm_eps": 1e-6, "tie_word_embeddings": self.tie, "dtype": "float32",
            "rope_parameters": self.rope, "bos_token_id": 1, "eos_token_id": 2,
            "transformers_version": "5.25.0",
        });
        if !self.gemma {
            c["hidden_act"] = json!("silu");
        }
        for (k, v) in self.keys.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    }

    fn tensors(&self, seed: u64) -> Vec<(String, Vec<usize>, Vec<f32>)> {
        let (q, kv, hd) = (
            HEADS * self.head_dim,
            KV_HEADS * self.head_dim,
            self.head_dim,
        );
        let mut shapes: Vec<(String, Vec<usize>)> =
            vec![("model.embed_tokens.weight".into(), vec![VOCAB, HIDDEN])];
        for l in 0..LAYERS {
            let p = |s: &str| format!("model.layers.{l}.{s}");
            let mut layer = vec![(p("input_layernorm.weight"), vec![HIDDEN])];
            if self.fused {
                layer.push((p("self_attn.qkv_proj.weight"), vec![q + 2 * kv, HIDDEN]));
            } else {
                layer.push((p("self_attn.q_proj.weight"), vec![q, HIDDEN]));
                layer.push((p("self_attn.k_proj.weight"), vec![kv, HIDDEN]));
                layer.push((p("self_attn.v_proj.weight"), vec![kv, HIDDEN]));
            }
            if self.qkv_bias {
                layer.push((p("self_attn.q_proj.bias"), vec![q]));
                layer.push((p("self_attn.k_proj.bias"), vec![kv]));
                layer.push((p("self_attn.v_proj.bias"), vec![kv]));
            }
            if self.qk_norm {
                layer.push((p("self_attn.q_norm.weight"), vec![hd]));
                layer.push((p("self_attn.k_norm.weight"), vec![hd]));
            }
            layer.push((p("self_attn.o_proj.weight"), vec![HIDDEN, q]));
            layer.push((p("post_attention_layernorm.weight"), vec![HIDDEN]));
            if self.gemma {
                layer.push((p("pre_feedforward_layernorm.weight"), vec![HIDDEN]));
                layer.push((p("post_feedforward_layernorm.weight"), vec![HIDDEN]));
            }
            if self.fused {
                layer.push((p("mlp.gate_up_proj.weight"), vec![2 * FF, HIDDEN]));
            } else {
                layer.push((p("mlp.gate_proj.weight"), vec![FF, HIDDEN]));
                layer.push((p("mlp.up_proj.weight"), vec![FF, HIDDEN]));
            }
            layer.push((p("mlp.down_proj.weight"), vec![HIDDEN, FF]));
            shapes.extend(layer);
        }
        shapes.push(("model.norm.weight".into(), vec![HIDDEN]));
        if !self.tie {
            shapes.push(("lm_head.weight".into(), vec![VOCAB, HIDDEN]));
        }
        let mut rng = SplitMix(seed);
        shapes
            .into_iter()
            .map(|(name, shape)| {
                let n: usize = shape.iter().product();
                let values: Vec<f32> = if name.contains("norm") {
                    // Gemma stores w with the model computing 1 + w.
                    let centre = if self.gemma { 0.0 } else { 1.0 };
                    (0..n).map(|_| centre + 0.2 * rng.normal()).collect()
                } else if name.ends_with("bias") {
                    (0..n).map(|_| 0.5 * rng.normal()).collect()
                } else {
                    let scale = 1.5 / (*shape.last().unwrap() as f32).sqrt();
                    (0..n).map(|_| scale * rng.normal()).collect()
                };
                (name, shape, values)
            })
            .collect()
    }

    fn write(&self, dir: &Path) -> HashMap<String, Vec<f64>> {
        let tensors = self.tensors(7);
        write_model_files(dir, &self.config(), &tensors, DType::F32, 1).unwrap();
        write_byte_level_tokenizer(dir, VOCAB).unwrap();
        tensors
            .into_iter()
            .map(|(n, _, v)| (n, v.into_iter().map(f64::from).collect()))
            .collect()
    }
}

// ---------------------------------------------------------------------------
// The reference: everything in f64, one query and one key at a time.

/// What the reference reads from the fixture's config (by hand, not through
/// yibuild's reader).
struct Ref {
    head_dim: usize,
    rotary: usize,
    eps: f64,
    scale: f64,
    attn_cap: Option<f64>,
    final_cap: Option<f64>,
    /// Per layer: window, inverse frequencies and cos/sin factor.
    layers: Vec<(Option<usize>, Vec<f64>, f64)>,
}

fn rope_freqs(rope: &Json, rotary: usize, seq_len: usize, max_pos: usize) -> (Vec<f64>, f64) {
    let base = rope["rope_theta"].as_f64().unwrap();
    let d = rotary as f64;
    let plain: Vec<f64> = (0..rotary / 2)
        .map(|i| base.powf(-(2.0 * i as f64) / d))
        .collect();
    match rope["rope_type"].as_str().unwrap() {
        "default" => (plain, 1.0),
        "linear" => {
            let f = rope["factor"].as_f64().unwrap();
            (plain.iter().map(|x| x / f).collect(), 1.0)
        }
        "yarn" => {
            let f = rope["factor"].as_f64().unwrap();
            let orig = rope["original_max_position_embeddings"].as_f64().unwrap();
            let dim_of =
                |rot: f64| d * (orig / (rot * 2.0 * std::f64::consts::PI)).ln() / (2.0 * base.ln());
            let low = dim_of(32.0).floor().max(0.0);
            let high = dim_of(1.0).ceil().min(d - 1.0);
            let freqs = plain
                .iter()
                .enumerate()
                .map(|(i, x)| {
                    let ramp = ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
                    let extrapolate = 1.0 - ramp;
                    x / f * (1.0 - extrapolate) + x * extrapolate
                })
                .collect();
            (freqs, 0.1 * f.ln() + 1.0)
        }
        "longrope" => {
            let orig = rope["original_max_position_embeddings"].as_f64().unwrap();
            let key = if seq_len as f64 > orig {
                "long_factor"
            } else {
                "short_factor"
            };
            let ext: Vec<f64> = rope[key]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            let f = max_pos as f64 / orig;
            let att = (1.0 + f.ln() / orig.ln()).sqrt();
            (plain.iter().zip(&ext).map(|(x, e)| x / e).collect(), att)
        }
        other => panic!("{other}"),
    }
}

fn rms(x: &[f64], w: &[f64], offset: f64, eps: f64) -> Vec<f64> {
    let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
    let inv = 1.0 / (ms + eps).sqrt();
    x.iter()
        .zip(w)
        .map(|(v, w)| v * inv * (w + offset))
        .collect()
}

/// `W x` (+ bias) for a `[rows, x.len()]` weight.
fn matvec(w: &[f64], x: &[f64], bias: Option<&Vec<f64>>) -> Vec<f64> {
    let mut y: Vec<f64> = w
        .chunks(x.len())
        .map(|r| r.iter().zip(x).map(|(a, b)| a * b).sum())
        .collect();
    if let Some(b) = bias {
        y.iter_mut().zip(b).for_each(|(y, b)| *y += b);
    }
    y
}

fn rotate(x: &mut [f64], rotary: usize, freqs: &[f64], factor: f64, pos: usize) {
    let half = rotary / 2;
    for i in 0..half {
        let (c, s) = (
            (pos as f64 * freqs[i]).cos() * factor,
            (pos as f64 * freqs[i]).sin() * factor,
        );
        let (a, b) = (x[i], x[i + half]);
        x[i] = a * c - b * s;
        x[i + half] = b * c + a * s;
    }
}

/// Log-probabilities of `targets[i]` after row `i`, for every row.
fn reference(
    arch: &Arch,
    r: &Ref,
    w: &HashMap<String, Vec<f64>>,
    tokens: &[u32],
    targets: &[u32],
) -> Vec<f64> {
    let (hd, n) = (r.head_dim, tokens.len());
    let (q_dim, kv_dim) = (HEADS * hd, KV_HEADS * hd);
    let off = if arch.gemma { 1.0 } else { 0.0 };
    let t = |name: String| &w[&name];
    let mut h: Vec<Vec<f64>> = tokens
        .iter()
        .map(|&tok| {
            let row = &w["model.embed_tokens.weight"][tok as usize * HIDDEN..][..HIDDEN];
            let s = if arch.gemma {
                (HIDDEN as f64).sqrt()
            } else {
                1.0
            };
            row.iter().map(|x| x * s).collect()
        })
        .collect();
    for (l, (window, freqs, factor)) in r.layers.iter().enumerate() {
        let p = |s: &str| format!("model.layers.{l}.{s}");
        let (mut qs, mut ks, mut vs) = (vec![], vec![], vec![]);
        for (pos, x) in h.iter().enumerate() {
            let xn = rms(x, t(p("input_layernorm.weight")), off, r.eps);
            let (mut q, mut k, v) = if arch.fused {
                let all = matvec(t(p("self_attn.qkv_proj.weight")), &xn, None);
                (
                    all[..q_dim].to_vec(),
                    all[q_dim..q_dim + kv_dim].to_vec(),
                    all[q_dim + kv_dim..].to_vec(),
                )
            } else {
                (
                    matvec(
                        t(p("self_attn.q_proj.weight")),
                        &xn,
                        w.get(&p("self_attn.q_proj.bias")),
                    ),
                    matvec(
                        t(p("self_attn.k_proj.weight")),
                        &xn,
                        w.get(&p("self_attn.k_proj.bias")),
                    ),
                    matvec(
                        t(p("self_attn.v_proj.weight")),
                        &xn,
                        w.get(&p("self_attn.v_proj.bias")),
                    ),
                )
            };
            for (x, norm) in [(&mut q, "q_norm"), (&mut k, "k_norm")] {
                for head in x.chunks_mut(hd) {
                    if arch.qk_norm {
                        let normed =
                            rms(head, t(p(&format!("self_attn.{norm}.weight"))), off, r.eps);
                        head.copy_from_slice(&normed);
                    }
                    rotate(head, r.rotary, freqs, *factor, pos);
                }
            }
            qs.push(q);
            ks.push(k);
            vs.push(v);
        }
        for i in 0..n {
            let mut attn = vec![0.0; q_dim];
            for head in 0..HEADS {
                let g = head / (HEADS / KV_HEADS);
                let q = &qs[i][head * hd..(head + 1) * hd];
                let visible: Vec<usize> = (0..=i)
                    .filter(|j| window.is_none_or(|w| i - j < w))
                    .collect();
                let scores: Vec<f64> = visible
                    .iter()
                    .map(|&j| {
                        let s = q
                            .iter()
                            .zip(&ks[j][g * hd..(g + 1) * hd])
                            .map(|(a, b)| a * b)
                            .sum::<f64>()
                            * r.scale;
                        r.attn_cap.map_or(s, |c| c * (s / c).tanh())
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = scores.iter().map(|s| (s - max).exp()).sum();
                for (&j, s) in visible.iter().zip(&scores) {
                    let pj = (s - max).exp() / sum;
                    for d in 0..hd {
                        attn[head * hd + d] += pj * vs[j][g * hd + d];
                    }
                }
            }
            let mut o = matvec(t(p("self_attn.o_proj.weight")), &attn, None);
            if arch.gemma {
                o = rms(&o, t(p("post_attention_layernorm.weight")), off, r.eps);
            }
            h[i].iter_mut().zip(&o).for_each(|(h, o)| *h += o);
            let pre = if arch.gemma {
                "pre_feedforward_layernorm"
            } else {
                "post_attention_layernorm"
            };
            let xn = rms(&h[i], t(p(&format!("{pre}.weight"))), off, r.eps);
            let (gate, up) = if arch.fused {
                let all = matvec(t(p("mlp.gate_up_proj.weight")), &xn, None);
                (all[..FF].to_vec(), all[FF..].to_vec())
            } else {
                (
                    matvec(t(p("mlp.gate_proj.weight")), &xn, None),
                    matvec(t(p("mlp.up_proj.weight")), &xn, None),
                )
            };
            let act: Vec<f64> = gate
                .iter()
                .zip(&up)
                .map(|(g, u)| {
                    let a = if arch.gemma {
                        0.5 * g
                            * (1.0
                                + ((2.0 / std::f64::consts::PI).sqrt()
                                    * (g + 0.044715 * g.powi(3)))
                                .tanh())
                    } else {
                        g / (1.0 + (-g).exp())
                    };
                    a * u
                })
                .collect();
            let mut down = matvec(t(p("mlp.down_proj.weight")), &act, None);
            if arch.gemma {
                down = rms(&down, t(p("post_feedforward_layernorm.weight")), off, r.eps);
            }
            h[i].iter_mut().zip(&down).for_each(|(h, d)| *h += d);
        }
    }
    let head = if arch.tie {
        "model.embed_tokens.weight"
    } else {
        "lm_head.weight"
    };
    h.iter()
        .zip(targets)
        .map(|(x, &target)| {
            let xn = rms(x, &w["model.norm.weight"], off, r.eps);
            let logits: Vec<f64> = matvec(&w[head], &xn, None)
                .into_iter()
                .map(|z| r.final_cap.map_or(z, |c| c * (z / c).tanh()))
                .collect();
            let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = max + logits.iter().map(|z| (z - max).exp()).sum::<f64>().ln();
            logits[target as usize] - lse
        })
        .collect()
}

// ---------------------------------------------------------------------------

fn tokens() -> (Vec<u32>, Vec<u32>) {
    let all: Vec<u32> = (0..=TOKENS).map(|i| (i * 37 % 311) as u32 + 3).collect();
    (all[..TOKENS].to_vec(), all[1..].to_vec())
}

fn yibuild_log_probs(cfg: ModelConfig, weights: &dyn WeightSource) -> Vec<f64> {
    check_weights(&cfg, weights).unwrap();
    let (input, targets) = tokens();
    let model = CpuModel::new(cfg, weights, 2).unwrap();
    let rows: Vec<(usize, u32)> = targets.iter().enumerate().map(|(i, &t)| (i, t)).collect();
    model.log_probs(&Batch::window(input), &rows).unwrap()
}

/// Writes `arch`, runs both passes, and compares every log-probability.
fn check(arch: &Arch, r: Ref) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    let weights = arch.write(&dir);
    let cfg = ModelConfig::from_dir(&dir).unwrap();
    let tensors = ModelTensors::open(&dir).unwrap();
    let got = yibuild_log_probs(cfg, &tensors);
    let (input, targets) = tokens();
    let want = reference(arch, &r, &weights, &input, &targets);
    let spread = want.iter().cloned().fold(0.0f64, |m, x| m.max(x.abs()));
    assert!(
        spread > 1.0,
        "{}: the fixture is too flat to test anything",
        arch.class
    );
    for (i, (a, b)) in got.iter().zip(&want).enumerate() {
        assert!(
            (a - b).abs() < 2e-4,
            "{} row {i}: yibuild {a}, reference {b}",
            arch.class
        );
    }
}

/// The reference settings of a fixture with one rotary table for every layer.
fn uniform(arch: &Arch, scale: f64, windows: [Option<usize>; LAYERS]) -> Ref {
    let rotary = arch.rope["partial_rotary_factor"]
        .as_f64()
        .map_or(arch.head_dim, |p| (arch.head_dim as f64 * p) as usize);
    let (freqs, factor) = rope_freqs(&arch.rope, rotary, TOKENS, 64);
    Ref {
        head_dim: arch.head_dim,
        rotary,
        eps: 1e-6,
        scale,
        attn_cap: None,
        final_cap: None,
        layers: windows
            .iter()
            .map(|w| (*w, freqs.clone(), factor))
            .collect(),
    }
}

fn plain_scale(hd: usize) -> f64 {
    1.0 / (hd as f64).sqrt()
}

#[test]
fn llama_with_yarn_scaling_matches_the_reference() {
    let mut a = Arch::new("LlamaForCausalLM", "llama");
    a.rope = json!({"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                    "original_max_position_embeddings": 16});
    check(&a, uniform(&a, plain_scale(a.head_dim), [None; LAYERS]));
}

#[test]
fn mistral_sliding_window_matches_the_reference() {
    let mut a = Arch::new("MistralForCausalLM", "mistral");
    a.keys = json!({"sliding_window": 5});
    check(&a, uniform(&a, plain_scale(a.head_dim), [Some(5); LAYERS]));
}

#[test]
fn qwen2_biases_and_tied_embeddings_match_the_reference() {
    let mut a = Arch::new("Qwen2ForCausalLM", "qwen2");
    a.qkv_bias = true;
    a.tie = true;
    // As transformers 5 saves Qwen2: the window is off, so no layer slides.
    a.keys = json!({"use_sliding_window": false, "sliding_window": null, "max_window_layers": 2,
                    "layer_types": ["full_attention", "full_attention", "full_attention"]});
    check(&a, uniform(&a, plain_scale(a.head_dim), [None; LAYERS]));
    // With the window on, layers from max_window_layers slide.
    a.keys = json!({"use_sliding_window": true, "sliding_window": 4, "max_window_layers": 2});
    check(
        &a,
        uniform(&a, plain_scale(a.head_dim), [None, None, Some(4)]),
    );
}

#[test]
fn qwen3_head_norms_and_explicit_head_dim_match_the_reference() {
    let mut a = Arch::new("Qwen3ForCausalLM", "qwen3");
    a.qk_norm = true;
    a.head_dim = 16; // not hidden / heads
    a.keys = json!({"attention_bias": false, "use_sliding_window": false, "sliding_window": null,
                    "max_window_layers": 28});
    check(&a, uniform(&a, plain_scale(16), [None; LAYERS]));
}

fn gemma(class: &'static str, model_type: &'static str) -> Arch {
    let mut a = Arch::new(class, model_type);
    a.gemma = true;
    a.tie = true;
    a
}

#[test]
fn gemma2_soft_capping_sandwich_norms_and_alternating_windows_match_the_reference() {
    let mut a = gemma("Gemma2ForCausalLM", "gemma2");
    a.keys = json!({"hidden_activation": "gelu_pytorch_tanh", "query_pre_attn_scalar": 12,
                    "attn_logit_softcapping": 2.0, "final_logit_softcapping": 3.0,
                    "sliding_window": 4,
                    "layer_types": ["sliding_attention", "full_attention", "sliding_attention"]});
    let capped = |a: &Arch| Ref {
        attn_cap: Some(2.0),
        final_cap: Some(3.0),
        ..uniform(a, 1.0 / 12f64.sqrt(), [Some(4), None, Some(4)])
    };
    check(&a, capped(&a));
    // A transformers 4 config without layer_types: even layers slide.
    a.keys.as_object_mut().unwrap().shift_remove("layer_types");
    check(&a, capped(&a));
}

#[test]
fn gemma3_local_and_global_rotary_bases_match_the_reference() {
    let mut a = gemma("Gemma3ForCausalLM", "gemma3_text");
    a.qk_norm = true;
    a.rope = json!({
        "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1000000.0},
        "sliding_attention": {"rope_type": "default", "rope_theta": 100.0}});
    a.keys = json!({"hidden_activation": "gelu_pytorch_tanh", "query_pre_attn_scalar": 8,
                    "sliding_window": 3, "final_logit_softcapping": null,
                    "attn_logit_softcapping": null,
                    "layer_types": ["sliding_attention", "sliding_attention", "full_attention"]});
    let hd = a.head_dim;
    let (global, _) = rope_freqs(&a.rope["full_attention"], hd, TOKENS, 64);
    let (local, _) = rope_freqs(&a.rope["sliding_attention"], hd, TOKENS, 64);
    let r = Ref {
        head_dim: hd,
        rotary: hd,
        eps: 1e-6,
        scale: 1.0 / 8f64.sqrt(),
        attn_cap: None,
        final_cap: None,
        layers: vec![
            (Some(3), local.clone(), 1.0),
            (Some(3), local, 1.0),
            (None, global, 1.0),
        ],
    };
    check(&a, r);
}

#[test]
fn phi3_fused_projections_longrope_and_partial_rotary_match_the_reference() {
    let mut a = Arch::new("Phi3ForCausalLM", "phi3");
    a.fused = true;
    a.head_dim = 16;
    // 16 × 0.5 = 8 rotated dimensions, 4 factors; the window of 14 tokens is
    // past the original context of 8, so the long factors apply.
    a.rope = json!({"rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": 0.5,
                    "short_factor": [1.0, 1.5, 2.0, 3.0], "long_factor": [1.0, 2.0, 4.0, 9.0]});
    a.keys = json!({"original_max_position_embeddings": 8, "sliding_window": null});
    let mut with_original = a.rope.clone();
    with_original["original_max_position_embeddings"] = json!(8);
    let (freqs, factor) = rope_freqs(&with_original, 8, TOKENS, 64);
    assert!(factor > 1.0);
    let r = Ref {
        head_dim: 16,
        rotary: 8,
        eps: 1e-6,
        scale: plain_scale(16),
        attn_cap: None,
        final_cap: None,
        layers: vec![(None, freqs.clone(), factor); LAYERS],
    };
    check(&a, r);
}

#[test]
fn unsupported_architectures_are_named_with_the_supported_list() {
    let tmp = tempfile::tempdir().unwrap();
    for (class, why) in [
        ("MixtralForCausalLM", "mixture-of-experts"),
        ("Gemma3ForConditionalGeneration", "vision-language"),
        ("GPTNeoXForCausalLM", ""),
    ] {
        let dir = tmp.path().join(class);
        std::fs::create_dir_all(&dir).unwrap();
        let mut c = Arch::new("LlamaForCausalLM", "llama").config();
        c["architectures"] = json!([class]);
        std::fs::write(dir.join("config.json"), c.to_string()).unwrap();
        let err = format!("{:#}", ModelConfig::from_dir(&dir).unwrap_err());
        assert!(
            err.contains(&format!("unsupported architecture `{class}`")),
            "{err}"
        );
        assert!(err.contains(why), "{err}");
        assert!(
            err.contains("Gemma2ForCausalLM, Gemma3ForCausalLM, Phi3ForCausalLM"),
            "{err}"
        );
    }
}

/// The GGUF path gives the safetensors path's log-probabilities on files the
/// project's converter writes (architectures it converts today).
#[test]
fn gguf_weights_match_safetensors_for_llama_and_qwen2() {
    use yibuild::gguf::mixture::Preset;
    let mut qwen = Arch::new("Qwen2ForCausalLM", "qwen2");
    qwen.qkv_bias = true;
    qwen.tie = true;
    qwen.keys = json!({"use_sliding_window": false, "sliding_window": null});
    let llama = Arch::new("LlamaForCausalLM", "llama");
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    for (arch, preset, tolerance) in [
        (&llama, Preset::F32, 1e-5),
        (&qwen, Preset::F32, 1e-5),
        (&qwen, Preset::F16, 2e-2),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("m");
        arch.write(&dir);
        let cfg = ModelConfig::from_dir(&dir).unwrap();
        let tensors = ModelTensors::open(&dir).unwrap();
        let want = yibuild_log_probs(cfg, &tensors);
        let gguf = tmp.path().join("m.gguf");
        yibuild::gguf::pipeline::Conversion::open(&dir, "m")
            .unwrap()
            .write(&gguf, preset, None, &pool, &|_| {})
            .unwrap();
        let (weights, cfg) = GgufWeights::open(&gguf).unwrap();
        let got = yibuild_log_probs(cfg, &weights);
        for (a, b) in got.iter().zip(&want) {
            assert!(
                (a - b).abs() < tolerance,
                "{} {preset:?}: {a} vs {b}",
                arch.class
            );
        }
    }
}

/// The llama.cpp name of a fixture tensor (convert_hf_to_gguf.py's table
/// for these architectures), written here independently of src/eval.
fn llama_cpp_name(gemma: bool, hf: &str) -> String {
    let fixed = [
        ("model.embed_tokens.weight", "token_embd.weight"),
        ("model.norm.weight", "output_norm.weight"),
        ("lm_head.weight", "output.weight"),
    ];
    if let Some((_, g)) = fixed.iter().find(|(h, _)| *h == hf) {
        return g.to_string();
    }
    let rest = hf.strip_prefix("model.layers.").unwrap();
    let (layer, part) = rest.split_once('.').unwrap();
    let table = [
        ("input_layernorm.weight", "attn_norm.weight"),
        ("self_attn.q_norm.weight", "attn_q_norm.weight"),
        ("self_attn.k_norm.weight", "attn_k_norm.weight"),
        ("self_attn.qkv_proj.weight", "attn_qkv.weight"),
        ("self_attn.q_proj.weight", "attn_q.weight"),
        ("self_attn.k_proj.weight", "attn_k.weight"),
        ("self_attn.v_proj.weight", "attn_v.weight"),
        ("self_attn.o_proj.weight", "attn_output.weight"),
        ("pre_feedforward_layernorm.weight", "ffn_norm.weight"),
        ("post_feedforward_layernorm.weight", "post_ffw_norm.weight"),
        ("mlp.gate_up_proj.weight", "ffn_up.weight"),
        ("mlp.gate_proj.weight", "ffn_gate.weight"),
        ("mlp.up_proj.weight", "ffn_up.weight"),
        ("mlp.down_proj.weight", "ffn_down.weight"),
    ];
    let g = match part {
        "post_attention_layernorm.weight" if gemma => "post_attention_norm.weight",
        "post_attention_layernorm.weight" => "ffn_norm.weight",
        _ => table.iter().find(|(h, _)| *h == part).unwrap().1,
    };
    format!("blk.{layer}.{g}")
}

/// Writes `arch`'s fixture as an F32 GGUF the way llama.cpp's converter lays
/// these architectures out: no Q/K permutation, Gemma norms stored as `1 + w`,
/// Phi-3's rope factors as tensors; `meta` are the `<arch>.*` keys.
fn write_gguf_by_hand(arch: &Arch, llama_arch: &str, meta: Metadata, path: &Path) {
    let mut tensors: Vec<(String, Vec<u64>, Vec<f32>)> = arch
        .tensors(7)
        .into_iter()
        .map(|(name, shape, mut values)| {
            if arch.gemma && name.ends_with("norm.weight") {
                values.iter_mut().for_each(|v| *v += 1.0);
            }
            let ne = shape.iter().rev().map(|&d| d as u64).collect();
            (llama_cpp_name(arch.gemma, &name), ne, values)
        })
        .collect();
    for key in ["long_factor", "short_factor"] {
        if let Some(f) = arch.rope.get(key) {
            let values: Vec<f32> = f
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect();
            let name = format!("rope_factors_{}.weight", &key[..key.len() - 7]);
            tensors.push((name, vec![values.len() as u64], values));
        }
    }
    let mut metadata = vec![(
        "general.architecture".to_owned(),
        Value::String(llama_arch.into()),
    )];
    let u = |v: usize| Value::U32(v as u32);
    for (k, v) in [
        ("context_length", u(64)),
        ("embedding_length", u(HIDDEN)),
        ("block_count", u(LAYERS)),
        ("feed_forward_length", u(FF)),
        ("attention.head_count", u(HEADS)),
        ("attention.head_count_kv", u(KV_HEADS)),
        ("attention.layer_norm_rms_epsilon", Value::F32(1e-6)),
    ]
    .into_iter()
    .chain(meta)
    {
        metadata.push((format!("{llama_arch}.{k}"), v));
    }
    let descs: Vec<TensorDesc> = tensors
        .iter()
        .map(|(name, ne, _)| TensorDesc {
            name: name.clone(),
            ty: GgmlType::F32,
            ne: ne.clone(),
        })
        .collect();
    let mut w = GgufWriter::create(path, &metadata, &descs).unwrap();
    for (_, _, values) in &tensors {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        w.write_data(&bytes).unwrap();
    }
    w.finish().unwrap();
}

/// `<arch>.*` keys (without the prefix) and their values.
type Metadata = Vec<(&'static str, Value)>;

/// For the architectures the converter does not write yet, a GGUF laid out
/// as llama.cpp's converter lays them out gives the safetensors path's
/// log-probabilities.
#[test]
fn hand_written_ggufs_match_safetensors_for_qwen3_gemma_and_phi3() {
    let mut qwen3 = Arch::new("Qwen3ForCausalLM", "qwen3");
    qwen3.qk_norm = true;
    qwen3.head_dim = 16;
    qwen3.keys = json!({"use_sliding_window": false, "sliding_window": null});
    // llama.cpp scales Gemma 2/3 by head_dim (= query_pre_attn_scalar here)
    // and fixes the layer pattern and Gemma 3's local base in code.
    let mut gemma2 = gemma("Gemma2ForCausalLM", "gemma2");
    gemma2.keys = json!({"query_pre_attn_scalar": 8, "attn_logit_softcapping": 2.0,
                         "final_logit_softcapping": 3.0, "sliding_window": 4});
    let mut gemma3 = gemma("Gemma3ForCausalLM", "gemma3_text");
    gemma3.qk_norm = true;
    gemma3.rope = json!({
        "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1000000.0},
        "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}});
    gemma3.keys = json!({"query_pre_attn_scalar": 8, "sliding_window": 3,
                         "layer_types": ["sliding_attention", "sliding_attention", "sliding_attention"]});
    let mut phi3 = Arch::new("Phi3ForCausalLM", "phi3");
    phi3.fused = true;
    phi3.rope = json!({"rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": 0.5,
                       "short_factor": [1.0, 1.5], "long_factor": [2.0, 5.0]});
    phi3.keys = json!({"original_max_position_embeddings": 8, "sliding_window": null});
    let phi3_attn = (1.0 + 8f64.ln() / 8f64.ln()).sqrt() as f32;
    let cases: Vec<(&Arch, &str, Metadata)> = vec![
        (
            &qwen3,
            "qwen3",
            vec![
                ("attention.key_length", Value::U32(16)),
                ("attention.value_length", Value::U32(16)),
                ("rope.freq_base", Value::F32(10000.0)),
            ],
        ),
        (
            &gemma2,
            "gemma2",
            vec![
                ("attention.key_length", Value::U32(8)),
                ("rope.freq_base", Value::F32(10000.0)),
                ("attention.sliding_window", Value::U32(4)),
                ("attn_logit_softcapping", Value::F32(2.0)),
                ("final_logit_softcapping", Value::F32(3.0)),
            ],
        ),
        (
            &gemma3,
            "gemma3",
            vec![
                ("attention.key_length", Value::U32(8)),
                ("rope.freq_base", Value::F32(1e6)),
                ("attention.sliding_window", Value::U32(3)),
                ("rope.scaling.type", Value::String("linear".into())),
                ("rope.scaling.factor", Value::F32(2.0)),
            ],
        ),
        (
            &phi3,
            "phi3",
            vec![
                ("rope.dimension_count", Value::U32(4)),
                ("rope.freq_base", Value::F32(10000.0)),
                ("rope.scaling.attn_factor", Value::F32(phi3_attn)),
                ("rope.scaling.original_context_length", Value::U32(8)),
            ],
        ),
    ];
    for (arch, llama_arch, meta) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("m");
        arch.write(&dir);
        let cfg = ModelConfig::from_dir(&dir).unwrap();
        let tensors = ModelTensors::open(&dir).unwrap();
        let want = yibuild_log_probs(cfg, &tensors);
        let path = tmp.path().join("m.gguf");
        write_gguf_by_hand(arch, llama_arch, meta, &path);
        let (weights, cfg) = GgufWeights::open(&path).unwrap();
        let got = yibuild_log_probs(cfg, &weights);
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() < 1e-4, "{llama_arch}: {a} vs {b}");
        }
    }
}
