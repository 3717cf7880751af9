//! Tiny Llama-architecture model folders generated deterministically from a
//! seed: real config.json, safetensors and tokenizer files for tests, benchmarks
//! and the Yi-shaped replica of the seed recipe.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Result;
use serde_json::json;

use crate::fs::files::write_json;
use crate::hf::config::Layout;
use crate::tensor::DType;

mod arch;
mod sentencepiece;
pub use arch::{fixture, write_fixture_pair, ArchModel, Architecture, FixturePair};
pub use sentencepiece::{PieceType, SpmTokenizer};

/// The shape and storage of a generated model.
#[derive(Debug, Clone)]
pub struct TinyLlama {
    /// `hidden_size`.
    pub hidden: usize,
    /// `num_hidden_layers`.
    pub layers: usize,
    /// `num_attention_heads`.
    pub heads: usize,
    /// `num_key_value_heads` (fewer than `heads` means GQA).
    pub kv_heads: usize,
    /// `intermediate_size`.
    pub intermediate: usize,
    /// `vocab_size`: embedding and lm_head rows.
    pub vocab: usize,
    /// Tokens in the tokenizer (≤ `vocab`; fewer means a padded vocabulary).
    pub tokenizer_vocab: usize,
    /// Share the embedding matrix with the output head.
    pub tie_embeddings: bool,
    /// Storage type of the weights.
    pub dtype: DType,
    /// Seed of the weight values.
    pub seed: u64,
    /// Split the weights into this many shards (with an index when > 1).
    pub shards: usize,
    /// `max_position_embeddings`.
    pub max_positions: usize,
    /// `rope_theta`.
    pub rope_theta: f64,
    /// `architectures[0]` and `model_type` pair.
    pub architecture: (&'static str, &'static str),
    /// Rotary scaling keys (`{"rope_type": "yarn", "factor": 4.0, ...}`),
    /// written as `rope_scaling` or inside `rope_parameters` by [`TinyLlama::config`].
    pub rope_scaling: Option<serde_json::Value>,
    /// Which transformers version's config.json layout to write.
    pub layout: Layout,
}

impl Default for TinyLlama {
    fn default() -> Self {
        TinyLlama {
            hidden: 64,
            layers: 2,
            heads: 4,
            kv_heads: 2,
            intermediate: 128,
            vocab: 320,
            tokenizer_vocab: 320,
            tie_embeddings: false,
            dtype: DType::BF16,
            seed: 0,
            shards: 1,
            max_positions: 2048,
            rope_theta: 10000.0,
            architecture: ("LlamaForCausalLM", "llama"),
            rope_scaling: None,
            layout: Layout::Transformers4,
        }
    }
}

/// SplitMix64: a tiny, well-mixed deterministic generator for fixture values.
#[derive(Debug, Clone)]
pub struct SplitMix(pub u64);

impl SplitMix {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Approximately standard normal (Irwin–Hall of 4 uniforms, rescaled).
    pub fn normal(&mut self) -> f32 {
        let s: f64 = (0..4).map(|_| self.uniform()).sum();
        ((s - 2.0) * 3f64.sqrt()) as f32
    }
}

impl TinyLlama {
    /// Tensor names and shapes in the order Hugging Face writes them.
    pub fn tensor_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let head_dim = self.hidden / self.heads;
        let kv = self.kv_heads * head_dim;
        let mut out = vec![(
            "model.embed_tokens.weight".to_owned(),
            vec![self.vocab, self.hidden],
        )];
        for l in 0..self.layers {
            let p = format!("model.layers.{l}");
            out.extend([
                (format!("{p}.input_layernorm.weight"), vec![self.hidden]),
                (
                    format!("{p}.self_attn.q_proj.weight"),
                    vec![self.hidden, self.hidden],
                ),
                (
                    format!("{p}.self_attn.k_proj.weight"),
                    vec![kv, self.hidden],
                ),
                (
                    format!("{p}.self_attn.v_proj.weight"),
                    vec![kv, self.hidden],
                ),
                (
                    format!("{p}.self_attn.o_proj.weight"),
                    vec![self.hidden, self.hidden],
                ),
                (
                    format!("{p}.post_attention_layernorm.weight"),
                    vec![self.hidden],
                ),
                (
                    format!("{p}.mlp.gate_proj.weight"),
                    vec![self.intermediate, self.hidden],
                ),
                (
                    format!("{p}.mlp.up_proj.weight"),
                    vec![self.intermediate, self.hidden],
                ),
                (
                    format!("{p}.mlp.down_proj.weight"),
                    vec![self.hidden, self.intermediate],
                ),
            ]);
        }
        out.push(("model.norm.weight".to_owned(), vec![self.hidden]));
        if !self.tie_embeddings {
            out.push(("lm_head.weight".to_owned(), vec![self.vocab, self.hidden]));
        }
        out
    }

    /// The values of every tensor: norms near 1, matrices small and random.
    pub fn tensor_values(&self) -> Vec<(String, Vec<usize>, Vec<f32>)> {
        let mut rng = SplitMix(self.seed);
        self.tensor_shapes()
            .into_iter()
            .map(|(name, shape)| {
                let n: usize = shape.iter().product();
                let values = if name.ends_with("norm.weight") {
                    (0..n).map(|_| 1.0 + 0.05 * rng.normal()).collect()
                } else {
                    let scale = 1.0 / (shape[shape.len() - 1] as f32).sqrt();
                    (0..n).map(|_| scale * rng.normal()).collect()
                };
                (name, shape, values)
            })
            .collect()
    }

    /// The `config.json` of this model, in the layout of [`TinyLlama::layout`]:
    /// transformers 4 (top-level `rope_theta` / `rope_scaling`, `torch_dtype`)
    /// or transformers 5 (`rope_parameters`, `dtype`, `head_dim`), as each
    /// version's `save_pretrained` writes it.
    pub fn config(&self) -> serde_json::Value {
        let mut config = self.config_v4();
        if self.layout == Layout::Transformers4 {
            if let Some(scaling) = &self.rope_scaling {
                config["rope_scaling"] = scaling.clone();
            }
            return config;
        }
        let mut rope = json!({"rope_theta": self.rope_theta, "rope_type": "default"});
        if let Some(serde_json::Value::Object(scaling)) = &self.rope_scaling {
            for (k, v) in scaling {
                let key = if k == "type" { "rope_type" } else { k.as_str() };
                rope[key] = v.clone();
            }
        }
        if let Some(obj) = config.as_object_mut() {
            obj.shift_remove("rope_theta");
            obj.shift_remove("torch_dtype");
            obj.insert("rope_parameters".into(), rope);
            obj.insert("dtype".into(), json!(self.dtype.torch_name()));
            obj.insert("head_dim".into(), json!(self.hidden / self.heads));
            obj.insert("transformers_version".into(), json!("5.24.0"));
        }
        config
    }

    fn config_v4(&self) -> serde_json::Value {
        json!({
            "architectures": [self.architecture.0],
            "model_type": self.architecture.1,
            "hidden_size": self.hidden,
            "intermediate_size": self.intermediate,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "vocab_size": self.vocab,
            "max_position_embeddings": self.max_positions,
            "rope_theta": self.rope_theta,
            "rms_norm_eps": 1e-5,
            "hidden_act": "silu",
            "tie_word_embeddings": self.tie_embeddings,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "pad_token_id": 0,
            "torch_dtype": self.dtype.torch_name(),
            "transformers_version": "4.44.0"
        })
    }

    /// Writes the model folder: config, generation config, weights and tokenizer.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let tensors = self.tensor_values();
        write_model_files(dir, &self.config(), &tensors, self.dtype, self.shards)?;
        write_json(
            &dir.join("generation_config.json"),
            &json!({"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}),
        )?;
        write_byte_level_tokenizer(dir, self.tokenizer_vocab)
    }
}

/// Writes `config.json` and the tensors as safetensors (sharded with an index
/// when `shards > 1`), in the given dtype.
pub fn write_model_files(
    dir: &Path,
    config: &serde_json::Value,
    tensors: &[(String, Vec<usize>, Vec<f32>)],
    dtype: DType,
    shards: usize,
) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    write_json(&dir.join("config.json"), config)?;
    let shards = shards.max(1);
    let per_shard = tensors.len().div_ceil(shards);
    let mut weight_map = BTreeMap::new();
    let mut total = 0usize;
    for (i, chunk) in tensors.chunks(per_shard).enumerate() {
        let file = if shards == 1 {
            "model.safetensors".to_owned()
        } else {
            format!("model-{:05}-of-{:05}.safetensors", i + 1, shards)
        };
        let encoded: Vec<(String, Vec<usize>, Vec<u8>)> = chunk
            .iter()
            .map(|(name, shape, values)| {
                let mut bytes = Vec::new();
                dtype.encode_into(values, &mut bytes);
                total += bytes.len();
                weight_map.insert(name.clone(), file.clone());
                (name.clone(), shape.clone(), bytes)
            })
            .collect();
        let views: Vec<(String, safetensors::tensor::TensorView)> = encoded
            .iter()
            .map(|(name, shape, bytes)| {
                let view = safetensors::tensor::TensorView::new(
                    dtype.to_safetensors(),
                    shape.clone(),
                    bytes,
                )
                .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
                Ok((name.clone(), view))
            })
            .collect::<Result<_>>()?;
        let metadata = std::collections::HashMap::from([("format".to_owned(), "pt".to_owned())]);
        safetensors::serialize_to_file(views, Some(metadata), &dir.join(&file))?;
    }
    if shards > 1 {
        write_json(
            &dir.join("model.safetensors.index.json"),
            &json!({"metadata": {"total_size": total}, "weight_map": weight_map}),
        )?;
    }
    Ok(())
}

/// The printable character GPT-2's byte-level alphabet uses for each byte.
pub fn byte_level_char(b: u8) -> char {
    let printable =
        (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
    if printable {
        return b as char;
    }
    let offset = (0u16..=255)
        .filter(|&x| {
            let x = x as u8;
            !((b'!'..=b'~').contains(&x)
                || (0xA1..=0xAC).contains(&x)
                || (0xAE..=0xFF).contains(&x))
        })
        .position(|x| x == b as u16)
        .unwrap_or(0);
    char::from_u32(256 + offset as u32).unwrap_or('?')
}

/// Appends the 256 byte symbols of GPT-2's byte-level alphabet to `tokens`,
/// then merges of common letter pairs until there are `vocab` tokens; returns
/// the merges in rank order.
pub fn extend_byte_level_vocab(tokens: &mut Vec<String>, vocab: usize) -> Vec<(String, String)> {
    tokens.extend((0..=255u8).map(|b| byte_level_char(b).to_string()));
    let mut merges: Vec<(String, String)> = Vec::new();
    let letters: Vec<String> = "etaoinshrdlucmfwypvbgk "
        .chars()
        .map(|c| byte_level_char(c as u8).to_string())
        .collect();
    'outer: for a in &letters {
        for b in &letters {
            if tokens.len() >= vocab {
                break 'outer;
            }
            tokens.push(format!("{a}{b}"));
            merges.push((a.clone(), b.clone()));
        }
    }
    merges
}

/// Writes a byte-level BPE tokenizer of `vocab` tokens: `<unk>`, `<s>`, `</s>`,
/// the 256 byte symbols, then merges of common letter pairs up to the size.
pub fn write_byte_level_tokenizer(dir: &Path, vocab: usize) -> Result<()> {
    let specials = ["<unk>", "<s>", "</s>"];
    let mut tokens: Vec<String> = specials.iter().map(|s| s.to_string()).collect();
    let merges = extend_byte_level_vocab(&mut tokens, vocab);
    let vocab_map: serde_json::Map<String, serde_json::Value> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), json!(i)))
        .collect();
    let added: Vec<serde_json::Value> = specials
        .iter()
        .enumerate()
        .map(|(i, s)| json!({"id": i, "content": s, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}))
        .collect();
    let merges: Vec<serde_json::Value> = merges.iter().map(|(a, b)| json!([a, b])).collect();
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": {"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab_map, "merges": merges}
    });
    write_json(&dir.join("tokenizer.json"), &tokenizer)?;
    write_json(
        &dir.join("tokenizer_config.json"),
        &json!({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": true,
                "add_eos_token": false, "model_max_length": 2048, "tokenizer_class": "PreTrainedTokenizerFast"}),
    )?;
    write_json(
        &dir.join("special_tokens_map.json"),
        &json!({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}),
    )
}

/// Writes a "fine-tune" of the model in `base`: the same tensors plus a seeded
/// random task vector of relative size `scale`, stored in `dtype`.
pub fn write_finetune(base: &TinyLlama, dir: &Path, seed: u64, scale: f32) -> Result<()> {
    let tensors = finetune_values(base, seed, scale);
    write_model_files(dir, &base.config(), &tensors, base.dtype, base.shards)?;
    write_byte_level_tokenizer(dir, base.tokenizer_vocab)
}

/// The seed recipe's eight Hub sources (recipe name, Hub id), base first.
pub const YI_SEED_SOURCES: [(&str, &str); 8] = [
    ("yi-llama", "chargoddard/Yi-34B-200K-Llama"),
    ("tess", "migtissera/Tess-34B-v1.4"),
    ("pallas", "Mihaiii/Pallas-0.4"),
    ("airoboros", "bhenrym14/airoboros-3_1-yi-34b-200k"),
    ("capybara", "NousResearch/Nous-Capybara-34B"),
    ("platyi", "kyujinpy/PlatYi-34B-200k-Q-FastChat"),
    ("aezakmi", "adamo1139/Yi-34B-200K-AEZAKMI-v2"),
    ("sus-chat", "SUSTech/SUS-Chat-34B"),
];

/// A model with Yi-34B-200K's layout (60 layers, GQA 7:1, Yi's config keys and
/// rope_theta, a SentencePiece tokenizer) at tiny widths.
pub fn yi_replica_shape() -> TinyLlama {
    TinyLlama {
        hidden: 56,
        layers: 60,
        heads: 7,
        kv_heads: 1,
        intermediate: 160,
        vocab: 384,
        tokenizer_vocab: 384,
        max_positions: 200_000,
        rope_theta: 5_000_000.0,
        ..Default::default()
    }
}

/// Writes the eight models of the seed recipe as Yi-shaped replicas under
/// `root/<recipe name>/`: the base, and seven fine-tunes of it (task vectors
/// of different seeds), each with the same SentencePiece tokenizer.
pub fn write_yi_replicas(root: &Path) -> Result<()> {
    let base = yi_replica_shape();
    let tokenizer = SpmTokenizer {
        vocab: base.tokenizer_vocab,
        extra: Vec::new(),
    };
    for (i, (name, _)) in YI_SEED_SOURCES.iter().enumerate() {
        let dir = root.join(name);
        let tensors = if i == 0 {
            base.tensor_values()
        } else {
            finetune_values(&base, 100 + i as u64, 0.05)
        };
        let mut config = base.config();
        config["rms_norm_eps"] = json!(1e-5);
        config["attention_bias"] = json!(false);
        config["pretraining_tp"] = json!(1);
        config["rope_scaling"] = serde_json::Value::Null;
        write_model_files(&dir, &config, &tensors, base.dtype, 2)?;
        write_json(
            &dir.join("generation_config.json"),
            &json!({"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}),
        )?;
        tokenizer.write(&dir)?;
    }
    Ok(())
}

/// The tensors of `base` plus a seeded random task vector of relative size `scale`.
fn finetune_values(base: &TinyLlama, seed: u64, scale: f32) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    perturb(base.tensor_values(), seed, scale)
}

/// `tensors` plus a seeded random task vector whose entries have `scale`
/// times each tensor's RMS as standard deviation: a "fine-tune" of them.
pub fn perturb(
    tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
    seed: u64,
    scale: f32,
) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let mut rng = SplitMix(seed ^ 0xF1E7_0000);
    tensors
        .into_iter()
        .map(|(name, shape, values)| {
            let std = (values.iter().map(|v| v * v).sum::<f32>() / values.len() as f32).sqrt();
            let tuned = values
                .iter()
                .map(|v| v + scale * std * rng.normal())
                .collect();
            (name, shape, tuned)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::ModelTensors;

    #[test]
    fn writes_loadable_sharded_model_and_tokenizer() {
        let dir = tempfile::tempdir().unwrap();
        let m = TinyLlama {
            shards: 2,
            ..Default::default()
        };
        m.write(dir.path()).unwrap();
        let t = ModelTensors::open(dir.path()).unwrap();
        assert_eq!(t.names().len(), m.tensor_shapes().len());
        let emb = t.read_f32("model.embed_tokens.weight").unwrap();
        assert_eq!(emb.len(), 320 * 64);
        let tok = tokenizers::Tokenizer::from_file(dir.path().join("tokenizer.json")).unwrap();
        assert_eq!(tok.get_vocab_size(true), 320);
        let enc = tok.encode("the cat sat", false).unwrap();
        assert_eq!(tok.decode(enc.get_ids(), true).unwrap(), "the cat sat");
    }
}
