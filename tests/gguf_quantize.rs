//! The `quantize` step end to end on fixture models: file layout and
//! metadata, llama-quantize's per-tensor types, Q/K permutation, byte
//! equality with the quantizers, round-trip error, determinism across
//! thread counts, importance matrices, and clear errors on bad input.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use yibuild::fixtures::TinyLlama;
use yibuild::gguf::file::{GgufFile, Value};
use yibuild::gguf::imatrix::Imatrix;
use yibuild::gguf::quants::quantize_rows;
use yibuild::gguf::{inspect_gguf, GgmlType};
use yibuild::steps::{parse, Artifact, Device, ParseContext, Step, StepContext};
use yibuild::syntax::diag::Diag;
use yibuild::syntax::yaml::parse_documents;
use yibuild::tensor::ModelTensors;

/// A fixture whose rows (256, 512) take every k-quant.
fn wide() -> TinyLlama {
    TinyLlama {
        hidden: 256,
        intermediate: 512,
        heads: 4,
        kv_heads: 2,
        layers: 2,
        seed: 7,
        ..TinyLlama::default()
    }
}

fn parse_step(yaml: &str) -> Result<Box<dyn Step>, String> {
    let docs = parse_documents(yaml).map_err(|e| format!("{e:?}"))?;
    let diag = Diag::new(Path::new("recipe.yaml"), yaml);
    let cx = ParseContext {
        diag: &diag,
        step: "q",
        seed: None,
        device: Device::Auto,
    };
    parse("quantize", &docs[0], &cx).map_err(|e| e.to_string())
}

fn run_step(
    step: &dyn Step,
    inputs: &[(&str, &Path)],
    out: &Path,
    threads: usize,
) -> anyhow::Result<()> {
    let inputs: BTreeMap<String, Artifact> = inputs
        .iter()
        .map(|(n, p)| {
            (
                n.to_string(),
                Artifact {
                    path: p.to_path_buf(),
                    digest: "0".repeat(64),
                    ..Default::default()
                },
            )
        })
        .collect();
    let log = |_: &str| {};
    let ctx = StepContext {
        name: "q",
        recipe_name: "tiny",
        inputs: &inputs,
        out_dir: out,
        threads,
        mem_budget: 1 << 30,
        device: Device::Cpu,
        log: &log,
    };
    step.run(&ctx)
}

fn quantize(model: &Path, types: &str, threads: usize) -> (tempfile::TempDir, Vec<PathBuf>) {
    let out = tempfile::tempdir().unwrap();
    let step = parse_step(&format!("{{model: m, type: {types}}}")).unwrap();
    run_step(step.as_ref(), &[("m", model)], out.path(), threads).unwrap();
    let mut files: Vec<PathBuf> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    (out, files)
}

/// The rows of a source tensor in GGUF order (Q/K rows permuted back).
fn source_rows(model: &ModelTensors, hf: &str, heads: Option<usize>) -> Vec<f32> {
    let x = model.read_f32(hf).unwrap();
    let info = model.info(hf).unwrap();
    let Some(heads) = heads else { return x };
    let (rows, cols) = (info.rows(), info.row_len());
    let hd = rows / heads;
    let mut out = vec![0.0; x.len()];
    for r in 0..rows {
        let (h, w) = (r / hd, r % hd);
        let src = h * hd + (w % 2) * (hd / 2) + w / 2;
        out[r * cols..(r + 1) * cols].copy_from_slice(&x[src * cols..(src + 1) * cols]);
    }
    out
}

#[test]
fn q4_k_m_file_has_llama_metadata_mixture_and_exact_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = wide();
    fixture.write(dir.path()).unwrap();
    let (_out, files) = quantize(dir.path(), "Q4_K_M", 2);
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].file_name().unwrap(), "tiny-Q4_K_M.gguf");
    let f = GgufFile::open(&files[0]).unwrap();
    assert_eq!(f.version, 3);
    let u32_of = |k: &str| {
        f.get(k)
            .and_then(Value::as_u64)
            .unwrap_or_else(|| panic!("{k}"))
    };
    assert_eq!(
        f.get("general.architecture").unwrap().as_str(),
        Some("llama")
    );
    assert_eq!(f.get("general.name").unwrap().as_str(), Some("tiny"));
    assert_eq!(u32_of("general.file_type"), 15);
    assert_eq!(u32_of("llama.context_length"), 2048);
    assert_eq!(u32_of("llama.embedding_length"), 256);
    assert_eq!(u32_of("llama.block_count"), 2);
    assert_eq!(u32_of("llama.feed_forward_length"), 512);
    assert_eq!(u32_of("llama.attention.head_count"), 4);
    assert_eq!(u32_of("llama.attention.head_count_kv"), 2);
    assert_eq!(u32_of("llama.rope.dimension_count"), 64);
    assert_eq!(u32_of("llama.vocab_size"), 320);
    assert_eq!(
        f.get("llama.rope.freq_base").unwrap().as_f64(),
        Some(10000.0)
    );
    assert_eq!(
        f.get("tokenizer.ggml.model").unwrap().as_str(),
        Some("gpt2")
    );
    assert_eq!(f.get("tokenizer.ggml.pre").unwrap().as_str(), Some("gpt-2"));
    assert_eq!(u32_of("tokenizer.ggml.bos_token_id"), 1);
    assert_eq!(u32_of("tokenizer.ggml.eos_token_id"), 2);
    assert_eq!(
        f.get("tokenizer.ggml.add_bos_token"),
        Some(&Value::Bool(true))
    );
    match f.get("tokenizer.ggml.tokens").unwrap() {
        Value::Array(_, t) => {
            assert_eq!(t.len(), 320);
            assert_eq!(t[1].as_str(), Some("<s>"));
        }
        other => panic!("tokens: {other:?}"),
    }
    match f.get("tokenizer.ggml.merges").unwrap() {
        Value::Array(_, m) => assert_eq!(m.len(), 320 - 259),
        other => panic!("merges: {other:?}"),
    }
    assert_eq!(f.data_offset % 32, 0);
    assert!(f
        .tensors
        .iter()
        .all(|t| (t.offset - f.data_offset).is_multiple_of(32)));

    // Declaration order follows the safetensors file (sorted by HF name, so
    // lm_head comes first, as with convert_hf_to_gguf); types follow llama-quantize.
    let names: Vec<&str> = f.tensors.iter().map(|t| t.desc.name.as_str()).collect();
    assert_eq!(names[0], "output.weight");
    assert_eq!(names.len(), 2 + 9 * 2 + 1);
    let ty = |n: &str| f.tensor(n).unwrap().desc.ty;
    assert_eq!(ty("token_embd.weight"), GgmlType::Q4_K);
    assert_eq!(ty("output.weight"), GgmlType::Q6_K);
    assert_eq!(ty("output_norm.weight"), GgmlType::F32);
    assert_eq!(ty("blk.0.attn_norm.weight"), GgmlType::F32);
    assert_eq!(ty("blk.0.attn_v.weight"), GgmlType::Q4_K);
    assert_eq!(
        ty("blk.1.attn_v.weight"),
        GgmlType::Q6_K,
        "use_more_bits(1, 2)"
    );
    assert_eq!(ty("blk.1.ffn_down.weight"), GgmlType::Q6_K);
    assert_eq!(ty("blk.0.ffn_down.weight"), GgmlType::Q4_K);
    assert_eq!(ty("blk.0.attn_q.weight"), GgmlType::Q4_K);
    assert_eq!(
        f.tensor("blk.0.attn_k.weight").unwrap().desc.ne,
        vec![256, 128]
    );

    // Every tensor's bytes are the quantizer's bytes for the (permuted) source.
    let model = ModelTensors::open(dir.path()).unwrap();
    let pairs = [
        ("token_embd.weight", "model.embed_tokens.weight", None),
        (
            "blk.0.attn_q.weight",
            "model.layers.0.self_attn.q_proj.weight",
            Some(4),
        ),
        (
            "blk.1.attn_k.weight",
            "model.layers.1.self_attn.k_proj.weight",
            Some(2),
        ),
        (
            "blk.1.attn_v.weight",
            "model.layers.1.self_attn.v_proj.weight",
            None,
        ),
        (
            "blk.0.ffn_down.weight",
            "model.layers.0.mlp.down_proj.weight",
            None,
        ),
        ("output.weight", "lm_head.weight", None),
    ];
    for (gguf, hf, heads) in pairs {
        let t = f.tensor(gguf).unwrap();
        let x = source_rows(&model, hf, heads);
        let mut expected = Vec::new();
        quantize_rows(t.desc.ty, &x, t.desc.ne[0] as usize, None, &mut expected).unwrap();
        assert!(
            f.tensor_bytes(t) == expected.as_slice(),
            "{gguf}: bytes differ"
        );
    }
    let listing = inspect_gguf(&files[0]).unwrap();
    assert!(listing.contains("blk.1.ffn_down.weight"), "{listing}");
    assert!(listing.contains("Q6_K"), "{listing}");
    assert!(listing.contains("general.file_type"), "{listing}");
}

#[test]
fn several_types_in_one_step_round_trip_within_bounds() {
    let dir = tempfile::tempdir().unwrap();
    wide().write(dir.path()).unwrap();
    let model = ModelTensors::open(dir.path()).unwrap();
    let types = "[Q8_0, Q6_K, Q5_K_M, Q4_K_S, Q3_K_M, Q2_K, Q5_1, Q4_0, BF16, F16, IQ4_XS, IQ4_NL]";
    let (_out, files) = quantize(dir.path(), types, 2);
    assert_eq!(files.len(), 12);
    // Relative RMSE of the whole q_proj (Gaussian weights) for the type it got.
    let bound = |t: GgmlType| match t {
        GgmlType::F32 | GgmlType::F16 => 1e-3,
        GgmlType::BF16 => 4e-3,
        GgmlType::Q8_0 => 8e-3,
        GgmlType::Q6_K => 0.02,
        GgmlType::Q5_K | GgmlType::Q5_1 | GgmlType::Q5_0 => 0.05,
        GgmlType::Q4_K | GgmlType::Q4_1 | GgmlType::Q4_0 => 0.12,
        GgmlType::IQ4_NL | GgmlType::IQ4_XS => 0.12,
        GgmlType::Q3_K => 0.2,
        GgmlType::Q2_K => 0.4,
    };
    for file in &files {
        let f = GgufFile::open(file).unwrap();
        for (gguf, hf, heads) in [
            (
                "blk.0.attn_q.weight",
                "model.layers.0.self_attn.q_proj.weight",
                Some(4),
            ),
            (
                "blk.1.ffn_up.weight",
                "model.layers.1.mlp.up_proj.weight",
                None,
            ),
        ] {
            let t = f.tensor(gguf).unwrap();
            let y = f.dequantize(t);
            let x = source_rows(&model, hf, heads);
            let err: f64 = x
                .iter()
                .zip(&y)
                .map(|(a, b)| ((a - b) as f64).powi(2))
                .sum();
            let norm: f64 = x.iter().map(|a| (*a as f64).powi(2)).sum();
            let rel = (err / norm).sqrt();
            let b = bound(t.desc.ty);
            assert!(
                rel < b,
                "{}: {gguf} as {}: relative RMSE {rel:.4} ≥ {b}",
                file.display(),
                t.desc.ty
            );
            assert!(rel < 1e-9 || t.desc.ty != GgmlType::F32);
        }
    }
}

#[test]
fn output_bytes_do_not_depend_on_thread_count() {
    let dir = tempfile::tempdir().unwrap();
    wide().write(dir.path()).unwrap();
    let (_a, one) = quantize(dir.path(), "Q4_K_M", 1);
    let (_b, two) = quantize(dir.path(), "Q4_K_M", 3);
    assert!(std::fs::read(&one[0]).unwrap() == std::fs::read(&two[0]).unwrap());
}

#[test]
fn iq4_presets_write_llama_quantize_types_bits_and_bytes() {
    let dir = tempfile::tempdir().unwrap();
    wide().write(dir.path()).unwrap();
    let model = ModelTensors::open(dir.path()).unwrap();
    let (_out, files) = quantize(dir.path(), "[IQ4_NL, IQ4_XS]", 2);
    // (preset file, file_type, default type, its bits per weight)
    let expected = [
        ("tiny-IQ4_NL.gguf", 25, GgmlType::IQ4_NL, 4.5),
        ("tiny-IQ4_XS.gguf", 30, GgmlType::IQ4_XS, 4.25),
    ];
    for (file, (name, ftype, ty, bpw)) in files.iter().zip(expected) {
        assert_eq!(file.file_name().unwrap(), name);
        let f = GgufFile::open(file).unwrap();
        assert_eq!(
            f.get("general.file_type").and_then(Value::as_u64),
            Some(ftype)
        );
        // GQA 2 and 2 layers: nothing but the output is singled out.
        let t = |n: &str| f.tensor(n).unwrap();
        assert_eq!(t("output.weight").desc.ty, GgmlType::Q6_K);
        for n in [
            "token_embd.weight",
            "blk.0.attn_v.weight",
            "blk.0.ffn_down.weight",
        ] {
            assert_eq!(t(n).desc.ty, ty, "{name}: {n}");
        }
        let q = t("blk.1.attn_q.weight");
        let elements: u64 = q.desc.ne.iter().product();
        assert_eq!(f.tensor_bytes(q).len() as f64 * 8.0 / elements as f64, bpw);
        let x = source_rows(&model, "model.layers.1.self_attn.q_proj.weight", Some(4));
        let mut bytes = Vec::new();
        quantize_rows(ty, &x, 256, None, &mut bytes).unwrap();
        assert!(
            f.tensor_bytes(q) == bytes.as_slice(),
            "{name}: bytes differ"
        );
    }
}

#[test]
fn narrow_rows_fall_back_and_tied_embeddings_get_output_type() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = TinyLlama {
        tie_embeddings: true,
        ..TinyLlama::default()
    };
    fixture.write(dir.path()).unwrap();
    let (_out, files) = quantize(dir.path(), "Q4_K_M", 2);
    let f = GgufFile::open(&files[0]).unwrap();
    assert!(f.tensor("output.weight").is_none());
    // 64-wide rows: Q4_K → Q5_0, Q6_K → Q8_0 (llama-quantize's fallbacks).
    assert_eq!(
        f.tensor("token_embd.weight").unwrap().desc.ty,
        GgmlType::Q8_0
    );
    assert_eq!(
        f.tensor("blk.0.attn_q.weight").unwrap().desc.ty,
        GgmlType::Q5_0
    );
    assert_eq!(
        f.tensor("blk.1.attn_v.weight").unwrap().desc.ty,
        GgmlType::Q8_0
    );
    // 64-wide rows under IQ4_XS: IQ4_NL (32-element blocks).
    let (_out, files) = quantize(dir.path(), "IQ4_XS", 2);
    let f = GgufFile::open(&files[0]).unwrap();
    assert_eq!(
        f.tensor("blk.0.attn_q.weight").unwrap().desc.ty,
        GgmlType::IQ4_NL
    );
}

#[test]
fn importance_matrix_changes_bytes_exactly_as_the_weighted_quantizer() {
    let dir = tempfile::tempdir().unwrap();
    wide().write(dir.path()).unwrap();
    let mut im = Imatrix::default();
    let weights: Vec<f32> = (0..256).map(|i| 0.1 + (i % 7) as f32).collect();
    im.entries
        .insert("blk.0.attn_q.weight".into(), weights.clone());
    let im_path = dir.path().join("imatrix.dat");
    std::fs::write(&im_path, im.to_legacy_bytes(10)).unwrap();
    let loaded = Imatrix::load(&im_path).unwrap();
    let back = &loaded.entries["blk.0.attn_q.weight"];
    assert!(back
        .iter()
        .zip(&weights)
        .all(|(a, b)| (a - b).abs() <= 1e-6 * b));

    let out = tempfile::tempdir().unwrap();
    let step = parse_step("{model: m, type: Q4_K_M, imatrix: calib}").unwrap();
    run_step(
        step.as_ref(),
        &[("m", dir.path()), ("calib", &im_path)],
        out.path(),
        2,
    )
    .unwrap();
    let f = GgufFile::open(&out.path().join("tiny-Q4_K_M.gguf")).unwrap();
    assert_eq!(
        f.get("quantize.imatrix.file").unwrap().as_str(),
        Some("calib")
    );
    let t = f.tensor("blk.0.attn_q.weight").unwrap();
    let model = ModelTensors::open(dir.path()).unwrap();
    let x = source_rows(&model, "model.layers.0.self_attn.q_proj.weight", Some(4));
    let (mut with, mut without) = (Vec::new(), Vec::new());
    quantize_rows(GgmlType::Q4_K, &x, 256, Some(back), &mut with).unwrap();
    quantize_rows(GgmlType::Q4_K, &x, 256, None, &mut without).unwrap();
    assert!(f.tensor_bytes(t) == with.as_slice());
    assert!(with != without);

    let bad = Imatrix {
        entries: [("blk.0.attn_q.weight".to_owned(), vec![1.0; 100])].into(),
        ..Imatrix::default()
    };
    std::fs::write(&im_path, bad.to_legacy_bytes(1)).unwrap();
    let out = tempfile::tempdir().unwrap();
    let err = run_step(
        step.as_ref(),
        &[("m", dir.path()), ("calib", &im_path)],
        out.path(),
        2,
    )
    .unwrap_err();
    assert!(
        format!("{err:#}").contains("has 100 values but the tensor has 256 columns"),
        "{err:#}"
    );
    assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0);
}

#[test]
fn bad_input_fails_clearly_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let gpt = TinyLlama {
        architecture: ("GPTNeoXForCausalLM", "gpt_neox"),
        ..TinyLlama::default()
    };
    gpt.write(dir.path()).unwrap();
    let step = parse_step("{model: m, type: [Q8_0, Q4_K_M]}").unwrap();
    let out = tempfile::tempdir().unwrap();
    let err = run_step(step.as_ref(), &[("m", dir.path())], out.path(), 2).unwrap_err();
    assert!(
        format!("{err:#}").contains("architecture `GPTNeoXForCausalLM` cannot be converted"),
        "{err:#}"
    );

    // A truncated shard: the second type never starts, the first is removed.
    let dir = tempfile::tempdir().unwrap();
    wide().write(dir.path()).unwrap();
    let shard = dir.path().join("model.safetensors");
    let len = std::fs::metadata(&shard).unwrap().len();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&shard)
        .unwrap();
    file.set_len(len - 1000).unwrap();
    let err = run_step(step.as_ref(), &[("m", dir.path())], out.path(), 2).unwrap_err();
    assert!(format!("{err:#}").contains("model.safetensors"), "{err:#}");
    assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0);

    // A tensor whose shape disagrees with config.json.
    let dir = tempfile::tempdir().unwrap();
    wide().write(dir.path()).unwrap();
    let cfg_path = dir.path().join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["intermediate_size"] = serde_json::json!(384);
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let err = run_step(step.as_ref(), &[("m", dir.path())], out.path(), 2).unwrap_err();
    assert!(
        format!("{err:#}").contains("`model.layers.0.mlp.down_proj.weight` has shape [256, 512] but config.json implies [256, 384]"),
        "{err:#}"
    );
    assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0);

    let err = parse_step("{model: m, type: Q4_K_MM}").unwrap_err();
    assert!(
        err.contains("unknown GGUF quantization type `Q4_K_MM`"),
        "{err}"
    );
    assert!(err.contains("did you mean `Q4_K_M`"), "{err}");
    let err = parse_step("{model: m, type: Q8_0, format: exl2}").unwrap_err();
    assert!(err.contains("`format` must be `gguf`"), "{err}");
}

#[test]
fn gguf_imatrix_is_normalised_by_counts() {
    use yibuild::gguf::file::{GgufWriter, TensorDesc};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("imatrix.gguf");
    let sums: Vec<f32> = (0..8).map(|i| i as f32 * 3.0).collect();
    let tensors = [
        TensorDesc {
            name: "blk.0.ffn_up.weight.in_sum2".into(),
            ty: GgmlType::F32,
            ne: vec![8, 1],
        },
        TensorDesc {
            name: "blk.0.ffn_up.weight.counts".into(),
            ty: GgmlType::F32,
            ne: vec![1, 1],
        },
    ];
    let meta = vec![
        ("general.type".to_owned(), Value::String("imatrix".into())),
        ("imatrix.chunk_count".to_owned(), Value::U32(5)),
        (
            "imatrix.datasets".to_owned(),
            Value::strings(["wiki.train.raw"]),
        ),
    ];
    let mut w = GgufWriter::create(&path, &meta, &tensors).unwrap();
    let mut bytes = Vec::new();
    quantize_rows(GgmlType::F32, &sums, 8, None, &mut bytes).unwrap();
    w.write_data(&bytes).unwrap();
    w.write_data(&3.0f32.to_le_bytes()).unwrap();
    w.finish().unwrap();
    let im = Imatrix::load(&path).unwrap();
    assert_eq!(
        im.entries["blk.0.ffn_up.weight"],
        (0..8).map(|i| i as f32).collect::<Vec<_>>()
    );
    assert_eq!(im.chunks, Some(5));
    assert_eq!(im.datasets, ["wiki.train.raw"]);
}

#[test]
fn qwen2_converts_without_permutation() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = TinyLlama {
        architecture: ("Qwen2ForCausalLM", "qwen2"),
        ..wide()
    };
    fixture.write(dir.path()).unwrap();
    let (_out, files) = quantize(dir.path(), "Q8_0", 2);
    let f = GgufFile::open(&files[0]).unwrap();
    assert_eq!(
        f.get("general.architecture").unwrap().as_str(),
        Some("qwen2")
    );
    assert_eq!(f.get("qwen2.block_count").and_then(Value::as_u64), Some(2));
    let model = ModelTensors::open(dir.path()).unwrap();
    let t = f.tensor("blk.0.attn_q.weight").unwrap();
    let x = source_rows(&model, "model.layers.0.self_attn.q_proj.weight", None);
    let mut expected = Vec::new();
    quantize_rows(GgmlType::Q8_0, &x, 256, None, &mut expected).unwrap();
    assert!(f.tensor_bytes(t) == expected.as_slice());
}
