//! Tiny models of each decoder architecture yibuild merges: config.json in
//! the transformers 5 layout (`rope_parameters`, `dtype`, `head_dim`) with the
//! architecture's own keys, and the tensor names and shapes transformers
//! writes for it (Qwen2's biases, Qwen3's and Gemma 3's q/k norms, Gemma's
//! four norms per layer, Phi-3's fused projections, Mixtral's experts), in
//! f32 so that tests can compare merged values exactly.

use std::path::Path;

use serde_json::json;
use yibuild::fixtures::{write_byte_level_tokenizer, write_model_files, SplitMix};
use yibuild::tensor::DType;

/// An architecture of the test models.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
    Gemma2,
    Gemma3,
    Phi3,
    Mixtral,
}

/// Every architecture, for tests that run over all of them.
pub const ALL: [Arch; 8] = [
    Arch::Llama,
    Arch::Mistral,
    Arch::Qwen2,
    Arch::Qwen3,
    Arch::Gemma2,
    Arch::Gemma3,
    Arch::Phi3,
    Arch::Mixtral,
];

pub const HIDDEN: usize = 32;
pub const HEADS: usize = 4;
pub const KV_HEADS: usize = 2;
pub const HEAD_DIM: usize = 8;
pub const INTERMEDIATE: usize = 48;
pub const EXPERTS: usize = 2;

/// One tiny model: its architecture, depth, vocabulary and values.
#[derive(Debug, Clone)]
pub struct ArchModel {
    pub arch: Arch,
    pub layers: usize,
    /// Embedding rows (more than `tokenizer_vocab` for a padded vocabulary).
    pub vocab: usize,
    pub tokenizer_vocab: usize,
    /// Embeddings tied to the output head (no `lm_head.weight`).
    pub tied: bool,
    pub seed: u64,
}

impl ArchModel {
    /// The architecture's usual shape: Qwen2 small sizes and Gemma tie their
    /// embeddings; Qwen2 pads its vocabulary beyond the tokenizer.
    pub fn new(arch: Arch) -> ArchModel {
        ArchModel {
            arch,
            layers: 3,
            vocab: if arch == Arch::Qwen2 { 288 } else { 264 },
            tokenizer_vocab: 264,
            tied: matches!(arch, Arch::Qwen2 | Arch::Gemma2 | Arch::Gemma3),
            seed: 0,
        }
    }

    /// `architectures[0]` and `model_type`.
    pub fn names(&self) -> (&'static str, &'static str) {
        match self.arch {
            Arch::Llama => ("LlamaForCausalLM", "llama"),
            Arch::Mistral => ("MistralForCausalLM", "mistral"),
            Arch::Qwen2 => ("Qwen2ForCausalLM", "qwen2"),
            Arch::Qwen3 => ("Qwen3ForCausalLM", "qwen3"),
            Arch::Gemma2 => ("Gemma2ForCausalLM", "gemma2"),
            Arch::Gemma3 => ("Gemma3ForCausalLM", "gemma3_text"),
            Arch::Phi3 => ("Phi3ForCausalLM", "phi3"),
            Arch::Mixtral => ("MixtralForCausalLM", "mixtral"),
        }
    }

    /// The tensors of one layer, after `model.layers.N.`, with their shapes.
    pub fn layer_tensors(&self) -> Vec<(String, Vec<usize>)> {
        let q = HEADS * HEAD_DIM;
        let kv = KV_HEADS * HEAD_DIM;
        let mut out: Vec<(String, Vec<usize>)> =
            vec![("input_layernorm.weight".into(), vec![HIDDEN])];
        let mut attn =
            |name: &str, shape: Vec<usize>| out.push((format!("self_attn.{name}"), shape));
        if self.arch == Arch::Phi3 {
            attn("qkv_proj.weight", vec![q + 2 * kv, HIDDEN]);
            attn("o_proj.weight", vec![HIDDEN, q]);
        } else {
            attn("q_proj.weight", vec![q, HIDDEN]);
            if self.arch == Arch::Qwen2 {
                attn("q_proj.bias", vec![q]);
            }
            if matches!(self.arch, Arch::Qwen3 | Arch::Gemma3) {
                attn("q_norm.weight", vec![HEAD_DIM]);
            }
            attn("k_proj.weight", vec![kv, HIDDEN]);
            if self.arch == Arch::Qwen2 {
                attn("k_proj.bias", vec![kv]);
            }
            if matches!(self.arch, Arch::Qwen3 | Arch::Gemma3) {
                attn("k_norm.weight", vec![HEAD_DIM]);
            }
            attn("v_proj.weight", vec![kv, HIDDEN]);
            if self.arch == Arch::Qwen2 {
                attn("v_proj.bias", vec![kv]);
            }
            attn("o_proj.weight", vec![HIDDEN, q]);
        }
        out.push(("post_attention_layernorm.weight".into(), vec![HIDDEN]));
        let gemma = matches!(self.arch, Arch::Gemma2 | Arch::Gemma3);
        if gemma {
            out.push(("pre_feedforward_layernorm.weight".into(), vec![HIDDEN]));
        }
        match self.arch {
            Arch::Phi3 => {
                out.push((
                    "mlp.gate_up_proj.weight".into(),
                    vec![2 * INTERMEDIATE, HIDDEN],
                ));
                out.push(("mlp.down_proj.weight".into(), vec![HIDDEN, INTERMEDIATE]));
            }
            Arch::Mixtral => {
                out.push(("block_sparse_moe.gate.weight".into(), vec![EXPERTS, HIDDEN]));
                for e in 0..EXPERTS {
                    let p = format!("block_sparse_moe.experts.{e}");
                    out.push((format!("{p}.w1.weight"), vec![INTERMEDIATE, HIDDEN]));
                    out.push((format!("{p}.w2.weight"), vec![HIDDEN, INTERMEDIATE]));
                    out.push((format!("{p}.w3.weight"), vec![INTERMEDIATE, HIDDEN]));
                }
            }
            _ => {
                out.push(("mlp.gate_proj.weight".into(), vec![INTERMEDIATE, HIDDEN]));
                out.push(("mlp.up_proj.weight".into(), vec![INTERMEDIATE, HIDDEN]));
                out.push(("mlp.down_proj.weight".into(), vec![HIDDEN, INTERMEDIATE]));
            }
        }
        if gemma {
            out.push(("post_feedforward_layernorm.weight".into(), vec![HIDDEN]));
        }
        out
    }

    /// Every tensor's name and shape, in the order transformers writes them.
    pub fn tensor_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let mut out = vec![(
            "model.embed_tokens.weight".to_owned(),
            vec![self.vocab, HIDDEN],
        )];
        for l in 0..self.layers {
            for (name, shape) in self.layer_tensors() {
                out.push((format!("model.layers.{l}.{name}"), shape));
            }
        }
        out.push(("model.norm.weight".to_owned(), vec![HIDDEN]));
        if !self.tied {
            out.push(("lm_head.weight".to_owned(), vec![self.vocab, HIDDEN]));
        }
        out
    }

    /// config.json in the transformers 5 layout, with the architecture's keys.
    pub fn config(&self) -> serde_json::Value {
        let (arch, model_type) = self.names();
        let mut c = json!({
            "architectures": [arch],
            "model_type": model_type,
            "hidden_size": HIDDEN,
            "intermediate_size": INTERMEDIATE,
            "num_hidden_layers": self.layers,
            "num_attention_heads": HEADS,
            "num_key_value_heads": KV_HEADS,
            "head_dim": HEAD_DIM,
            "vocab_size": self.vocab,
            "max_position_embeddings": 2048,
            "rms_norm_eps": 1e-6,
            "hidden_act": "silu",
            "tie_word_embeddings": self.tied,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
            "dtype": "float32",
            "transformers_version": "5.0.0"
        });
        let layer_types: Vec<&str> = (0..self.layers)
            .map(|l| {
                if l % 2 == 0 {
                    "sliding_attention"
                } else {
                    "full_attention"
                }
            })
            .collect();
        match self.arch {
            Arch::Mistral => c["sliding_window"] = json!(4096),
            Arch::Qwen2 => {
                c["use_sliding_window"] = json!(false);
                c["sliding_window"] = json!(null);
                c["max_window_layers"] = json!(self.layers);
                c["rope_parameters"]["rope_theta"] = json!(1_000_000.0);
            }
            Arch::Qwen3 => c["attention_bias"] = json!(false),
            Arch::Gemma2 | Arch::Gemma3 => {
                c["hidden_activation"] = json!("gelu_pytorch_tanh");
                c["query_pre_attn_scalar"] = json!(HEAD_DIM);
                c["sliding_window"] = json!(512);
                c["final_logit_softcapping"] = if self.arch == Arch::Gemma2 {
                    json!(30.0)
                } else {
                    json!(null)
                };
                c["attn_logit_softcapping"] = if self.arch == Arch::Gemma2 {
                    json!(50.0)
                } else {
                    json!(null)
                };
                c["layer_types"] = json!(layer_types);
            }
            Arch::Phi3 => {
                let half = HEAD_DIM / 2;
                c["max_position_embeddings"] = json!(131072);
                c["original_max_position_embeddings"] = json!(4096);
                c["rope_parameters"] = json!({
                    "rope_type": "longrope",
                    "rope_theta": 10000.0,
                    "short_factor": vec![1.0; half],
                    "long_factor": (0..half).map(|i| 1.0 + i as f64).collect::<Vec<_>>(),
                    "original_max_position_embeddings": 4096
                });
            }
            Arch::Mixtral => {
                c["num_local_experts"] = json!(EXPERTS);
                c["num_experts_per_tok"] = json!(2);
            }
            Arch::Llama => {}
        }
        c
    }

    /// Seeded values: norms near their neutral value (1 for Llama-style
    /// norms, 0 for Gemma's `1 + w` norms), matrices and biases small.
    pub fn tensor_values(&self) -> Vec<(String, Vec<usize>, Vec<f32>)> {
        let mut rng = SplitMix(self.seed);
        let gemma = matches!(self.arch, Arch::Gemma2 | Arch::Gemma3);
        self.tensor_shapes()
            .into_iter()
            .map(|(name, shape)| {
                let n: usize = shape.iter().product();
                let values = if name.ends_with("norm.weight") {
                    let centre = if gemma { 0.0 } else { 1.0 };
                    (0..n).map(|_| centre + 0.05 * rng.normal()).collect()
                } else {
                    let scale = 1.0 / (shape[shape.len() - 1] as f32).sqrt();
                    (0..n).map(|_| scale * rng.normal()).collect()
                };
                (name, shape, values)
            })
            .collect()
    }

    /// Writes the model folder (config, f32 weights, tokenizer).
    pub fn write(&self, dir: &Path) {
        write_model_files(dir, &self.config(), &self.tensor_values(), DType::F32, 1).unwrap();
        write_byte_level_tokenizer(dir, self.tokenizer_vocab).unwrap();
    }

    /// The same model with other values (a "fine-tune" for merging).
    pub fn with_seed(&self, seed: u64) -> ArchModel {
        ArchModel {
            seed,
            ..self.clone()
        }
    }
}
