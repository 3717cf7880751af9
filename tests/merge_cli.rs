//! `yibuild merge` as a drop-in for `mergekit-yaml`: the whole option set
//! pasted from a model card runs, and the output folder has the files
//! mergekit-yaml writes for the same options.
//!
//! What mergekit-yaml writes (mergekit a6e4028: `io/tensor_writer.py`,
//! `merge.py`, `options.py`, `common.py`):
//! - `--out-shard-size` goes through `parse_kmb`: digits with an optional
//!   K/M/B suffix, decimal (`100K` = 100,000 bytes). A tensor joins the current
//!   shard unless the shard is non-empty and the tensor would take it past the
//!   size, so a tensor larger than the size gets a shard of its own; size 0
//!   never splits.
//! - One shard is `model.safetensors` with no index; N > 1 shards are
//!   `model-0000i-of-0000N.safetensors` with `model.safetensors.index.json`
//!   holding `metadata.total_size` (the tensor bytes) and a `weight_map` of
//!   every tensor to its shard. Each shard's header metadata is
//!   `{"format": "pt"}`.
//! - `config.json` from the base model, `torch_dtype` set to the merge's.
//! - `--copy-tokenizer` (default): the base's tokenizer_config.json,
//!   special_tokens_map.json, tokenizer.json, generation_config.json (and
//!   tokenizer.model, added_tokens.json, merges.txt, chat templates when
//!   present) copied as they are; `--no-copy-tokenizer`: none of them.
//! - `--write-model-card` (default): `README.md`, titled with the output
//!   folder's name, and `mergekit_config.yml`, the config text verbatim;
//!   `--no-write-model-card`: neither.
//! - Without `--allow-crimes`, models of different architectures are refused.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::hub_server::HubServer;
use common::pty::stderr_on_a_terminal;
use common::Project;
use yibuild::fixtures::{write_finetune, TinyLlama};
use yibuild::tensor::ModelTensors;

const CONFIG: &str = "merge_method: dare_ties
base_model: ./models/base
models:
  - model: ./models/ft
    parameters: {weight: 0.6, density: 0.5}
dtype: bfloat16
";

/// Every option mergekit-yaml has (`MergeOptions` and its click
/// declarations), in the forms people paste.
const MERGEKIT_FLAGS: &[&str] = &[
    "--allow-crimes",
    "--transformers-cache",
    "hf-cache",
    "--lora-merge-cache",
    "lora-cache",
    "--lora-merge-dtype",
    "bfloat16",
    "--cuda",
    "--device",
    "cpu",
    "--low-cpu-memory",
    "--out-shard-size",
    "100K",
    "--copy-tokenizer",
    "--clone-tensors",
    "--trust-remote-code",
    "--random-seed",
    "42",
    "--lazy-unpickle",
    "--write-model-card",
    "--safe-serialization",
    "-v",
    "-v",
    "--quiet",
    "--read-to-gpu",
    "--multi-gpu",
    "-j",
    "2",
    "--gpu-rich",
    "--async-write",
    "--write-threads",
    "2",
];

/// The tokenizer (and generation) files the fixture base model has.
const TOKENIZER_FILES: &[&str] = &[
    "generation_config.json",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer_config.json",
];

fn project() -> Project {
    let p = Project::with_base();
    write_finetune(&TinyLlama::default(), &p.path("models/ft"), 3, 0.2).unwrap();
    p.write("config.yml", CONFIG);
    p
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs `yibuild merge config.yml OUT ARGS...` and asserts it succeeded.
fn merge(p: &Project, out: &str, args: &[&str]) -> std::process::Output {
    let mut all = vec!["merge", "config.yml", out];
    all.extend_from_slice(args);
    let o = p.run(&all);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    o
}

fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// Each shard's tensors (name, bytes) in file order, read from the headers.
fn shard_tensors(dir: &Path, shard: &str) -> Vec<(String, u64)> {
    let bytes = std::fs::read(dir.join(shard)).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    assert_eq!(header["__metadata__"], serde_json::json!({"format": "pt"}));
    let mut tensors: Vec<(u64, String, u64)> = header
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .map(|(k, v)| {
            let start = v["data_offsets"][0].as_u64().unwrap();
            let end = v["data_offsets"][1].as_u64().unwrap();
            (start, k.clone(), end - start)
        })
        .collect();
    tensors.sort();
    tensors.into_iter().map(|(_, k, n)| (k, n)).collect()
}

/// Checks mergekit's sharding rule on `dir` for `max` bytes per shard and
/// returns the shard files in order.
fn check_mergekit_shards(dir: &Path, max: u64) -> Vec<String> {
    let index = read_json(&dir.join("model.safetensors.index.json"));
    let map = index["weight_map"].as_object().unwrap();
    let mut shards: Vec<String> = map
        .values()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    shards.dedup();
    let n = shards.len();
    let expected: Vec<String> = (1..=n)
        .map(|i| format!("model-{i:05}-of-{n:05}.safetensors"))
        .collect();
    assert_eq!(
        shards, expected,
        "shards in write order, named like mergekit's"
    );
    let mut total = 0;
    let mut previous: Option<u64> = None;
    for shard in &shards {
        let tensors = shard_tensors(dir, shard);
        for (name, _) in &tensors {
            assert_eq!(map[name], serde_json::json!(shard), "`{name}` in the index");
        }
        let size: u64 = tensors.iter().map(|t| t.1).sum();
        total += size;
        assert!(
            size <= max || tensors.len() == 1,
            "{shard}: {size} bytes in {} tensors exceed {max}",
            tensors.len()
        );
        if let Some(prev) = previous {
            assert!(
                prev + tensors[0].1 > max,
                "{shard}: `{}` would have fitted in the previous shard",
                tensors[0].0
            );
        }
        previous = Some(size);
    }
    assert_eq!(map.len(), ModelTensors::open(dir).unwrap().names().len());
    assert_eq!(index["metadata"]["total_size"], serde_json::json!(total));
    shards
}

/// Every output tensor's bytes, by name.
fn tensor_bytes(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let m = ModelTensors::open(dir).unwrap();
    m.names()
        .iter()
        .map(|n| (n.clone(), m.bytes(n).unwrap().to_vec()))
        .collect()
}

#[test]
fn mergekit_yamls_full_option_set_writes_the_folder_mergekit_writes() {
    let p = project();
    let out = merge(&p, "out/merged", MERGEKIT_FLAGS);
    let dir = p.path("out/merged");
    let shards = check_mergekit_shards(&dir, 100_000);
    // The fixture is 230,016 bytes of bf16: at least three 100 KB shards.
    assert!(shards.len() >= 3, "{shards:?}");
    let mut expected: Vec<String> = [
        "README.md",
        "config.json",
        "mergekit_config.yml",
        "model.safetensors.index.json",
    ]
    .iter()
    .chain(TOKENIZER_FILES)
    .map(|s| s.to_string())
    .chain(shards)
    .collect();
    expected.sort();
    assert_eq!(files(&dir), expected);
    for f in TOKENIZER_FILES {
        assert_eq!(
            std::fs::read(dir.join(f)).unwrap(),
            std::fs::read(p.path("models/base").join(f)).unwrap(),
            "{f} is the base model's"
        );
    }
    assert_eq!(
        read_json(&dir.join("config.json"))["torch_dtype"],
        "bfloat16"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("mergekit_config.yml")).unwrap(),
        CONFIG
    );
    let card = std::fs::read_to_string(dir.join("README.md")).unwrap();
    assert!(card.starts_with("---\n"), "{card}");
    assert!(
        card.contains("\n# merged\n"),
        "titled with the folder name: {card}"
    );
    assert!(card.contains("tags:\n- mergekit\n- merge\n"), "{card}");
    assert!(card.contains(CONFIG.trim_end()), "{card}");
    // Nothing names or leaves the temporary folders the merge went through.
    for f in files(&dir) {
        let text = String::from_utf8_lossy(&std::fs::read(dir.join(&f)).unwrap()).into_owned();
        assert!(
            !text.contains("yibuild-tmp"),
            "{f} names a temporary folder"
        );
    }
    assert_eq!(files(&p.path("out")), ["merged"]);
    assert!(!p.path("yibuild.lock").exists());
    // One line names the ignored performance options, with the reason.
    let err = stderr(&out);
    let notes: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("note: ignoring"))
        .collect();
    assert_eq!(notes.len(), 1, "{err}");
    for flag in [
        "--lazy-unpickle",
        "--low-cpu-memory",
        "--read-to-gpu",
        "--multi-gpu",
        "--gpu-rich",
        "--async-write",
        "--write-threads",
        "--clone-tensors",
        "--trust-remote-code",
        "--lora-merge-cache",
        "--lora-merge-dtype",
    ] {
        assert!(notes[0].contains(flag), "{flag} not named: {}", notes[0]);
    }
    // --cuda gets a clear answer either way.
    assert!(
        err.contains("note: no GPU is usable") || err.contains("note: a CUDA device is present"),
        "{err}"
    );
    // --quiet: no status line.
    assert!(!err.contains("Merged"), "{err}");

    // The performance options change no byte; the seed and the shard size do
    // what they say.
    merge(&p, "plain", &["--random-seed", "42"]);
    assert_eq!(
        files(&p.path("plain"))
            .iter()
            .filter(|f| f.starts_with("model"))
            .count(),
        1
    );
    assert!(!p.path("plain/model.safetensors.index.json").exists());
    assert_eq!(tensor_bytes(&p.path("plain")), tensor_bytes(&dir));
    merge(&p, "seed43", &["--random-seed", "43"]);
    assert_ne!(tensor_bytes(&p.path("seed43")), tensor_bytes(&dir));
}

#[test]
fn no_copy_tokenizer_and_no_model_card_leave_only_config_and_weights() {
    let p = project();
    let o = merge(
        &p,
        "bare",
        &[
            "--no-copy-tokenizer",
            "--no-write-model-card",
            "--out-shard-size",
            "0",
        ],
    );
    assert!(stderr(&o).contains("Merged bare"), "{}", stderr(&o));
    assert_eq!(
        files(&p.path("bare")),
        ["config.json", "model.safetensors"],
        "size 0 never splits"
    );
    // The last of a --x/--no-x pair wins, as with click.
    merge(&p, "both", &["--no-copy-tokenizer", "--copy-tokenizer"]);
    assert!(p.path("both/tokenizer.json").is_file());
}

#[test]
fn a_shard_size_smaller_than_a_tensor_gives_that_tensor_a_shard_of_its_own() {
    let p = project();
    merge(&p, "tiny-shards", &["--out-shard-size", "1k"]);
    let dir = p.path("tiny-shards");
    let shards = check_mergekit_shards(&dir, 1_000);
    let tensors = ModelTensors::open(&dir).unwrap();
    for shard in &shards {
        let in_shard = shard_tensors(&dir, shard);
        if in_shard.iter().any(|(_, bytes)| *bytes > 1_000) {
            assert_eq!(in_shard.len(), 1, "{shard}: {in_shard:?}");
        }
    }
    // Norm vectors (128 bytes) are the only tensors that may share a shard.
    assert!(shards.len() < tensors.names().len() + 1);
    merge(&p, "one-file", &[]);
    assert_eq!(tensor_bytes(&dir), tensor_bytes(&p.path("one-file")));
}

#[test]
fn unknown_options_and_bad_sizes_get_clear_errors() {
    let p = project();
    let o = p.run(&["merge", "config.yml", "out", "--frobnicate"]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(err.contains("unexpected argument '--frobnicate'"), "{err}");
    assert!(
        !err.contains("as a value"),
        "no advice to pass it as a value: {err}"
    );
    let o = p.run(&["merge", "config.yml", "out", "--allow-crime"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("'--allow-crimes'"), "{}", stderr(&o));
    let o = p.run(&["merge", "config.yml", "out", "--out-shard-size", "1.5B"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("`1.5B` is not a shard size"),
        "{}",
        stderr(&o)
    );
    let o = p.run(&["merge", "config.yml", "out", "--no-safe-serialization"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("safetensors only"), "{}", stderr(&o));
    assert!(!p.path("out").exists());
}

#[test]
fn mixing_architectures_needs_allow_crimes() {
    let p = project();
    let ft = p.path("models/ft/config.json");
    let mut config = read_json(&ft);
    config["architectures"] = serde_json::json!(["MistralForCausalLM"]);
    std::fs::write(&ft, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
    let o = p.run(&["merge", "config.yml", "crime"]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(
        err.contains("`./models/base` is LlamaForCausalLM")
            && err.contains("`./models/ft` is MistralForCausalLM")
            && err.contains("--allow-crimes"),
        "{err}"
    );
    assert!(!p.path("crime").exists());
    merge(&p, "crime", &["--allow-crimes"]);
    assert!(p.path("crime/model.safetensors").is_file());
}

#[test]
fn hub_ids_in_the_config_are_fetched_like_recipe_sources() {
    let p = Project::new();
    TinyLlama::default()
        .write(&p.path("upstream/base"))
        .unwrap();
    write_finetune(&TinyLlama::default(), &p.path("upstream/ft"), 3, 0.2).unwrap();
    let server = HubServer::start();
    server.add_repo("org/base", &p.path("upstream/base"), &[], &[]);
    server.add_repo("org/ft", &p.path("upstream/ft"), &["v1"], &[]);
    let config = "merge_method: task_arithmetic\nbase_model: org/base\nmodels:\n  - model: org/ft@v1\n    parameters: {weight: 0.5}\n";
    p.write("hub.yml", config);
    let o = p
        .cmd(&["merge", "hub.yml", "merged", "--transformers-cache", "hf"])
        .env("HF_ENDPOINT", &server.endpoint)
        .env("HF_HUB_CACHE", p.path("elsewhere"))
        .env_remove("HF_TOKEN")
        .env_remove("HF_HOME")
        .env_remove("HF_HUB_OFFLINE")
        .env("HF_TOKEN_PATH", p.path("no-token"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    // --transformers-cache is where the models went.
    assert!(p.path("hf/models--org--base").is_dir());
    assert!(p.path("hf/models--org--ft").is_dir());
    assert!(!p.path("elsewhere").exists());
    let card = std::fs::read_to_string(p.path("merged/README.md")).unwrap();
    assert!(card.contains("base_model:\n- org/base\n"), "{card}");
    // The same merge from local copies gives the same tensors.
    p.write(
        "local.yml",
        &config
            .replace("org/base", "upstream/base")
            .replace("org/ft@v1", "upstream/ft"),
    );
    assert_eq!(
        p.run(&["merge", "local.yml", "local"]).status.code(),
        Some(0)
    );
    assert_eq!(
        tensor_bytes(&p.path("merged")),
        tensor_bytes(&p.path("local"))
    );
    // Nothing beside the config or the output: no lock, no scratch folder.
    assert_eq!(
        files(p.dir.path()),
        ["hf", "hub.yml", "local", "local.yml", "merged", "upstream"]
    );
    // Unknown and malformed references are named.
    p.write("bad.yml", &config.replace("org/ft@v1", "no/such/model"));
    let o = p.run(&["merge", "bad.yml", "bad"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains(
            "model `no/such/model`: no such local directory, and not a Hugging Face Hub id"
        ),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_terminal_shows_bytes_rate_and_eta_and_a_pipe_shows_no_bar() {
    let p = project();
    let (code, bytes) = stderr_on_a_terminal(p.cmd(&["merge", "config.yml", "tty"]), "xterm");
    let text = String::from_utf8_lossy(&bytes);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("Merging [") && text.contains("/s") && text.contains("ETA"),
        "{text:?}"
    );
    assert!(text.contains("KiB/"), "bytes, not tensors: {text:?}");
    let piped = merge(&p, "piped", &[]);
    let err = stderr(&piped);
    assert!(!err.contains("Merging") && !err.contains('\r'), "{err:?}");
    assert_eq!(err.trim(), "Merged piped");
    let (code, bytes) = stderr_on_a_terminal(p.cmd(&["merge", "config.yml", "dumb"]), "dumb");
    assert_eq!(code, 0);
    assert!(!String::from_utf8_lossy(&bytes).contains("Merging"));
}
