//! The merge engine end to end: byte-identical output across thread counts and
//! chunk sizes, mask independence between models, bounded memory, output
//! layout, and clear errors (with nothing left behind) for bad inputs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use yibuild::fixtures::{write_finetune, TinyLlama};
use yibuild::merge::{merge_config_file, MergeOptions};
use yibuild::tensor::ModelTensors;

fn tiny(shards: usize) -> TinyLlama {
    TinyLlama {
        hidden: 32,
        layers: 2,
        heads: 4,
        kv_heads: 2,
        intermediate: 48,
        vocab: 264,
        tokenizer_vocab: 264,
        shards,
        ..Default::default()
    }
}

/// base + fine-tunes a, b, c under one temporary directory.
fn models(shards: usize) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let base = tiny(shards);
    base.write(&root.join("base")).unwrap();
    for (i, name) in ["a", "b", "c"].iter().enumerate() {
        write_finetune(&base, &root.join(name), 10 + i as u64, 0.2).unwrap();
    }
    (dir, root)
}

const DARE_TIES: &str = "merge_method: dare_ties
base_model: ROOT/base
parameters: {int8_mask: true}
dtype: bfloat16
models:
  - model: ROOT/a
    parameters: {weight: 0.4, density: 0.6}
  - model: ROOT/b
    parameters: {weight: 0.3, density: 0.5}
";

fn merge(root: &Path, name: &str, config: &str, opts: &MergeOptions) -> anyhow::Result<PathBuf> {
    let path = root.join(format!("{name}.yml"));
    std::fs::write(&path, config.replace("ROOT", &root.display().to_string())).unwrap();
    let out = root.join(name);
    merge_config_file(&path, &out, opts, &|_| {})?;
    Ok(out)
}

fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

#[test]
fn dare_ties_is_byte_identical_across_threads_and_chunk_sizes() {
    let (_d, root) = models(2);
    let mut outputs = Vec::new();
    for (i, (threads, chunk)) in [(1, Some(700)), (2, Some(700)), (2, Some(5000)), (2, None)]
        .into_iter()
        .enumerate()
    {
        let opts = MergeOptions {
            seed: 3,
            threads,
            chunk_elements: chunk,
            max_shard_size: 60_000,
            ..MergeOptions::default()
        };
        let out = merge(&root, &format!("out{i}"), DARE_TIES, &opts).unwrap();
        outputs.push(files(&out));
    }
    assert!(outputs[0].contains_key("model.safetensors.index.json"));
    assert!(outputs[0].keys().any(|k| k.starts_with("model-00001-of-")));
    for other in &outputs[1..] {
        assert_eq!(
            other.keys().collect::<Vec<_>>(),
            outputs[0].keys().collect::<Vec<_>>()
        );
        // README.md is titled with the output folder's name.
        for (name, bytes) in other.iter().filter(|(n, _)| *n != "README.md") {
            assert!(bytes == &outputs[0][name], "{name} differs");
        }
    }
    // Another seed gives other masks, and the seed is recorded.
    let opts = MergeOptions {
        seed: 4,
        ..MergeOptions::default()
    };
    let out = merge(&root, "seed4", DARE_TIES, &opts).unwrap();
    let a = ModelTensors::open(&root.join("out0")).unwrap();
    let b = ModelTensors::open(&out).unwrap();
    let name = "model.layers.0.mlp.up_proj.weight";
    assert_ne!(a.read_f32(name).unwrap(), b.read_f32(name).unwrap());
    let card = std::fs::read_to_string(out.join("README.md")).unwrap();
    assert!(
        card.contains("Random seed for DARE/DELLA masks: 4."),
        "{card}"
    );
}

#[test]
fn adding_a_model_keeps_the_other_masks() {
    let (_d, root) = models(1);
    // dare_linear without rescaling: output = base + Σ w_i·mask_i·δ_i, so
    // with c at weight 0 the output must not change at all.
    let two = DARE_TIES.replace("dare_ties", "dare_linear")
        + "  - model: ROOT/c\n    parameters: {weight: 0.0, density: 0.5}\n";
    let one = DARE_TIES.replace("dare_ties", "dare_linear");
    let opts = MergeOptions::default();
    let x = merge(&root, "two", &two, &opts).unwrap();
    let y = merge(&root, "one", &one, &opts).unwrap();
    let (x, y) = (
        ModelTensors::open(&x).unwrap(),
        ModelTensors::open(&y).unwrap(),
    );
    for name in x.names() {
        assert_eq!(
            x.read_f32(name).unwrap(),
            y.read_f32(name).unwrap(),
            "{name}"
        );
    }
}

#[test]
fn output_layout_config_and_tokenizer() {
    let (_d, root) = models(1);
    let config = DARE_TIES.replace(
        "dtype: bfloat16",
        "dtype: bfloat16\nout_dtype: float32\nchat_template: chatml\ntokenizer_source: ROOT/c",
    );
    let out = merge(&root, "layout", &config, &MergeOptions::default()).unwrap();
    let names: Vec<String> = files(&out).into_keys().collect();
    for f in [
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "mergekit_config.yml",
        "README.md",
    ] {
        assert!(names.iter().any(|n| n == f), "{f} missing from {names:?}");
    }
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["torch_dtype"], "float32");
    assert_eq!(cfg["num_hidden_layers"], 2);
    assert_eq!(cfg["vocab_size"], 264);
    let t = ModelTensors::open(&out).unwrap();
    assert_eq!(
        t.info("lm_head.weight").unwrap().dtype,
        yibuild::tensor::DType::F32
    );
    let tc = std::fs::read_to_string(out.join("tokenizer_config.json")).unwrap();
    assert!(tc.contains("<|im_start|>"));
    assert!(std::fs::read_to_string(out.join("mergekit_config.yml"))
        .unwrap()
        .contains("dare_ties"));
}

/// Runs a merge expected to fail; returns the error text and checks that no
/// output directory (or temporary one) was left behind.
fn failing(root: &Path, config: &str) -> String {
    let err = merge(root, "bad-out", config, &MergeOptions::default()).unwrap_err();
    let left: Vec<String> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("bad-out") && !n.ends_with(".yml"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    format!("{err:#}")
}

#[test]
fn bad_inputs_name_the_model_and_tensor() {
    let (_d, root) = models(2);
    // Unknown method and a misspelt parameter: config errors with a location.
    let err = failing(&root, &DARE_TIES.replace("dare_ties", "dare-ties"));
    assert!(
        err.contains("unknown merge method `dare-ties`")
            && err.contains("did you mean `dare_ties`"),
        "{err}"
    );
    assert!(err.contains("bad-out.yml:1:15"), "{err}");
    let err = failing(&root, &DARE_TIES.replace("density: 0.5", "densty: 0.5"));
    assert!(
        err.contains("no parameter `densty`") && err.contains("did you mean `density`"),
        "{err}"
    );
    let err = failing(&root, &DARE_TIES.replace("weight: 0.3, ", ""));
    assert!(
        err.contains("missing required parameter `weight` for model") && err.contains("/b`"),
        "{err}"
    );

    // A model with a different MLP width: shape mismatch, found before reading tensors.
    let wide = TinyLlama {
        intermediate: 64,
        ..tiny(1)
    };
    wide.write(&root.join("wide")).unwrap();
    let err = failing(&root, &DARE_TIES.replace("ROOT/b\n", "ROOT/wide\n"));
    assert!(
        err.contains("shape mismatch for tensor `model.layers.0.mlp.up_proj.weight`")
            && err.contains("wide` has [64, 32]"),
        "{err}"
    );

    // A missing shard.
    std::fs::remove_file(root.join("c/model-00002-of-00002.safetensors")).unwrap();
    let err = failing(&root, &DARE_TIES.replace("ROOT/b\n", "ROOT/c\n"));
    assert!(
        err.contains("model-00002-of-00002.safetensors") && err.contains("missing"),
        "{err}"
    );

    // A truncated shard.
    let shard = root.join("b/model-00002-of-00002.safetensors");
    let len = std::fs::metadata(&shard).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&shard)
        .unwrap()
        .set_len(len - 100)
        .unwrap();
    let err = failing(&root, DARE_TIES);
    assert!(err.contains("/b`") && err.contains("truncated"), "{err}");

    // NaN in an input: found while merging; the partial output is removed.
    let nan_dir = root.join("nan");
    let mut tensors = tiny(1).tensor_values();
    tensors[3].2[5] = f32::NAN;
    let nan_name = tensors[3].0.clone();
    yibuild::fixtures::write_model_files(
        &nan_dir,
        &tiny(1).config(),
        &tensors,
        yibuild::tensor::DType::BF16,
        1,
    )
    .unwrap();
    let err = failing(
        &root,
        &DARE_TIES
            .replace("ROOT/b\n", "ROOT/nan\n")
            .replace("ROOT/base", "ROOT/a"),
    );
    assert!(
        err.contains(&format!("tensor `{nan_name}` contains NaN")) && err.contains("/nan`"),
        "{err}"
    );

    // A layer range beyond the model.
    let slices = "merge_method: passthrough\nslices:\n  - sources:\n      - model: ROOT/a\n        layer_range: [0, 3]\n";
    let err = failing(&root, slices);
    assert!(
        err.contains("has 2 layers but `layer_range` asks for [0, 3]"),
        "{err}"
    );

    // Pickled checkpoints are refused with a way out.
    let bin = root.join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::fs::write(bin.join("config.json"), "{}").unwrap();
    std::fs::write(bin.join("pytorch_model.bin"), "x").unwrap();
    let err = failing(&root, &DARE_TIES.replace("ROOT/b\n", "ROOT/bin\n"));
    assert!(
        err.contains("safetensors only") && err.contains("safe_serialization=True"),
        "{err}"
    );

    // Extra tokens and padding need the union vocabulary.
    let err = failing(
        &root,
        &format!("tokenizer: {{source: base, pad_to_multiple_of: 8}}\n{DARE_TIES}"),
    );
    assert!(
        err.contains("`tokenizer.pad_to_multiple_of` is only supported with `source: union`"),
        "{err}"
    );
}

/// The bounded-memory check runs the merge in a child process (this test
/// binary re-run with an environment variable) so that its peak RSS does not
/// count fixture generation.
#[test]
fn peak_memory_stays_under_the_budget() {
    const BUDGET: u64 = 40 << 20;
    let config =
        format!("{DARE_TIES}  - model: ROOT/c\n    parameters: {{weight: 0.3, density: 0.5}}\n");
    if let Ok(dir) = std::env::var("YIBUILD_MERGE_CHILD") {
        let root = PathBuf::from(dir);
        let opts = MergeOptions {
            mem_budget: BUDGET,
            threads: 2,
            ..MergeOptions::default()
        };
        merge(&root, "big-out", &config, &opts).unwrap();
        // VmHWM starts afresh at exec, unlike getrusage's maxrss, which a
        // forked child inherits from its parent.
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let hwm = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
        std::fs::write(
            root.join("peak-kib"),
            hwm.split_whitespace().nth(1).unwrap(),
        )
        .unwrap();
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // 4 models of 22M bf16 parameters (44 MB) each: 176 MB of inputs, over
    // 4× the budget, plus a 44 MB output.
    let big = TinyLlama {
        hidden: 512,
        layers: 4,
        heads: 8,
        kv_heads: 8,
        intermediate: 1536,
        vocab: 8192,
        tokenizer_vocab: 300,
        ..Default::default()
    };
    big.write(&root.join("base")).unwrap();
    for (i, name) in ["a", "b", "c"].iter().enumerate() {
        write_finetune(&big, &root.join(name), i as u64, 0.1).unwrap();
    }
    let input_bytes: u64 = ["base", "a", "b", "c"]
        .iter()
        .map(|m| {
            std::fs::metadata(root.join(m).join("model.safetensors"))
                .unwrap()
                .len()
        })
        .sum();
    assert!(
        input_bytes >= 4 * BUDGET,
        "inputs {input_bytes} too small for the test"
    );
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "peak_memory_stays_under_the_budget",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("YIBUILD_MERGE_CHILD", root)
        .status()
        .unwrap();
    assert!(status.success());
    let peak_kib = std::fs::read_to_string(root.join("peak-kib")).unwrap();
    let peak = peak_kib.parse::<u64>().unwrap() * 1024;
    assert!(
        peak < BUDGET,
        "peak RSS {} MiB over the {} MiB budget",
        peak >> 20,
        BUDGET >> 20
    );
    assert!(root.join("big-out/model.safetensors").is_file());
}
