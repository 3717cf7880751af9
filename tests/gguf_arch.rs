//! GGUF conversion of every architecture's fixture, checked against what
//! llama.cpp's `convert_hf_to_gguf.py` (llama.cpp vendored in
//! llama-cpp-python 0.3.36) writes for it: the `<arch>.*` keys in order with
//! their values, tokenizer model and flags, tensor names, order, shapes and
//! types, and the byte transforms (Q/K permutation, Gemma's norm + 1, Phi-3's
//! fused tensors and LongRoPE factor tensors).

use std::path::{Path, PathBuf};

use yibuild::fixtures::{fixture, ArchModel, Architecture};
use yibuild::gguf::file::{GgufFile, Value};
use yibuild::gguf::mixture::Preset;
use yibuild::gguf::pipeline::Conversion;
use yibuild::gguf::GgmlType;
use yibuild::tensor::ModelTensors;

fn convert(dir: &Path, preset: Preset) -> (Conversion, GgufFile, PathBuf) {
    let conv = Conversion::open(dir, "fixture").unwrap();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    let path = dir.with_extension(format!("{preset:?}.gguf"));
    conv.write(&path, preset, None, &pool, &|_| {}).unwrap();
    let file = GgufFile::open(&path).unwrap();
    (conv, file, path)
}

fn write(model: &ArchModel, root: &Path) -> PathBuf {
    let dir = root.join(model.arch.name());
    model.write(&dir).unwrap();
    dir
}

fn floats(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// The F32 values of tensor `name` of `file`.
fn tensor(file: &GgufFile, name: &str) -> Vec<f32> {
    let t = file
        .tensor(name)
        .unwrap_or_else(|| panic!("no tensor `{name}`"));
    assert_eq!(t.desc.ty, GgmlType::F32, "{name}");
    floats(file.tensor_bytes(t))
}

/// `<arch>.*` keys in file order with values rendered as text.
fn arch_keys(file: &GgufFile, arch: &str) -> Vec<(String, String)> {
    file.metadata
        .iter()
        .filter(|(k, _)| k.starts_with(&format!("{arch}.")))
        .map(|(k, v)| {
            let text = match v {
                Value::U32(n) => n.to_string(),
                Value::F32(x) => format!("{x}"),
                Value::String(s) => s.clone(),
                other => format!("{other:?}"),
            };
            (k[arch.len() + 1..].to_owned(), text)
        })
        .collect()
}

fn keys(spec: &str) -> Vec<(String, String)> {
    spec.split_whitespace()
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap();
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

/// What the converter writes per architecture (fixture sizes: hidden 64,
/// 2 layers, 4 heads, 2 kv heads, ff 128, context 4096).
fn expected_metadata(arch: Architecture) -> (&'static str, &'static str) {
    match arch {
        Architecture::Llama => (
            "llama",
            "context_length=4096 embedding_length=64 block_count=2 feed_forward_length=128 \
             attention.head_count=4 attention.head_count_kv=2 rope.freq_base=500000 \
             attention.layer_norm_rms_epsilon=0.000001 rope.dimension_count=16 vocab_size=325 \
             attention.key_length=16 attention.value_length=16",
        ),
        Architecture::Mistral => (
            "llama",
            "context_length=4096 embedding_length=64 block_count=2 feed_forward_length=128 \
             attention.head_count=4 attention.head_count_kv=2 rope.freq_base=10000 \
             attention.layer_norm_rms_epsilon=0.000001 rope.dimension_count=16 vocab_size=320 \
             attention.key_length=16 attention.value_length=16",
        ),
        Architecture::Qwen2 => (
            "qwen2",
            "block_count=2 context_length=4096 embedding_length=64 feed_forward_length=128 \
             attention.head_count=4 attention.head_count_kv=2 rope.freq_base=1000000 \
             attention.layer_norm_rms_epsilon=0.000001",
        ),
        Architecture::Qwen3 => (
            "qwen3",
            "block_count=2 context_length=4096 embedding_length=64 feed_forward_length=128 \
             attention.head_count=4 attention.head_count_kv=2 rope.freq_base=1000000 \
             attention.layer_norm_rms_epsilon=0.000001 attention.key_length=32 \
             attention.value_length=32",
        ),
        Architecture::Gemma2 => (
            "gemma2",
            "context_length=4096 embedding_length=64 block_count=2 feed_forward_length=128 \
             attention.head_count=4 attention.head_count_kv=2 \
             attention.layer_norm_rms_epsilon=0.000001 attention.key_length=32 \
             attention.value_length=32 attn_logit_softcapping=50 final_logit_softcapping=30 \
             attention.sliding_window=64",
        ),
        Architecture::Gemma3 => (
            "gemma3",
            "block_count=2 context_length=4096 embedding_length=64 feed_forward_length=128 \
             attention.head_count=4 attention.head_count_kv=2 rope.freq_base=1000000 \
             rope.freq_base_swa=10000 attention.layer_norm_rms_epsilon=0.000001 \
             attention.key_length=32 attention.value_length=32 attention.sliding_window=64",
        ),
        Architecture::Phi3 => (
            "phi3",
            // attn_factor = sqrt(1 + ln(4096 / 1024) / ln(1024)) = 1.0954452
            "context_length=4096 rope.scaling.original_context_length=1024 embedding_length=64 \
             feed_forward_length=128 block_count=2 attention.head_count=4 \
             attention.head_count_kv=2 attention.layer_norm_rms_epsilon=0.00001 \
             rope.dimension_count=12 rope.freq_base=10000 attention.sliding_window=0 \
             rope.scaling.attn_factor=1.0954452",
        ),
    }
}

/// The GGUF name the converter gives the HF tensor `hf` (llama.cpp's
/// gguf-py tensor map for that architecture).
fn gguf_name(arch: Architecture, hf: &str) -> String {
    let gemma = matches!(arch, Architecture::Gemma2 | Architecture::Gemma3);
    match hf {
        "model.embed_tokens.weight" => return "token_embd.weight".into(),
        "model.norm.weight" => return "output_norm.weight".into(),
        "lm_head.weight" => return "output.weight".into(),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.").unwrap();
    let (layer, part) = rest.split_once('.').unwrap();
    let short = match part {
        "input_layernorm.weight" => "attn_norm.weight",
        "post_attention_layernorm.weight" if gemma => "post_attention_norm.weight",
        "post_attention_layernorm.weight" => "ffn_norm.weight",
        "pre_feedforward_layernorm.weight" => "ffn_norm.weight",
        "post_feedforward_layernorm.weight" => "post_ffw_norm.weight",
        "self_attn.q_norm.weight" => "attn_q_norm.weight",
        "self_attn.k_norm.weight" => "attn_k_norm.weight",
        "self_attn.qkv_proj.weight" => "attn_qkv.weight",
        "mlp.gate_up_proj.weight" => "ffn_up.weight",
        other => {
            let (proj, kind) = other.rsplit_once('.').unwrap();
            let gguf = match proj {
                "self_attn.q_proj" => "attn_q",
                "self_attn.k_proj" => "attn_k",
                "self_attn.v_proj" => "attn_v",
                "self_attn.o_proj" => "attn_output",
                "mlp.gate_proj" => "ffn_gate",
                "mlp.up_proj" => "ffn_up",
                "mlp.down_proj" => "ffn_down",
                _ => panic!("{hf}"),
            };
            return format!("blk.{layer}.{gguf}.{kind}");
        }
    };
    format!("blk.{layer}.{short}")
}

/// Layer tensors in GGUF names (`.weight` left out).
fn expected_layer(arch: Architecture) -> &'static str {
    match arch {
        Architecture::Llama | Architecture::Mistral => {
            "attn_norm attn_k attn_output attn_q attn_v ffn_down ffn_gate ffn_up ffn_norm"
        }
        Architecture::Qwen2 => {
            "attn_norm attn_k.bias attn_k attn_output attn_q.bias attn_q attn_v.bias attn_v \
             ffn_down ffn_gate ffn_up ffn_norm"
        }
        Architecture::Qwen3 => {
            "attn_norm attn_k_norm attn_k attn_output attn_q_norm attn_q attn_v ffn_down \
             ffn_gate ffn_up ffn_norm"
        }
        Architecture::Gemma2 => {
            "attn_norm ffn_down ffn_gate ffn_up post_attention_norm post_ffw_norm ffn_norm \
             attn_k attn_output attn_q attn_v"
        }
        Architecture::Gemma3 => {
            "attn_norm ffn_down ffn_gate ffn_up post_attention_norm post_ffw_norm ffn_norm \
             attn_k_norm attn_k attn_output attn_q_norm attn_q attn_v"
        }
        Architecture::Phi3 => "attn_norm ffn_down ffn_up ffn_norm attn_output attn_qkv",
    }
}

#[test]
fn every_architecture_converts_with_the_converters_metadata_and_tensors() {
    let root = tempfile::tempdir().unwrap();
    for arch in Architecture::ALL {
        let model = fixture(arch, 21);
        let dir = write(&model, root.path());
        let (_, file, _) = convert(&dir, Preset::F32);
        let (gguf_arch, spec) = expected_metadata(arch);
        assert_eq!(
            file.get("general.architecture").and_then(Value::as_str),
            Some(gguf_arch)
        );
        assert_eq!(
            arch_keys(&file, gguf_arch),
            keys(spec),
            "{}: <arch>.* keys",
            arch.name()
        );

        // Tensor names and order: generated ones, then the safetensors order.
        let hf = ModelTensors::open(&dir).unwrap();
        let names: Vec<&str> = file.tensors.iter().map(|t| t.desc.name.as_str()).collect();
        let mut expected: Vec<String> = Vec::new();
        if arch == Architecture::Phi3 {
            expected.push("rope_factors_long.weight".into());
            expected.push("rope_factors_short.weight".into());
        }
        expected.extend(hf.names().iter().map(|n| gguf_name(arch, n)));
        assert_eq!(names, expected, "{}: tensor order", arch.name());
        let mut per_layer: Vec<&str> = names
            .iter()
            .filter_map(|n| n.strip_prefix("blk.0."))
            .map(|n| n.strip_suffix(".weight").unwrap_or(n))
            .collect();
        per_layer.sort();
        let mut want: Vec<&str> = expected_layer(arch).split_whitespace().collect();
        want.sort();
        assert_eq!(per_layer, want, "{}: layer tensors", arch.name());
        let has_lm_head = hf.names().iter().any(|n| n == "lm_head.weight");
        assert_eq!(
            names.contains(&"output.weight"),
            has_lm_head,
            "{}",
            arch.name()
        );

        // Shapes: ggml order, every value F32 under the F32 preset.
        for t in &file.tensors {
            assert_eq!(t.desc.ty, GgmlType::F32, "{}", t.desc.name);
        }
        let embd = file.tensor("token_embd.weight").unwrap();
        assert_eq!(embd.desc.ne, vec![64, model.vocab() as u64]);
        let tokens = match file.get("tokenizer.ggml.tokens") {
            Some(Value::Array(_, items)) => items.len(),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            tokens,
            model.vocab(),
            "{}: one token per embedding row",
            arch.name()
        );
    }
}

#[test]
fn tokenizer_metadata_follows_each_converter_class() {
    let root = tempfile::tempdir().unwrap();
    let cases = [
        (Architecture::Llama, "gpt2", "llama-bpe", Some(true), None),
        (
            Architecture::Mistral,
            "llama",
            "default",
            Some(true),
            Some(true),
        ),
        (Architecture::Qwen2, "gpt2", "qwen2", Some(false), None),
        (Architecture::Qwen3, "gpt2", "qwen2", Some(false), None),
        (
            Architecture::Gemma2,
            "llama",
            "default",
            Some(true),
            Some(false),
        ),
        (
            Architecture::Gemma3,
            "llama",
            "default",
            Some(true),
            Some(false),
        ),
        (Architecture::Phi3, "llama", "default", Some(false), None),
    ];
    for (arch, model_kind, pre, add_bos, space_prefix) in cases {
        let model = fixture(arch, 4);
        let dir = write(&model, root.path());
        let (_, file, _) = convert(&dir, Preset::Q8_0);
        let get = |k: &str| file.get(k).cloned();
        let name = arch.name();
        assert_eq!(
            get("tokenizer.ggml.model"),
            Some(Value::String(model_kind.into())),
            "{name}"
        );
        assert_eq!(
            get("tokenizer.ggml.pre"),
            Some(Value::String(pre.into())),
            "{name}"
        );
        assert_eq!(
            get("tokenizer.ggml.add_bos_token"),
            add_bos.map(Value::Bool),
            "{name}"
        );
        assert_eq!(
            get("tokenizer.ggml.add_space_prefix"),
            space_prefix.map(Value::Bool),
            "{name}"
        );
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(
            get("tokenizer.ggml.eos_token_id").and_then(|v| v.as_u64()),
            config["eos_token_id"].as_u64(),
            "{name}"
        );
        assert!(
            matches!(get("tokenizer.chat_template"), Some(Value::String(t)) if t.contains("messages")),
            "{name}"
        );
        if arch == Architecture::Phi3 {
            // Phi3MiniModel: added tokens score -1000, user-defined.
            let Some(Value::Array(_, scores)) = get("tokenizer.ggml.scores") else {
                panic!("{name}: scores")
            };
            let Some(Value::Array(_, types)) = get("tokenizer.ggml.token_type") else {
                panic!("{name}: types")
            };
            let eos = config["eos_token_id"].as_u64().unwrap() as usize;
            assert_eq!(scores[eos], Value::F32(-1000.0));
            assert_eq!(types[eos], Value::I32(4));
        }
        if matches!(arch, Architecture::Qwen2 | Architecture::Qwen3) {
            let Some(Value::Array(_, types)) = get("tokenizer.ggml.token_type") else {
                panic!("{name}: types")
            };
            assert!(model.vocab() > model.tokenizer_len());
            assert_eq!(
                types.last(),
                Some(&Value::I32(5)),
                "{name}: padding rows are unused"
            );
        }
    }
}

#[test]
fn llama_permutes_q_and_k_rows_and_the_others_keep_them() {
    let root = tempfile::tempdir().unwrap();
    for arch in [
        Architecture::Mistral,
        Architecture::Qwen3,
        Architecture::Gemma2,
    ] {
        let model = fixture(arch, 8);
        let dir = write(&model, root.path());
        let (_, file, _) = convert(&dir, Preset::F32);
        let hf = ModelTensors::open(&dir).unwrap();
        for (proj, heads) in [("q", model.heads), ("k", model.kv_heads)] {
            let src = hf
                .read_f32(&format!("model.layers.1.self_attn.{proj}_proj.weight"))
                .unwrap();
            let out = tensor(&file, &format!("blk.1.attn_{proj}.weight"));
            let hd = model.head_dim();
            let cols = model.hidden;
            for r in 0..heads * hd {
                let (h, w) = (r / hd, r % hd);
                let from = if arch == Architecture::Mistral {
                    // row 2i ← i, row 2i+1 ← hd/2 + i within each head
                    h * hd + (w % 2) * (hd / 2) + w / 2
                } else {
                    r
                };
                assert_eq!(
                    &out[r * cols..(r + 1) * cols],
                    &src[from * cols..(from + 1) * cols],
                    "{}: attn_{proj} row {r}",
                    arch.name()
                );
            }
        }
    }
}

#[test]
fn gemma_norms_get_one_added_and_other_norms_do_not() {
    let root = tempfile::tempdir().unwrap();
    for arch in [
        Architecture::Gemma2,
        Architecture::Gemma3,
        Architecture::Qwen3,
    ] {
        let model = fixture(arch, 9);
        let dir = write(&model, root.path());
        let (_, file, _) = convert(&dir, Preset::Q8_0);
        let hf = ModelTensors::open(&dir).unwrap();
        let mut pairs = vec![
            ("model.norm.weight", "output_norm.weight"),
            (
                "model.layers.0.input_layernorm.weight",
                "blk.0.attn_norm.weight",
            ),
        ];
        if arch != Architecture::Qwen3 {
            pairs.extend([
                (
                    "model.layers.0.post_attention_layernorm.weight",
                    "blk.0.post_attention_norm.weight",
                ),
                (
                    "model.layers.0.pre_feedforward_layernorm.weight",
                    "blk.0.ffn_norm.weight",
                ),
                (
                    "model.layers.1.post_feedforward_layernorm.weight",
                    "blk.1.post_ffw_norm.weight",
                ),
            ]);
        }
        if arch != Architecture::Gemma2 {
            pairs.push((
                "model.layers.1.self_attn.q_norm.weight",
                "blk.1.attn_q_norm.weight",
            ));
            pairs.push((
                "model.layers.0.self_attn.k_norm.weight",
                "blk.0.attn_k_norm.weight",
            ));
        }
        let shift = if arch == Architecture::Qwen3 {
            0.0
        } else {
            1.0
        };
        for (src, dst) in pairs {
            let want: Vec<f32> = hf
                .read_f32(src)
                .unwrap()
                .iter()
                .map(|w| w + shift)
                .collect();
            assert_eq!(tensor(&file, dst), want, "{}: {dst}", arch.name());
        }
    }
}

#[test]
fn phi3_keeps_fused_projections_and_writes_longrope_factor_tensors() {
    let root = tempfile::tempdir().unwrap();
    let model = fixture(Architecture::Phi3, 12);
    let dir = write(&model, root.path());
    let (_, file, _) = convert(&dir, Preset::F32);
    let hf = ModelTensors::open(&dir).unwrap();
    let (e, ff) = (model.hidden as u64, model.intermediate as u64);
    let qkv = file.tensor("blk.0.attn_qkv.weight").unwrap();
    assert_eq!(
        qkv.desc.ne,
        vec![e, e + 2 * (model.kv_heads * model.head_dim()) as u64]
    );
    assert_eq!(
        tensor(&file, "blk.0.attn_qkv.weight"),
        hf.read_f32("model.layers.0.self_attn.qkv_proj.weight")
            .unwrap()
    );
    let up = file.tensor("blk.1.ffn_up.weight").unwrap();
    assert_eq!(
        up.desc.ne,
        vec![e, 2 * ff],
        "gate and up stay fused in ffn_up"
    );
    assert_eq!(
        tensor(&file, "blk.1.ffn_up.weight"),
        hf.read_f32("model.layers.1.mlp.gate_up_proj.weight")
            .unwrap()
    );
    let config = model.config();
    for (name, key) in [
        ("rope_factors_long.weight", "long_factor"),
        ("rope_factors_short.weight", "short_factor"),
    ] {
        let want: Vec<f32> = config["rope_parameters"][key]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(want.len(), 6, "rotary dims 12 / 2");
        assert_eq!(tensor(&file, name), want);
    }
    // Under Q4_K_M the factor tensors stay F32 and attn_qkv gets
    // llama-quantize's bump (Q5_K, falling back to Q5_1 on 64-wide rows).
    let (conv, q4, _) = convert(&dir, Preset::Q4_K_M);
    assert_eq!(
        q4.tensor("rope_factors_long.weight").unwrap().desc.ty,
        GgmlType::F32
    );
    assert_eq!(
        q4.tensor("blk.0.attn_qkv.weight").unwrap().desc.ty,
        GgmlType::Q5_1
    );
    assert_eq!(
        q4.tensor("blk.0.ffn_up.weight").unwrap().desc.ty,
        GgmlType::Q5_0
    );
    let types = conv.tensor_types(Preset::Q4_K_M, false);
    for (t, ty) in q4.tensors.iter().zip(types) {
        assert_eq!(t.desc.ty, ty, "{}", t.desc.name);
    }
}

#[test]
fn gemma2_drops_lm_head_and_quantized_files_tie_through_token_embd() {
    let root = tempfile::tempdir().unwrap();
    let model = fixture(Architecture::Gemma2, 3);
    let dir = write(&model, root.path());
    // A Gemma 2 export that still carries lm_head (autoawq does): the converter skips it.
    let hf = ModelTensors::open(&dir).unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = hf
        .names()
        .iter()
        .map(|n| {
            (
                n.clone(),
                hf.require(n).unwrap().shape.clone(),
                hf.read_f32(n).unwrap(),
            )
        })
        .collect();
    let embd = tensors[0].clone();
    tensors.push(("lm_head.weight".into(), embd.1, embd.2));
    let with_head = root.path().join("gemma2-head");
    model.write(&with_head).unwrap();
    yibuild::fixtures::write_model_files(&with_head, &model.config(), &tensors, model.dtype, 1)
        .unwrap();
    let (_, file, _) = convert(&with_head, Preset::Q8_0);
    assert!(file.tensor("output.weight").is_none());
    assert_eq!(
        file.tensor("token_embd.weight").unwrap().desc.ty,
        GgmlType::Q8_0
    );
}

#[test]
fn unsupported_architectures_are_refused_by_name_with_the_supported_list() {
    let root = tempfile::tempdir().unwrap();
    let model = fixture(Architecture::Mistral, 1);
    for (class, reason) in [
        ("MixtralForCausalLM", "mixture-of-experts"),
        ("Qwen2MoeForCausalLM", "mixture-of-experts"),
        ("Gemma3ForConditionalGeneration", "vision tower"),
        ("FalconForCausalLM", ""),
    ] {
        let dir = root.path().join(class);
        model.write(&dir).unwrap();
        let mut config = model.config();
        config["architectures"][0] = class.into();
        yibuild::fs::files::write_json(&dir.join("config.json"), &config).unwrap();
        let err = format!("{:#}", Conversion::open(&dir, "x").unwrap_err());
        assert!(err.contains(&format!("architecture `{class}`")), "{err}");
        assert!(err.contains(reason), "{err}");
        assert!(
            err.contains("supported: LlamaForCausalLM, MistralForCausalLM, YiForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM, Gemma2ForCausalLM, Gemma3ForCausalLM, Phi3ForCausalLM"),
            "{err}"
        );
    }
}
