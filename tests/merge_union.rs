//! Merges with a union vocabulary (`tokenizer_source: union`, `tokenizer:`):
//! models with different vocabularies have their embedding and head rows
//! re-indexed before the method runs, checked against values computed here
//! from the input rows.

use std::path::{Path, PathBuf};

use yibuild::fixtures::{SpmTokenizer, TinyLlama};
use yibuild::merge::{merge_config_file, MergeOptions};
use yibuild::tensor::{DType, ModelTensors};

const EMBED: &str = "model.embed_tokens.weight";
const HEAD: &str = "lm_head.weight";

/// A model with `rows` embedding rows, weights from `seed`, and a
/// SentencePiece tokenizer of 320 pieces plus `extra`.
fn model(dir: &Path, rows: usize, seed: u64, extra: &[&str]) {
    TinyLlama {
        hidden: 32,
        intermediate: 48,
        vocab: rows,
        tokenizer_vocab: rows,
        dtype: DType::F32,
        seed,
        ..Default::default()
    }
    .write(dir)
    .unwrap();
    SpmTokenizer {
        vocab: 320,
        extra: extra.iter().map(|t| t.to_string()).collect(),
    }
    .write(dir)
    .unwrap();
}

/// base (320 tokens), a (+ `<|im_start|>`, `<|im_end|>`), b (+ `<|im_end|>`).
fn models() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    model(&root.join("base"), 320, 1, &[]);
    model(&root.join("a"), 322, 2, &["<|im_start|>", "<|im_end|>"]);
    model(&root.join("b"), 321, 3, &["<|im_end|>"]);
    (dir, root)
}

fn merge(root: &Path, name: &str, config: &str, opts: &MergeOptions) -> PathBuf {
    let path = root.join(format!("{name}.yml"));
    std::fs::write(&path, config.replace("ROOT", &root.display().to_string())).unwrap();
    let out = root.join(name);
    merge_config_file(&path, &out, opts, &|_| {}).unwrap();
    out
}

fn row(dir: &Path, tensor: &str, r: usize) -> Vec<f32> {
    ModelTensors::open(dir)
        .unwrap()
        .read_rows_f32(tensor, r..r + 1)
        .unwrap()
}

fn mean(dir: &Path, tensor: &str, rows: usize) -> Vec<f64> {
    let t = ModelTensors::open(dir).unwrap();
    let mut sum = vec![0f64; 32];
    for r in 0..rows {
        for (s, v) in sum
            .iter_mut()
            .zip(t.read_rows_f32(tensor, r..r + 1).unwrap())
        {
            *s += v as f64;
        }
    }
    sum.iter().map(|s| s / rows as f64).collect()
}

/// `Σ w_i x_i` over (weight, row) pairs.
fn weighted(parts: &[(f64, Vec<f64>)]) -> Vec<f64> {
    let mut out = vec![0f64; parts[0].1.len()];
    for (w, x) in parts {
        for (o, v) in out.iter_mut().zip(x) {
            *o += w * v;
        }
    }
    out
}

fn wide(x: Vec<f32>) -> Vec<f64> {
    x.into_iter().map(f64::from).collect()
}

fn assert_close(what: &str, got: &[f32], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (*g as f64 - w).abs() <= 1e-5 * (1.0 + w.abs()),
            "{what}[{i}]: got {g}, want {w}"
        );
    }
}

fn out_config(out: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap()
}

const LINEAR: &str = "merge_method: linear
base_model: ROOT/base
tokenizer_source: union
models:
  - model: ROOT/base
    parameters: {weight: 0.5}
  - model: ROOT/a
    parameters: {weight: 0.3}
  - model: ROOT/b
    parameters: {weight: 0.2}
";

#[test]
fn linear_union_reindexes_rows_before_merging() {
    let (_dir, root) = models();
    let out = merge(&root, "linear", LINEAR, &MergeOptions::default());
    let (base, a, b) = (root.join("base"), root.join("a"), root.join("b"));
    let w = [0.5, 0.3, 0.2];
    let tensors = ModelTensors::open(&out).unwrap();
    for tensor in [EMBED, HEAD] {
        assert_eq!(tensors.info(tensor).unwrap().shape, [322, 32]);
        // A shared token: each model's own row.
        let shared = weighted(&[
            (w[0], wide(row(&base, tensor, 100))),
            (w[1], wide(row(&a, tensor, 100))),
            (w[2], wide(row(&b, tensor, 100))),
        ]);
        assert_close("shared", &row(&out, tensor, 100), &shared);
        // `<|im_start|>` only in a: every model's row is a's, so the merge is a's row.
        assert_close(
            "a only",
            &row(&out, tensor, 320),
            &wide(row(&a, tensor, 320)),
        );
        // `<|im_end|>` in a (321) and b (320), not the base: the base's row is their mean.
        let (a_row, b_row) = (wide(row(&a, tensor, 321)), wide(row(&b, tensor, 320)));
        let base_row: Vec<f64> = a_row
            .iter()
            .zip(&b_row)
            .map(|(x, y)| (x + y) / 2.0)
            .collect();
        let want = weighted(&[(w[0], base_row), (w[1], a_row), (w[2], b_row)]);
        assert_close("a and b", &row(&out, tensor, 321), &want);
    }
    // Every other tensor is merged as usual.
    let norm = "model.norm.weight";
    let want = weighted(&[
        (
            w[0],
            wide(ModelTensors::open(&base).unwrap().read_f32(norm).unwrap()),
        ),
        (
            w[1],
            wide(ModelTensors::open(&a).unwrap().read_f32(norm).unwrap()),
        ),
        (
            w[2],
            wide(ModelTensors::open(&b).unwrap().read_f32(norm).unwrap()),
        ),
    ]);
    assert_close("norm", &tensors.read_f32(norm).unwrap(), &want);

    assert_eq!(out_config(&out)["vocab_size"], 322);
    let tok = tokenizers::Tokenizer::from_file(out.join("tokenizer.json")).unwrap();
    assert_eq!(tok.get_vocab_size(true), 322);
    assert_eq!(tok.token_to_id("<|im_start|>"), Some(320));
    assert_eq!(tok.token_to_id("<|im_end|>"), Some(321));
    let ids = tok.encode("<|im_start|>hi<|im_end|>", false).unwrap();
    assert_eq!(ids.get_ids().first(), Some(&320));
    assert_eq!(ids.get_ids().last(), Some(&321));
    // A fast tokenizer only: the base's tokenizer.model no longer matches.
    assert!(!out.join("tokenizer.model").exists());
}

#[test]
fn dare_ties_union_is_deterministic_and_keeps_single_model_tokens() {
    let (_dir, root) = models();
    let config = "merge_method: dare_ties
base_model: ROOT/base
tokenizer_source: union
models:
  - model: ROOT/a
    parameters: {weight: 0.6, density: 0.5}
  - model: ROOT/b
    parameters: {weight: 0.4, density: 0.7}
";
    let one = MergeOptions {
        threads: 1,
        ..Default::default()
    };
    let chunked = MergeOptions {
        threads: 3,
        chunk_elements: Some(100),
        ..Default::default()
    };
    let first = merge(&root, "one", config, &one);
    let second = merge(&root, "chunked", config, &chunked);
    let bytes = |d: &Path| std::fs::read(d.join("model.safetensors")).unwrap();
    assert_eq!(bytes(&first), bytes(&second));
    // `<|im_start|>`: the base's row and b's are a's row, so both deltas are
    // zero whatever the masks, and the output is a's row exactly.
    for tensor in [EMBED, HEAD] {
        assert_eq!(row(&first, tensor, 320), row(&root.join("a"), tensor, 320));
        assert_ne!(
            row(&first, tensor, 100),
            row(&root.join("base"), tensor, 100)
        );
    }
    assert_eq!(out_config(&first)["vocab_size"], 322);
}

#[test]
fn tokens_and_padding() {
    let (_dir, root) = models();
    let config = "merge_method: linear
base_model: ROOT/base
tokenizer:
  source: union
  pad_to_multiple_of: 16
  tokens:
    <|tool|>:
      source: {kind: zero}
    <|im_start|>:
      source: {kind: model_token, model: ROOT/base, token_id: 2}
      force: true
    <|im_end|>:
      source: ROOT/b
models:
  - model: ROOT/base
    parameters: {weight: 0.5}
  - model: ROOT/a
    parameters: {weight: 0.3}
  - model: ROOT/b
    parameters: {weight: 0.2}
";
    let out = merge(&root, "tokens", config, &MergeOptions::default());
    let (base, a, b) = (root.join("base"), root.join("a"), root.join("b"));
    let tensors = ModelTensors::open(&out).unwrap();
    assert_eq!(tensors.info(EMBED).unwrap().shape, [336, 32]);
    assert_eq!(out_config(&out)["vocab_size"], 336);
    let tok = tokenizers::Tokenizer::from_file(out.join("tokenizer.json")).unwrap();
    assert_eq!(tok.token_to_id("<|tool|>"), Some(322));
    // force: every model's row is the base's `</s>` (id 2).
    assert_close(
        "forced",
        &row(&out, EMBED, 320),
        &wide(row(&base, EMBED, 2)),
    );
    // `source: b` for the base, which lacks the token; a and b keep their own.
    let want = weighted(&[
        (0.5, wide(row(&b, EMBED, 320))),
        (0.3, wide(row(&a, EMBED, 321))),
        (0.2, wide(row(&b, EMBED, 320))),
    ]);
    assert_close("source model", &row(&out, EMBED, 321), &want);
    assert!(row(&out, EMBED, 322).iter().all(|v| *v == 0.0));
    // Padding rows: each model's mean over its real rows (config vocab_size).
    let pad = weighted(&[
        (0.5, mean(&base, EMBED, 320)),
        (0.3, mean(&a, EMBED, 322)),
        (0.2, mean(&b, EMBED, 321)),
    ]);
    for r in [323, 335] {
        assert_close("padding", &row(&out, EMBED, r), &pad);
    }
}

#[test]
fn token_sources_must_name_merged_models() {
    let (_dir, root) = models();
    let config = "merge_method: linear
tokenizer:
  tokens:
    <|x|>: {source: ROOT/elsewhere}
models:
  - model: ROOT/base
    parameters: {weight: 1.0}
"
    .replace("ROOT", &root.display().to_string());
    let path = root.join("bad.yml");
    std::fs::write(&path, config).unwrap();
    let err =
        merge_config_file(&path, &root.join("bad"), &MergeOptions::default(), &|_| {}).unwrap_err();
    assert!(
        format!("{err:#}").contains("elsewhere`, which is not part of the merge"),
        "{err:#}"
    );
    assert!(!root.join("bad").exists());
}
