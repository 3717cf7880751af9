//! Streaming writer for sharded safetensors model folders.
//!
//! Every tensor's name, type and shape is known before the first byte is
//! written, so each shard's header (which holds all its offsets) is computed up
//! front and the tensor data is then appended in order, chunk by chunk. Nothing
//! larger than one caller-supplied chunk is ever buffered, however big a shard is.
//!
//! Shards follow the Hugging Face layout mergekit writes: one `model.safetensors`
//! when everything fits in one shard, otherwise
//! `model-00001-of-0000N.safetensors` files plus `model.safetensors.index.json`
//! (`metadata.total_size` and a `weight_map` in write order).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::error::{Result, TensorError};
use crate::fs::error::IoContext;
use serde_json::json;

use super::DType;

/// mergekit's default `--out-shard-size`: 5,000,000,000 bytes per shard.
pub const DEFAULT_MAX_SHARD_SIZE: u64 = 5_000_000_000;

/// A tensor the writer will receive, declared before writing starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedTensor {
    /// Tensor name in the checkpoint.
    pub name: String,
    /// Storage type on disk.
    pub dtype: DType,
    /// Shape, outermost dimension first.
    pub shape: Vec<usize>,
}

impl PlannedTensor {
    /// Size of the tensor's data in bytes.
    pub fn byte_len(&self) -> u64 {
        self.shape.iter().product::<usize>() as u64 * self.dtype.size() as u64
    }
}

/// One output file: its name and the tensors (indexes into the plan) it holds.
#[derive(Debug)]
struct Shard {
    file: String,
    tensors: std::ops::Range<usize>,
}

/// Writes planned tensors, in plan order, into sharded safetensors files.
///
/// Call [`write`](Self::write) with consecutive pieces of the data (any split;
/// a piece may span the end of one tensor and the start of the next) and
/// [`finish`](Self::finish) at the end, which checks that every byte arrived.
#[derive(Debug)]
pub struct ShardedWriter {
    dir: PathBuf,
    plan: Vec<PlannedTensor>,
    shards: Vec<Shard>,
    /// Shard currently open, with bytes still owed to it.
    current: Option<(usize, BufWriter<File>, u64)>,
    next_shard: usize,
    /// Index of the tensor being written and bytes of it still to come.
    tensor: usize,
    tensor_left: u64,
}

fn shard_name(i: usize, n: usize) -> String {
    if n == 1 {
        "model.safetensors".to_owned()
    } else {
        format!("model-{:05}-of-{:05}.safetensors", i + 1, n)
    }
}

/// The safetensors header of a shard: JSON padded with spaces to a multiple of
/// 8 bytes so that tensor data starts aligned, as the reference writer does.
fn shard_header(tensors: &[PlannedTensor]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut offset = 0u64;
    for t in tensors {
        let end = offset + t.byte_len();
        header.insert(
            t.name.clone(),
            json!({"dtype": t.dtype.safetensors_name(), "shape": t.shape, "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    let mut text = serde_json::to_vec(&serde_json::Value::Object(header))
        .expect("a map of strings and numbers always serializes");
    while !text.len().is_multiple_of(8) {
        text.push(b' ');
    }
    text
}

impl ShardedWriter {
    /// Plans shards of at most `max_shard_size` data bytes (a tensor larger than
    /// that gets a shard of its own) and prepares to write into `dir`.
    pub fn create(
        dir: &Path,
        plan: Vec<PlannedTensor>,
        max_shard_size: u64,
    ) -> Result<ShardedWriter> {
        let mut seen = std::collections::HashSet::new();
        for t in &plan {
            if !seen.insert(t.name.as_str()) {
                return Err(TensorError::Internal(format!(
                    "tensor `{}` planned twice",
                    t.name
                )));
            }
        }
        let mut ranges = Vec::new();
        let (mut start, mut size) = (0usize, 0u64);
        for (i, t) in plan.iter().enumerate() {
            if i > start && size + t.byte_len() > max_shard_size {
                ranges.push(start..i);
                start = i;
                size = 0;
            }
            size += t.byte_len();
        }
        if start < plan.len() || plan.is_empty() {
            ranges.push(start..plan.len());
        }
        let n = ranges.len();
        let shards = ranges
            .into_iter()
            .enumerate()
            .map(|(i, tensors)| Shard {
                file: shard_name(i, n),
                tensors,
            })
            .collect();
        let mut writer = ShardedWriter {
            dir: dir.to_path_buf(),
            plan,
            shards,
            current: None,
            next_shard: 0,
            tensor: 0,
            tensor_left: 0,
        };
        writer.advance_tensor()?;
        Ok(writer)
    }

    /// The planned shard file names, in order.
    pub fn shard_files(&self) -> Vec<&str> {
        self.shards.iter().map(|s| s.file.as_str()).collect()
    }

    /// Moves to the next tensor with bytes left (skipping empty tensors),
    /// opening its shard if needed.
    fn advance_tensor(&mut self) -> Result<()> {
        while self.tensor_left == 0 && self.tensor < self.plan.len() {
            if self
                .current
                .as_ref()
                .is_none_or(|(s, _, _)| !self.shards[*s].tensors.contains(&self.tensor))
            {
                self.close_shard()?;
                self.open_shard()?;
            }
            self.tensor_left = self.plan[self.tensor].byte_len();
            if self.tensor_left == 0 {
                self.tensor += 1;
            }
        }
        Ok(())
    }

    fn open_shard(&mut self) -> Result<()> {
        let index = self.next_shard;
        let shard = &self.shards[index];
        let path = self.dir.join(&shard.file);
        let file = File::create(&path).at("create", &path)?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        let tensors = &self.plan[shard.tensors.clone()];
        let header = shard_header(tensors);
        out.write_all(&(header.len() as u64).to_le_bytes())
            .and_then(|()| out.write_all(&header))
            .at("write", &path)?;
        let data: u64 = tensors.iter().map(PlannedTensor::byte_len).sum();
        self.current = Some((index, out, data));
        self.next_shard += 1;
        Ok(())
    }

    fn close_shard(&mut self) -> Result<()> {
        if let Some((index, out, left)) = self.current.take() {
            let path = self.dir.join(&self.shards[index].file);
            if left != 0 {
                return Err(TensorError::Internal(format!(
                    "{} closed with {left} bytes missing",
                    path.display()
                )));
            }
            // No fsync here: making outputs durable (temp file, fsync, rename)
            // is the cache's job when it stores a finished step.
            out.into_inner()
                .map_err(|e| e.into_error())
                .at("write", &path)?;
        }
        Ok(())
    }

    /// The name of the tensor the next written byte belongs to.
    pub fn current_tensor(&self) -> Option<&str> {
        self.plan.get(self.tensor).map(|t| t.name.as_str())
    }

    /// Appends the next bytes of data, in plan order.
    pub fn write(&mut self, mut bytes: &[u8]) -> Result<()> {
        while !bytes.is_empty() {
            if self.tensor >= self.plan.len() {
                return Err(TensorError::Internal(format!(
                    "{} bytes written past the last tensor",
                    bytes.len()
                )));
            }
            let take = (self.tensor_left.min(bytes.len() as u64)) as usize;
            let (index, out, left) = self
                .current
                .as_mut()
                .expect("a shard is open while tensors remain");
            out.write_all(&bytes[..take])
                .at("write", &self.dir.join(&self.shards[*index].file))?;
            *left -= take as u64;
            self.tensor_left -= take as u64;
            bytes = &bytes[take..];
            if self.tensor_left == 0 {
                self.tensor += 1;
                self.advance_tensor()?;
            }
        }
        Ok(())
    }

    /// Flushes the last shard, checks every planned byte was written,
    /// and writes `model.safetensors.index.json` when there are several shards.
    /// Returns the files written.
    pub fn finish(mut self) -> Result<Vec<PathBuf>> {
        if let Some(t) = self.plan.get(self.tensor) {
            return Err(TensorError::Internal(format!(
                "writer finished with tensor `{}` incomplete",
                t.name
            )));
        }
        self.close_shard()?;
        let mut files: Vec<PathBuf> = self.shards.iter().map(|s| self.dir.join(&s.file)).collect();
        if self.shards.len() > 1 {
            let mut weight_map = serde_json::Map::new();
            for shard in &self.shards {
                for t in &self.plan[shard.tensors.clone()] {
                    weight_map.insert(t.name.clone(), json!(shard.file));
                }
            }
            let total: u64 = self.plan.iter().map(PlannedTensor::byte_len).sum();
            let index = self.dir.join("model.safetensors.index.json");
            let text = serde_json::to_string_pretty(
                &json!({"metadata": {"total_size": total}, "weight_map": weight_map}),
            )
            .expect("JSON values serialize");
            std::fs::write(&index, text + "\n").at("write", &index)?;
            files.push(index);
        }
        Ok(files)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::ModelTensors;

    fn planned(name: &str, shape: &[usize]) -> PlannedTensor {
        PlannedTensor {
            name: name.into(),
            dtype: DType::F32,
            shape: shape.to_vec(),
        }
    }

    #[test]
    fn streams_chunks_across_tensors_and_shards() {
        let dir = tempfile::tempdir().unwrap();
        let plan = vec![
            planned("a", &[4, 3]),
            planned("b", &[5]),
            planned("c", &[2, 2]),
        ];
        // 48 + 20 bytes exceed 60: `b` starts the second shard, `c` fits with it.
        let mut w = ShardedWriter::create(dir.path(), plan, 60).unwrap();
        assert_eq!(
            w.shard_files(),
            [
                "model-00001-of-00002.safetensors",
                "model-00002-of-00002.safetensors"
            ]
        );
        let values: Vec<f32> = (0..21).map(|i| i as f32).collect();
        let mut bytes = Vec::new();
        DType::F32.encode_into(&values, &mut bytes);
        for piece in bytes.chunks(7) {
            w.write(piece).unwrap();
        }
        let files = w.finish().unwrap();
        assert_eq!(files.len(), 3);
        let m = ModelTensors::open(dir.path()).unwrap();
        assert_eq!(m.read_f32("a").unwrap(), values[..12]);
        assert_eq!(m.read_f32("b").unwrap(), values[12..17]);
        assert_eq!(m.read_f32("c").unwrap(), values[17..]);
        let index: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join("model.safetensors.index.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(index["metadata"]["total_size"], 84);
        assert_eq!(index["weight_map"]["c"], "model-00002-of-00002.safetensors");
    }

    #[test]
    fn single_shard_has_no_index_and_missing_bytes_are_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = ShardedWriter::create(dir.path(), vec![planned("x", &[2])], 1 << 30).unwrap();
        w.write(&[0; 4]).unwrap();
        let err = w.finish().unwrap_err();
        assert!(err.to_string().contains("`x` incomplete"), "{err}");
        let mut w = ShardedWriter::create(dir.path(), vec![planned("x", &[2])], 1 << 30).unwrap();
        w.write(&[0; 8]).unwrap();
        assert_eq!(w.finish().unwrap().len(), 1);
        assert!(dir.path().join("model.safetensors").is_file());
        assert!(!dir.path().join("model.safetensors.index.json").exists());
        assert_eq!(
            ModelTensors::open(dir.path())
                .unwrap()
                .read_f32("x")
                .unwrap(),
            [0.0, 0.0]
        );
    }
}
