//! Growing or shrinking a model's embedding and lm_head rows to fit a new
//! tokenizer. Every other tensor passes through byte for byte; only the
//! shards holding a resized tensor are rewritten, with the same shard layout.
//!
//! New rows are the mean of the existing rows (what Hugging Face's
//! `resize_token_embeddings(mean_resizing=True)` and mergekit's
//! `pad_to_multiple_of` do): a new token then starts as an "average" token
//! instead of a random or zero vector, which keeps logits sane.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Read;
use std::ops::Range;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::Value as Json;

use super::vocab::ModelRows;
use crate::steps::files::{read_json, write_json};
use crate::tensor::{ModelTensors, TensorInfo};

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
        let mut views = Vec::with_capacity(names.len());
        for name in &names {
            let info = tensors.require(name)?;
            let bytes = tensors.bytes(name)?;
            let view = if targets.contains(name) {
                let tensor = ResizedTensor::new(&tensors, name, info, new_rows)?;
                size_change += safetensors::View::data_len(&tensor) as i64 - bytes.len() as i64;
                tensor
            } else {
                ResizedTensor {
                    dtype: info.dtype.to_safetensors(),
                    shape: info.shape.clone(),
                    kept: bytes,
                    fill: Vec::new(),
                    fill_rows: 0,
                }
            };
            views.push((name.to_string(), view));
        }
        let file = path
            .file_name()
            .context("shard path without a file name")?
            .to_string_lossy()
            .into_owned();
        // serialize_to_file asks each view for its bytes only while writing
        // it, so at most one resized tensor is in memory at a time.
        // TODO(lead): switch to the streaming writer of src/tensor/writer.rs.
        safetensors::serialize_to_file(views, shard_metadata(path)?, &dst.join(&file))
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", dst.join(&file).display()))?;
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
/// Its bytes are assembled only when the writer asks for them.
struct ResizedTensor<'a> {
    dtype: safetensors::Dtype,
    shape: Vec<usize>,
    kept: &'a [u8],
    fill: Vec<u8>,
    fill_rows: usize,
}

impl<'a> ResizedTensor<'a> {
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
        let mut shape = info.shape.clone();
        shape[0] = new_rows;
        Ok(ResizedTensor {
            dtype: info.dtype.to_safetensors(),
            shape,
            kept: &tensors.bytes(name)?[..keep * row_bytes],
            fill,
            fill_rows: new_rows - keep,
        })
    }
}

impl safetensors::View for ResizedTensor<'_> {
    fn dtype(&self) -> safetensors::Dtype {
        self.dtype
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn data(&self) -> Cow<'_, [u8]> {
        if self.fill_rows == 0 {
            return Cow::Borrowed(self.kept);
        }
        let mut out = Vec::with_capacity(self.data_len());
        out.extend_from_slice(self.kept);
        for _ in 0..self.fill_rows {
            out.extend_from_slice(&self.fill);
        }
        Cow::Owned(out)
    }

    fn data_len(&self) -> usize {
        self.kept.len() + self.fill_rows * self.fill.len()
    }
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

/// The `__metadata__` of a safetensors file's header (e.g. `format: pt`).
fn shard_metadata(path: &Path) -> Result<Option<HashMap<String, String>>> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len)?;
    let mut header = vec![0u8; u64::from_le_bytes(len) as usize];
    file.read_exact(&mut header)?;
    let header: Json = serde_json::from_slice(&header)
        .with_context(|| format!("{}: bad safetensors header", path.display()))?;
    Ok(header.get("__metadata__").and_then(|m| {
        m.as_object().map(|o| {
            o.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
                .collect()
        })
    }))
}
