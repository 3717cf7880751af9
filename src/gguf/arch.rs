//! The llama.cpp architectures yibuild converts to, and per architecture what
//! llama.cpp's `convert_hf_to_gguf.py` (llama.cpp as vendored in
//! llama-cpp-python 0.3.36, gguf-py 0.19.0) does with a Hugging Face model:
//! which `config.json` classes map to it, the GGUF name and shape of each
//! layer tensor, and the byte transforms (Q/K permutation for `llama`, norm
//! weight + 1 for Gemma).
//!
//! Anything else is refused with the list of what is supported, and with the
//! reason for the architectures people most often try (mixtures of experts,
//! vision towers).

use std::path::Path;

use anyhow::{bail, Result};

use crate::hf::config::DecoderConfig;

/// The llama.cpp architecture a model converts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// `llama` (Llama, Yi, Mistral): rotary in adjacent pairs, so Q/K rows are permuted.
    Llama,
    /// `qwen2`: NeoX rotary (no permutation), q/k/v biases.
    Qwen2,
    /// `qwen3`: as `qwen2` without biases, with per-head q/k RMS norms.
    Qwen3,
    /// `gemma2`: four norms per layer stored as `1 + weight`, soft-capping,
    /// alternating sliding and global attention.
    Gemma2,
    /// `gemma3`: as `gemma2` with q/k norms and a separate rotary base for
    /// sliding layers, without attention soft-capping.
    Gemma3,
    /// `phi3`: fused `attn_qkv` and gate+up `ffn_up`, LongRoPE factor tensors.
    Phi3,
}

/// The `architectures` classes yibuild converts, and their llama.cpp architecture.
pub const SUPPORTED: [(&str, Arch); 8] = [
    ("LlamaForCausalLM", Arch::Llama),
    ("MistralForCausalLM", Arch::Llama),
    ("YiForCausalLM", Arch::Llama),
    ("Qwen2ForCausalLM", Arch::Qwen2),
    ("Qwen3ForCausalLM", Arch::Qwen3),
    ("Gemma2ForCausalLM", Arch::Gemma2),
    ("Gemma3ForCausalLM", Arch::Gemma3),
    ("Phi3ForCausalLM", Arch::Phi3),
];

/// Classes refused with a reason beyond "not supported".
const REFUSED: [(&str, &str); 8] = [
    ("MixtralForCausalLM", "mixture-of-experts layers"),
    ("Qwen2MoeForCausalLM", "mixture-of-experts layers"),
    ("Qwen3MoeForCausalLM", "mixture-of-experts layers"),
    ("PhiMoEForCausalLM", "mixture-of-experts layers"),
    (
        "Gemma3ForConditionalGeneration",
        "a vision tower (its text-only export, Gemma3ForCausalLM, converts)",
    ),
    ("Mistral3ForConditionalGeneration", "a vision tower"),
    ("LlavaForConditionalGeneration", "a vision tower"),
    ("Qwen2VLForConditionalGeneration", "a vision tower"),
];

/// How a layer tensor's shape follows from the config: `(rows, columns)`
/// in Hugging Face order, columns 0 for a vector.
type ShapeRule = fn(&DecoderConfig) -> (usize, usize);

impl Arch {
    /// The architecture of the `architectures[0]` class `class` of the config
    /// at `path`, or an error naming it and listing what is supported.
    pub fn from_hf(class: &str, path: &Path) -> Result<Arch> {
        if let Some((_, arch)) = SUPPORTED.iter().find(|(c, _)| *c == class) {
            return Ok(*arch);
        }
        let supported: Vec<&str> = SUPPORTED.iter().map(|(c, _)| *c).collect();
        let why = REFUSED
            .iter()
            .find(|(c, _)| *c == class)
            .map_or(String::new(), |(_, why)| format!(" has {why}, which"));
        bail!(
            "{}: architecture `{class}`{why} cannot be converted to GGUF by yibuild \
             (supported: {})",
            path.display(),
            supported.join(", ")
        )
    }

    /// The `general.architecture` string and metadata key prefix.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
            Arch::Gemma2 => "gemma2",
            Arch::Gemma3 => "gemma3",
            Arch::Phi3 => "phi3",
        }
    }

    /// Whether attn_q/attn_k rows are permuted (llama.cpp's `llama` rotates
    /// adjacent pairs where transformers rotates halves).
    pub fn permutes_qk(self) -> bool {
        self == Arch::Llama
    }

    /// What the converter adds to every `*norm.weight` (Gemma's RMSNorm
    /// multiplies by `1 + weight`; llama.cpp by the weight).
    pub fn norm_shift(self) -> f32 {
        match self {
            Arch::Gemma2 | Arch::Gemma3 => 1.0,
            _ => 0.0,
        }
    }

    /// Whether the converter drops `lm_head.weight` (Gemma 2 always ties it).
    pub fn drops_lm_head(self) -> bool {
        self == Arch::Gemma2
    }

    /// The GGUF short name (after `blk.N.`) and shape rule of the layer
    /// tensor `part` (after `model.layers.N.`), or `None` when this
    /// architecture has no such tensor.
    pub fn layer_tensor(self, part: &str) -> Option<(&'static str, ShapeRule)> {
        let gemma = matches!(self, Arch::Gemma2 | Arch::Gemma3);
        let qk_norm = matches!(self, Arch::Qwen3 | Arch::Gemma3);
        let e: ShapeRule = |c| (c.hidden, 0);
        let hd: ShapeRule = |c| (c.head_dim, 0);
        Some(match part {
            "input_layernorm.weight" => ("attn_norm.weight", e),
            "post_attention_layernorm.weight" if gemma => ("post_attention_norm.weight", e),
            "post_attention_layernorm.weight" => ("ffn_norm.weight", e),
            "pre_feedforward_layernorm.weight" if gemma => ("ffn_norm.weight", e),
            "post_feedforward_layernorm.weight" if gemma => ("post_ffw_norm.weight", e),
            "self_attn.q_norm.weight" if qk_norm => ("attn_q_norm.weight", hd),
            "self_attn.k_norm.weight" if qk_norm => ("attn_k_norm.weight", hd),
            "self_attn.q_proj.weight" => ("attn_q.weight", |c| (c.q_dim(), c.hidden)),
            "self_attn.k_proj.weight" => ("attn_k.weight", |c| (c.kv_dim(), c.hidden)),
            "self_attn.v_proj.weight" => ("attn_v.weight", |c| (c.kv_dim(), c.hidden)),
            "self_attn.o_proj.weight" => ("attn_output.weight", |c| (c.hidden, c.q_dim())),
            "self_attn.q_proj.bias" if self == Arch::Qwen2 => ("attn_q.bias", |c| (c.q_dim(), 0)),
            "self_attn.k_proj.bias" if self == Arch::Qwen2 => ("attn_k.bias", |c| (c.kv_dim(), 0)),
            "self_attn.v_proj.bias" if self == Arch::Qwen2 => ("attn_v.bias", |c| (c.kv_dim(), 0)),
            "self_attn.qkv_proj.weight" if self == Arch::Phi3 => ("attn_qkv.weight", |c| {
                (c.q_dim() + 2 * c.kv_dim(), c.hidden)
            }),
            "mlp.gate_up_proj.weight" if self == Arch::Phi3 => {
                ("ffn_up.weight", |c| (2 * c.intermediate, c.hidden))
            }
            "mlp.gate_proj.weight" => ("ffn_gate.weight", |c| (c.intermediate, c.hidden)),
            "mlp.up_proj.weight" => ("ffn_up.weight", |c| (c.intermediate, c.hidden)),
            "mlp.down_proj.weight" => ("ffn_down.weight", |c| (c.hidden, c.intermediate)),
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_name_the_class_the_reason_and_the_supported_list() {
        let path = Path::new("m/config.json");
        let err = Arch::from_hf("MixtralForCausalLM", path)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`MixtralForCausalLM` has mixture-of-experts layers"),
            "{err}"
        );
        assert!(
            err.contains("supported: LlamaForCausalLM, MistralForCausalLM"),
            "{err}"
        );
        assert!(err.contains("Phi3ForCausalLM"), "{err}");
        let err = Arch::from_hf("Gemma3ForConditionalGeneration", path)
            .unwrap_err()
            .to_string();
        assert!(err.contains("vision tower"), "{err}");
        let err = Arch::from_hf("GPT2LMHeadModel", path)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("m/config.json: architecture `GPT2LMHeadModel` cannot"),
            "{err}"
        );
        assert_eq!(
            Arch::from_hf("MistralForCausalLM", path).unwrap(),
            Arch::Llama
        );
    }
}
