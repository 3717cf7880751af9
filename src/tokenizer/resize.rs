//! Growing or shrinking a model's embedding and lm_head rows to fit a new
//! tokenizer. Every other tensor passes through byte for byte; only the
//! shards holding a resized tensor are rewritten, with the same shard layout.
//!
//! New rows are the mean of the existing rows (what Hugging Face's
//! `resize_token_embeddings(mean_resizing=True)` and mergekit's
//! `pad_to_multiple_of` do): a new token then starts as an "average" token
//! instead of a random or zero vector, which keeps logits sane.

use std::ops::Range;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::Value as Json;

use super::vocab::ModelRows;
use crate::fs::files::{read_json, write_json};
use crate::tensor::{ModelTensors, PlannedTensor, ShardedWriter, TensorInfo};

/// What to do when the tokenizer and the embedding rows disagree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResizePolicy {
    /// Add mean-initialized rows (up to a multiple of `pad_to_multiple_of`).
    Pad,
    /// Drop rows no token uses (down to a multiple of `pad_to_multiple_of`).
    Truncate,
}

impl ResizePolicy {
    /// Parses the recipe spelling.
    pub fn parse(s: &str) -> Option<ResizePolicy> {
        match s {
            "pad" => Some(ResizePolicy::Pad),
            "truncate" => Some(ResizePolicy::Truncate),
            _ => None,
        }
    }

    /// The recipe spelling.
    pub fn name(self) -> &'static str {
        match self {
            ResizePolicy::Pad => "pad",
            ResizePolicy::Truncate => "truncate",
        }
    }
}

/// Rows the model must have for a tokenizer of `tokens` ids.
///
/// Without a policy the rows stay as they are, and fewer rows than tokens is
/// an error naming both numbers. `pad` never shrinks (a padded vocabulary
/// stays padded); `truncate` never cuts a row a token uses.
pub fn target_rows(
    tokens: usize,
    model: &ModelRows,
    policy: Option<ResizePolicy>,
    multiple: Option<usize>,
) -> Result<usize> {
    let rows = model.rows()?;
    let round = |n: usize| multiple.map_or(n, |m| n.div_ceil(m) * m);
    let config = match model.config_vocab {
        Some(v) => format!("config.json vocab_size {v}"),
        None => "no vocab_size in config.json".to_owned(),
    };
    match policy {
        None if tokens > rows => bail!(
            "the new tokenizer has {tokens} tokens but the model has {rows} rows in {} \
             ({config}); add `resize: pad` to add mean-initialized rows",
            model.tensor_names()
        ),
        None if model.config_vocab.is_some_and(|v| v != rows) => bail!(
            "config.json vocab_size is {} but {} has {rows} rows; add `resize: pad` or \
             `resize: truncate` to make them agree",
            model.config_vocab.unwrap_or_default(),
            model.tensor_names()
        ),
        None => Ok(rows),
        Some(ResizePolicy::Pad) => Ok(round(tokens.max(rows))),
        Some(ResizePolicy::Truncate) if tokens > rows => bail!(
            "`resize: truncate` cannot fit {tokens} tokens into {rows} rows of {} ({config}); \
             use `resize: pad`",
            model.tensor_names()
        ),
        Some(ResizePolicy::Truncate) => Ok(round(tokens).min(rows)),
    }
}

/// Writes into `dst` the shards of the model in `src` that hold the embedding
/// or head, with those tensors resized to `new_rows`, plus config.json (with
/// `vocab_size` set) and the shard index. Returns the relative names of the
/// files written, for the caller to link everything else.
pub fn resize_embeddings(src: &Path, dst: &Path, new_rows: usize) -> Result<Vec<String>> {
    let tensors = ModelTensors::open(src)?;
    let mut config = read_json(&src.join("config.json"))?;
    let rows = ModelRows::from_parts(&config, &tensors)?;
    let mut targets = vec![rows.embed.0.clone()];
    targets.extend(rows.head.iter().map(|(n, _)| n.clone()));
    let shard_paths: Vec<&Path> = tensors.shard_paths().collect();
    let mut written = Vec::new();
    let mut size_change: i64 = 0;
    for (shard, path) in shard_paths.iter().enumerate() {
        let names: Vec<&String> = tensors
            .names()
            .iter()
            .filter(|n| tensors.info(n).is_some_and(|i| i.shard == shard))
            .collect();
        if !names.iter().any(|n| targets.contains(n)) {
            continue;
        }
        let mut resized = Vec::with_capacity(names.len());
        for name in &names {
            let info = tensors.require(name)?;
            let tensor = if targets.contains(name) {
                let tensor = ResizedTensor::new(&tensors, name, info, new_rows)?;
                size_change += tensor.byte_len() as i64 - tensors.bytes(name)?.len() as i64;
                tensor
            } else {
                ResizedTensor::unchanged(&tensors, name, info)?
            };
            resized.push(tensor);
        }
        let file = path
            .file_name()
            .context("shard path without a file name")?
            .to_string_lossy()
            .into_owned();
        write_shard(dst, &file, &resized)?;
        written.push(file);
    }
    let index = src.join("model.safetensors.index.json");
    if index.is_file() {
        let mut doc = read_json(&index)?;
        if let Some(total) = doc.pointer_mut("/metadata/total_size") {
            if let Some(old) = total.as_i64() {
                *total = Json::from(old + size_change);
            }
        }
        write_json(&dst.join("model.safetensors.index.json"), &doc)?;
        written.push("model.safetensors.index.json".to_owned());
    }
    let key = if config.get("vocab_size").is_none()
        && config.pointer("/text_config/vocab_size").is_some()
    {
        "/text_config/vocab_size"
    } else {
        "/vocab_size"
    };
    match config.pointer_mut(key) {
        Some(v) => *v = Json::from(new_rows),
        None => {
            config["vocab_size"] = Json::from(new_rows);
        }
    }
    write_json(&dst.join("config.json"), &config)?;
    written.push("config.json".to_owned());
    Ok(written)
}

/// A tensor of a rewritten shard: its first rows borrowed from the input
/// mapping, then `fill_rows` copies of the encoded `fill` row (the mean row).
/// The writer streams it without ever assembling it.
struct ResizedTensor<'a> {
    planned: PlannedTensor,
    kept: &'a [u8],
    fill: Vec<u8>,
    fill_rows: usize,
}

impl<'a> ResizedTensor<'a> {
    /// `name` as it is.
    fn unchanged(
        tensors: &'a ModelTensors,
        name: &str,
        info: &TensorInfo,
    ) -> Result<ResizedTensor<'a>> {
        Ok(ResizedTensor {
            planned: PlannedTensor {
                name: name.to_owned(),
                dtype: info.dtype,
                shape: info.shape.clone(),
            },
            kept: tensors.bytes(name)?,
            fill: Vec::new(),
            fill_rows: 0,
        })
    }

    /// `name` with `new_rows` rows: the first rows kept, new rows set to the
    /// mean of all existing rows (computed in f64, rounded once).
    fn new(
        tensors: &'a ModelTensors,
        name: &str,
        info: &TensorInfo,
        new_rows: usize,
    ) -> Result<ResizedTensor<'a>> {
        let row_bytes = info.row_len() * info.dtype.size();
        let keep = new_rows.min(info.rows());
        let mut fill = Vec::new();
        if new_rows > keep {
            let mean = mean_rows(tensors, name, 0..info.rows())?;
            info.dtype.encode_into(&mean, &mut fill);
        }
        let mut tensor = ResizedTensor::unchanged(tensors, name, info)?;
        tensor.planned.shape[0] = new_rows;
        tensor.kept = &tensor.kept[..keep * row_bytes];
        tensor.fill = fill;
        tensor.fill_rows = new_rows - keep;
        Ok(tensor)
    }

    fn byte_len(&self) -> usize {
        self.kept.len() + self.fill_rows * self.fill.len()
    }
}

/// Streams `tensors` into `dir/file` with the [`ShardedWriter`] (one shard,
/// written under a temporary name first so that no partial file is left
/// under the final one).
fn write_shard(dir: &Path, file: &str, tensors: &[ResizedTensor]) -> Result<()> {
    let staging = dir.join(format!(".resize-{file}"));
    std::fs::create_dir_all(&staging)
        .with_context(|| format!("cannot create {}", staging.display()))?;
    let planned = tensors.iter().map(|t| t.planned.clone()).collect();
    let mut writer = ShardedWriter::create(&staging, planned, u64::MAX)?;
    for tensor in tensors {
        writer.write(tensor.kept)?;
        for _ in 0..tensor.fill_rows {
            writer.write(&tensor.fill)?;
        }
    }
    let written = writer.finish()?;
    let target = dir.join(file);
    std::fs::rename(&written[0], &target)
        .with_context(|| format!("cannot write {}", target.display()))?;
    std::fs::remove_dir(&staging).with_context(|| format!("cannot remove {}", staging.display()))
}

/// The mean of rows `rows` of tensor `name`, read in bounded chunks and
/// summed in f64 so the result does not depend on chunking.
pub fn mean_rows(tensors: &ModelTensors, name: &str, rows: Range<usize>) -> Result<Vec<f32>> {
    const CHUNK_ROWS: usize = 1024;
    let width = tensors.require(name)?.row_len();
    let mut sum = vec![0f64; width];
    let mut buf = Vec::new();
    let mut start = rows.start;
    while start < rows.end {
        let end = (start + CHUNK_ROWS).min(rows.end);
        buf.resize((end - start) * width, 0.0);
        tensors.read_rows_into(name, start..end, &mut buf)?;
        for row in buf.chunks_exact(width) {
            for (s, v) in sum.iter_mut().zip(row) {
                *s += *v as f64;
            }
        }
        start = end;
    }
    let n = rows.len().max(1) as f64;
    Ok(sum.iter().map(|s| (s / n) as f32).collect())
}
