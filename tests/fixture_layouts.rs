//! The architecture fixtures against a description of the files transformers
//! 5.25 writes for each architecture (`save_pretrained` of the configuration
//! class at the fixtures' sizes, and the tensor names of its modeling code):
//! every config.json key and its JSON type, the keys that must not be there,
//! the tensors of each layer with their shapes, and the tokenizer files.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value as Json;
use yibuild::fixtures::{fixture, write_fixture_pair, Architecture};
use yibuild::tensor::ModelTensors;

/// config.json keys every architecture writes, with their JSON types.
const COMMON_KEYS: &str = "architectures:array attention_dropout:float bos_token_id:int \
    dtype:string eos_token_id:int hidden_size:int initializer_range:float intermediate_size:int \
    max_position_embeddings:int model_type:string num_attention_heads:int num_hidden_layers:int \
    num_key_value_heads:int rms_norm_eps:float rope_parameters:object tie_word_embeddings:bool \
    transformers_version:string use_cache:bool vocab_size:int";

/// Keys of transformers 4's layout that transformers 5 no longer writes.
const V4_KEYS: [&str; 4] = [
    "torch_dtype",
    "rope_theta",
    "rope_scaling",
    "sliding_window_pattern",
];

/// One architecture's layout.
struct Layout {
    arch: Architecture,
    /// config.json keys beyond [`COMMON_KEYS`], with their types.
    keys: &'static str,
    /// `rope_parameters` keys and types (`full_attention.rope_theta` for nested ones).
    rope: &'static str,
    /// Tensors of layer N (`model.layers.N.` prefix left out), with shapes
    /// in terms of `e` (hidden), `f` (intermediate), `q` (heads × head_dim),
    /// `k` (key/value heads × head_dim), `d` (head_dim).
    layer: &'static str,
    /// Whether `lm_head.weight` is written.
    lm_head: bool,
    /// Tokenizer files present; `tokenizer.model` absent when not listed.
    tokenizer_files: &'static [&'static str],
    /// The pre-tokenizer's split regex family (`llama3`, `qwen2`), or none (SentencePiece).
    bpe_split: Option<&'static str>,
}

const DEFAULT_ROPE: &str = "rope_theta:float rope_type:string";
const LLAMA_LAYER: &str = "input_layernorm.weight:e self_attn.q_proj.weight:q,e \
    self_attn.k_proj.weight:k,e self_attn.v_proj.weight:k,e self_attn.o_proj.weight:e,q \
    post_attention_layernorm.weight:e mlp.gate_proj.weight:f,e mlp.up_proj.weight:f,e \
    mlp.down_proj.weight:e,f";
const SPM_FILES: &[&str] = &[
    "tokenizer.model",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
];
const BPE_FILES: &[&str] = &["tokenizer.json", "tokenizer_config.json"];

fn layouts() -> Vec<Layout> {
    vec![
        Layout {
            arch: Architecture::Llama,
            keys: "attention_bias:bool head_dim:int hidden_act:string mlp_bias:bool \
                   pad_token_id:null pretraining_tp:int",
            rope: DEFAULT_ROPE,
            layer: LLAMA_LAYER,
            lm_head: true,
            tokenizer_files: BPE_FILES,
            bpe_split: Some("llama3"),
        },
        Layout {
            arch: Architecture::Mistral,
            keys: "head_dim:int hidden_act:string pad_token_id:null sliding_window:null",
            rope: DEFAULT_ROPE,
            layer: LLAMA_LAYER,
            lm_head: true,
            tokenizer_files: SPM_FILES,
            bpe_split: None,
        },
        Layout {
            arch: Architecture::Qwen2,
            keys: "hidden_act:string layer_types:array max_window_layers:int pad_token_id:null \
                   sliding_window:null use_sliding_window:bool",
            rope: DEFAULT_ROPE,
            layer: "input_layernorm.weight:e self_attn.q_proj.weight:q,e \
                    self_attn.k_proj.weight:k,e self_attn.v_proj.weight:k,e \
                    self_attn.q_proj.bias:q self_attn.k_proj.bias:k self_attn.v_proj.bias:k \
                    self_attn.o_proj.weight:e,q post_attention_layernorm.weight:e \
                    mlp.gate_proj.weight:f,e mlp.up_proj.weight:f,e mlp.down_proj.weight:e,f",
            lm_head: false,
            tokenizer_files: BPE_FILES,
            bpe_split: Some("qwen2"),
        },
        Layout {
            arch: Architecture::Qwen3,
            keys: "attention_bias:bool head_dim:int hidden_act:string layer_types:array \
                   max_window_layers:int pad_token_id:null sliding_window:null \
                   use_sliding_window:bool",
            rope: DEFAULT_ROPE,
            layer: "input_layernorm.weight:e self_attn.q_proj.weight:q,e \
                    self_attn.k_proj.weight:k,e self_attn.v_proj.weight:k,e \
                    self_attn.q_norm.weight:d self_attn.k_norm.weight:d \
                    self_attn.o_proj.weight:e,q post_attention_layernorm.weight:e \
                    mlp.gate_proj.weight:f,e mlp.up_proj.weight:f,e mlp.down_proj.weight:e,f",
            lm_head: false,
            tokenizer_files: BPE_FILES,
            bpe_split: Some("qwen2"),
        },
        Layout {
            arch: Architecture::Gemma2,
            keys: "attention_bias:bool attn_logit_softcapping:float final_logit_softcapping:float \
                   head_dim:int hidden_activation:string layer_types:array pad_token_id:int \
                   query_pre_attn_scalar:int sliding_window:int use_bidirectional_attention:null",
            rope: DEFAULT_ROPE,
            layer: "input_layernorm.weight:e self_attn.q_proj.weight:q,e \
                    self_attn.k_proj.weight:k,e self_attn.v_proj.weight:k,e \
                    self_attn.o_proj.weight:e,q post_attention_layernorm.weight:e \
                    pre_feedforward_layernorm.weight:e post_feedforward_layernorm.weight:e \
                    mlp.gate_proj.weight:f,e mlp.up_proj.weight:f,e mlp.down_proj.weight:e,f",
            lm_head: false,
            tokenizer_files: SPM_FILES,
            bpe_split: None,
        },
        Layout {
            arch: Architecture::Gemma3,
            keys: "_sliding_window_pattern:int attention_bias:bool attn_logit_softcapping:null \
                   final_logit_softcapping:null head_dim:int hidden_activation:string \
                   layer_types:array pad_token_id:int query_pre_attn_scalar:int \
                   sliding_window:int use_bidirectional_attention:bool",
            rope: "full_attention.rope_theta:float full_attention.rope_type:string \
                   sliding_attention.rope_theta:float sliding_attention.rope_type:string",
            layer: "input_layernorm.weight:e self_attn.q_proj.weight:q,e \
                    self_attn.k_proj.weight:k,e self_attn.v_proj.weight:k,e \
                    self_attn.q_norm.weight:d self_attn.k_norm.weight:d \
                    self_attn.o_proj.weight:e,q post_attention_layernorm.weight:e \
                    pre_feedforward_layernorm.weight:e post_feedforward_layernorm.weight:e \
                    mlp.gate_proj.weight:f,e mlp.up_proj.weight:f,e mlp.down_proj.weight:e,f",
            lm_head: false,
            tokenizer_files: SPM_FILES,
            bpe_split: None,
        },
        Layout {
            arch: Architecture::Phi3,
            keys: "embd_pdrop:float hidden_act:string original_max_position_embeddings:int \
                   pad_token_id:int partial_rotary_factor:float resid_pdrop:float \
                   sliding_window:null",
            rope: "long_factor:array original_max_position_embeddings:int \
                   partial_rotary_factor:float rope_theta:float rope_type:string \
                   short_factor:array",
            layer: "input_layernorm.weight:e self_attn.qkv_proj.weight:q+2k,e \
                    self_attn.o_proj.weight:e,q post_attention_layernorm.weight:e \
                    mlp.gate_up_proj.weight:2f,e mlp.down_proj.weight:e,f",
            lm_head: true,
            tokenizer_files: SPM_FILES,
            bpe_split: None,
        },
    ]
}

fn json_type(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "bool",
        Json::Number(n) if n.is_f64() => "float",
        Json::Number(_) => "int",
        Json::String(_) => "string",
        Json::Array(_) => "array",
        Json::Object(_) => "object",
    }
}

fn typed_keys(spec: &str) -> BTreeMap<String, String> {
    spec.split_whitespace()
        .map(|kt| {
            let (k, t) = kt.split_once(':').unwrap();
            (k.to_owned(), t.to_owned())
        })
        .collect()
}

/// The keys of `obj` (nested objects flattened as `outer.inner`) with their types.
fn flat_types(obj: &serde_json::Map<String, Json>, nested: bool) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (k, v) in obj {
        match v {
            Json::Object(inner) if nested => {
                for (ik, it) in flat_types(inner, false) {
                    out.insert(format!("{k}.{ik}"), it);
                }
            }
            _ => {
                out.insert(k.clone(), json_type(v).to_owned());
            }
        }
    }
    out
}

fn read(path: &Path) -> Json {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn configs_have_exactly_the_transformers_5_keys_and_types() {
    for layout in layouts() {
        let model = fixture(layout.arch, 3);
        let config = model.config();
        let obj = config.as_object().unwrap();
        let mut expected = typed_keys(COMMON_KEYS);
        expected.extend(typed_keys(layout.keys));
        let actual = flat_types(obj, false);
        assert_eq!(actual, expected, "{}: config.json keys", layout.arch.name());
        for key in V4_KEYS {
            assert!(!obj.contains_key(key), "{}: `{key}`", layout.arch.name());
        }
        let keys: Vec<&String> = obj.keys().collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted, "{}: keys sorted", layout.arch.name());
        let rope = flat_types(config["rope_parameters"].as_object().unwrap(), true);
        assert_eq!(
            rope,
            typed_keys(layout.rope),
            "{}: rope",
            layout.arch.name()
        );
        assert_eq!(config["architectures"][0], layout.arch.hf_class());
        assert_eq!(config["dtype"], "bfloat16");
        assert_eq!(config["transformers_version"], "5.25.0");
        assert_eq!(config["tie_word_embeddings"], !layout.lm_head);
        if let Some(types) = config.get("layer_types") {
            assert_eq!(types.as_array().unwrap().len(), model.layers);
        }
    }
}

#[test]
fn architecture_specific_values_are_as_released_models_write_them() {
    let gemma2 = fixture(Architecture::Gemma2, 0).config();
    assert_eq!(gemma2["layer_types"][0], "sliding_attention");
    assert_eq!(gemma2["layer_types"][1], "full_attention");
    assert_eq!(gemma2["attn_logit_softcapping"], 50.0);
    assert_eq!(gemma2["final_logit_softcapping"], 30.0);
    let gemma3 = fixture(Architecture::Gemma3, 0).config();
    assert_eq!(gemma3["model_type"], "gemma3_text");
    assert_eq!(
        gemma3["rope_parameters"]["sliding_attention"]["rope_theta"],
        10000.0
    );
    assert_eq!(
        gemma3["rope_parameters"]["full_attention"]["rope_theta"],
        1000000.0
    );
    let phi3 = fixture(Architecture::Phi3, 0);
    let c = phi3.config();
    let rotary = (c["hidden_size"].as_f64().unwrap() / c["num_attention_heads"].as_f64().unwrap()
        * c["partial_rotary_factor"].as_f64().unwrap()) as usize;
    for key in ["long_factor", "short_factor"] {
        let factors = c["rope_parameters"][key].as_array().unwrap();
        assert_eq!(
            factors.len(),
            rotary / 2,
            "{key}: one factor per rotated pair"
        );
        assert!(factors.iter().all(|f| f.is_f64()));
    }
    assert_eq!(
        c["rope_parameters"]["original_max_position_embeddings"],
        c["original_max_position_embeddings"]
    );
    let qwen2 = fixture(Architecture::Qwen2, 0);
    assert!(
        qwen2.vocab() > qwen2.tokenizer_len(),
        "Qwen's embedding is padded past its tokenizer"
    );
    assert_eq!(qwen2.vocab() % 128, 0);
}

fn shape_of(spec: &str, dims: &BTreeMap<&str, usize>) -> Vec<usize> {
    spec.split(',')
        .map(|term| {
            term.split('+')
                .map(|t| {
                    let (n, sym) = match t.strip_prefix(|c: char| c.is_ascii_digit()) {
                        Some(rest) => (t[..1].parse::<usize>().unwrap(), rest),
                        None => (1, t),
                    };
                    n * dims[sym]
                })
                .sum()
        })
        .collect()
}

#[test]
fn written_folders_hold_the_described_tensors_and_tokenizer_files() {
    let root = tempfile::tempdir().unwrap();
    for layout in layouts() {
        let pair = write_fixture_pair(layout.arch, 11, root.path()).unwrap();
        let model = fixture(layout.arch, 11);
        let name = layout.arch.name();
        let config = read(&pair.base.join("config.json"));
        assert_eq!(config, model.config(), "{name}: config.json as described");
        let hd = config["head_dim"]
            .as_u64()
            .map_or(model.hidden / model.heads, |d| d as usize);
        let dims = BTreeMap::from([
            ("e", model.hidden),
            ("f", model.intermediate),
            ("q", model.heads * hd),
            ("k", model.kv_heads * hd),
            ("d", hd),
        ]);
        let mut expected = BTreeMap::new();
        let vocab = config["vocab_size"].as_u64().unwrap() as usize;
        expected.insert(
            "model.embed_tokens.weight".to_owned(),
            vec![vocab, model.hidden],
        );
        expected.insert("model.norm.weight".to_owned(), vec![model.hidden]);
        if layout.lm_head {
            expected.insert("lm_head.weight".to_owned(), vec![vocab, model.hidden]);
        }
        for l in 0..model.layers {
            for entry in layout.layer.split_whitespace() {
                let (tensor, shape) = entry.split_once(':').unwrap();
                expected.insert(format!("model.layers.{l}.{tensor}"), shape_of(shape, &dims));
            }
        }
        for dir in [&pair.base, &pair.finetune] {
            let tensors = ModelTensors::open(dir).unwrap();
            let actual: BTreeMap<String, Vec<usize>> = tensors
                .names()
                .iter()
                .map(|n| (n.clone(), tensors.require(n).unwrap().shape.clone()))
                .collect();
            assert_eq!(actual, expected, "{name}: tensors of {}", dir.display());
            for file in layout.tokenizer_files {
                assert!(dir.join(file).is_file(), "{name}: {file}");
            }
            if !layout.tokenizer_files.contains(&"tokenizer.model") {
                assert!(!dir.join("tokenizer.model").exists(), "{name}");
            }
            let gen = read(&dir.join("generation_config.json"));
            assert_eq!(gen["eos_token_id"], config["eos_token_id"], "{name}");
            assert_eq!(gen["transformers_version"], "5.25.0");
            let tok_config = read(&dir.join("tokenizer_config.json"));
            assert!(
                tok_config["chat_template"]
                    .as_str()
                    .unwrap()
                    .contains("messages"),
                "{name}: chat template"
            );
        }
        // The fine-tune differs from the base in every tensor, by a little.
        let (a, b) = (
            ModelTensors::open(&pair.base).unwrap(),
            ModelTensors::open(&pair.finetune).unwrap(),
        );
        for n in a.names() {
            let (x, y) = (a.read_f32(n).unwrap(), b.read_f32(n).unwrap());
            assert_ne!(x, y, "{name}: `{n}` changed by the fine-tune");
        }
        // Tokenizer: the vocabulary fits the embedding, and the specials named
        // by tokenizer_config.json are the ids config.json names.
        let tok = tokenizers::Tokenizer::from_file(pair.base.join("tokenizer.json")).unwrap();
        assert_eq!(tok.get_vocab_size(true), model.tokenizer_len(), "{name}");
        assert!(model.tokenizer_len() <= vocab);
        let tok_config = read(&pair.base.join("tokenizer_config.json"));
        let eos = tok_config["eos_token"].as_str().unwrap();
        assert_eq!(
            tok.token_to_id(eos).map(u64::from),
            config["eos_token_id"].as_u64(),
            "{name}: eos"
        );
        let pre = read(&pair.base.join("tokenizer.json"))["pre_tokenizer"].to_string();
        match layout.bpe_split {
            Some("llama3") => assert!(pre.contains(r"\\p{N}{1,3}"), "{name}: {pre}"),
            Some(_) => assert!(pre.contains(r"\\p{N}|") && !pre.contains("{1,3}"), "{name}"),
            None => assert_eq!(pre, "null", "{name}: SentencePiece has no pre-tokenizer"),
        }
    }
}

#[test]
fn fixtures_are_deterministic_per_seed_and_f32_is_available() {
    let a = fixture(Architecture::Qwen3, 5).tensor_values();
    let b = fixture(Architecture::Qwen3, 5).tensor_values();
    let c = fixture(Architecture::Qwen3, 6).tensor_values();
    assert_eq!(a, b);
    assert_ne!(a[0].2, c[0].2);
    let dir = tempfile::tempdir().unwrap();
    let mut f32_model = fixture(Architecture::Gemma2, 5);
    f32_model.dtype = yibuild::tensor::DType::F32;
    f32_model.write(dir.path()).unwrap();
    assert_eq!(read(&dir.path().join("config.json"))["dtype"], "float32");
    let t = ModelTensors::open(dir.path()).unwrap();
    let norm = t.read_f32("model.layers.0.input_layernorm.weight").unwrap();
    assert_eq!(
        norm,
        a_values(&f32_model, "model.layers.0.input_layernorm.weight")
    );
    assert!(
        norm.iter().all(|w| w.abs() < 0.5),
        "Gemma norms are stored as offsets from 1"
    );
}

fn a_values(model: &yibuild::fixtures::ArchModel, name: &str) -> Vec<f32> {
    model
        .tensor_values()
        .into_iter()
        .find(|(n, _, _)| n == name)
        .unwrap()
        .2
}
