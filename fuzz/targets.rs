//! Fuzz targets: each is a function over arbitrary bytes that feeds one
//! reader of outside input and must return (an error is fine) without
//! panicking, hanging or allocating without bound.
//!
//! They are driven on the stable toolchain by `tests/fuzz.rs` (a mutation
//! loop seeded from `fuzz/corpus/<target>/`), so CI runs them with plain
//! `cargo test`.

use std::path::Path;

/// A fuzz target: gets a scratch directory (empty) and the input.
pub type Target = fn(&Path, &[u8]);

/// Every target by name; the name is also its corpus folder.
pub const TARGETS: &[(&str, Target)] = &[
    ("recipe", recipe),
    ("mergekit", mergekit),
    ("safetensors", safetensors),
    ("index", index),
    ("gguf", gguf),
    ("manifest", manifest),
];

/// The recipe parser (YAML, the recipe schema, mergekit-style recipes).
pub fn recipe(scratch: &Path, data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = yibuild::recipe::Recipe::parse(&scratch.join("recipe.yaml"), &text);
}

/// A `yibuild merge` configuration.
pub fn mergekit(scratch: &Path, data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = yibuild::merge::parse_config(&scratch.join("config.yml"), &text);
}

/// A single safetensors file: its header and, when it opens, every tensor.
pub fn safetensors(scratch: &Path, data: &[u8]) {
    std::fs::write(scratch.join("model.safetensors"), data).unwrap();
    read_model(scratch);
}

/// A `model.safetensors.index.json` beside two small valid shards.
pub fn index(scratch: &Path, data: &[u8]) {
    for (file, tensor) in [("a.safetensors", "a"), ("b.safetensors", "b")] {
        std::fs::write(scratch.join(file), small_shard(tensor)).unwrap();
    }
    std::fs::write(scratch.join("model.safetensors.index.json"), data).unwrap();
    read_model(scratch);
}

/// A GGUF file: header, metadata and tensor table, then every tensor decoded.
pub fn gguf(scratch: &Path, data: &[u8]) {
    let path = scratch.join("model.gguf");
    std::fs::write(&path, data).unwrap();
    if let Ok(file) = yibuild::gguf::file::GgufFile::open(&path) {
        for t in &file.tensors {
            let _ = file.dequantize(t);
        }
    }
}

/// An action manifest as a remote cache may deliver it, read back by lookup,
/// verify and a dry-run gc (never materialized: a hostile manifest must not
/// make a fuzz run write outside its scratch folder).
pub fn manifest(scratch: &Path, data: &[u8]) {
    use yibuild::cache::Cache;
    let cache = Cache::open_unlocked(&scratch.join("cache")).unwrap();
    let key = "0".repeat(64);
    cache
        .record_action(&key, &yibuild::cache::manifest::Manifest::default())
        .unwrap();
    let actions = cache.root().join("actions");
    for rel in yibuild::cache::memo::list_files(&actions).unwrap() {
        std::fs::write(actions.join(rel), data).unwrap();
    }
    let _ = cache.lookup(&key);
    let _ = cache.verify(false);
    let _ = cache.gc(true);
}

/// Opens the model in `dir` and reads every tensor it declares.
fn read_model(dir: &Path) {
    if let Ok(model) = yibuild::tensor::ModelTensors::open(dir) {
        for name in model.names().to_vec() {
            let _ = model.read_f32(&name);
        }
    }
}

/// A valid safetensors file holding one f32 tensor `name` of shape [2].
pub fn small_shard(name: &str) -> Vec<u8> {
    let header =
        format!("{{\"{name}\":{{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}}}");
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(&[0, 0, 128, 63, 0, 0, 0, 64]);
    bytes
}
