//! Memory-mapped, read-only access to the safetensors shards of a model folder.

use std::collections::BTreeMap;
use std::fs::File;
use std::ops::Range;
use std::path::{Component, Path, PathBuf};

use super::error::{Result, TensorError};
use crate::fs::error::IoContext;
use memmap2::Mmap;

use super::DType;

/// Bytes around a released range that are released too (see
/// [`ModelTensors::release`]).
pub const RELEASE_MARGIN: usize = 4 << 20;

/// Where one tensor lives: its type, shape and byte range inside a shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Storage type.
    pub dtype: DType,
    /// Shape, outermost dimension first (PyTorch order).
    pub shape: Vec<usize>,
    /// Index into [`ModelTensors::shards`].
    pub shard: usize,
    /// Absolute byte range of the data inside the shard file.
    pub range: Range<usize>,
}

impl TensorInfo {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Number of rows when the tensor is seen as a matrix (first dimension; 1 for scalars).
    pub fn rows(&self) -> usize {
        self.shape.first().copied().unwrap_or(1)
    }

    /// Elements per row (product of all dimensions but the first).
    pub fn row_len(&self) -> usize {
        self.shape.iter().skip(1).product()
    }
}

/// The tensors of one model folder (single file or sharded with an index), mapped
/// into memory so that reading a tensor costs page faults, not allocations.
///
/// Opening validates every shard header against its file size, so a truncated
/// download is reported here, before any step starts its heavy work.
pub struct ModelTensors {
    dir: PathBuf,
    shards: Vec<(PathBuf, Mmap)>,
    tensors: BTreeMap<String, TensorInfo>,
    order: Vec<String>,
}

impl std::fmt::Debug for ModelTensors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelTensors")
            .field("dir", &self.dir)
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

/// The safetensors files of a model folder, in load order.
pub fn shard_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let text = std::fs::read_to_string(&index).at("read", &index)?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| TensorError::format(&index, format!("not valid JSON: {e}")))?;
        let Some(map) = json.get("weight_map").and_then(|m| m.as_object()) else {
            return Err(TensorError::format(&index, "missing `weight_map` object"));
        };
        let mut files = Vec::new();
        for (tensor, file) in map {
            files.push(contained_shard(&index, tensor, file)?);
        }
        files.sort();
        files.dedup();
        let paths: Vec<PathBuf> = files.iter().map(|f| dir.join(f)).collect();
        for (p, f) in paths.iter().zip(&files) {
            if !p.is_file() {
                return Err(TensorError::format(
                    dir,
                    format!("shard `{f}` listed in model.safetensors.index.json is missing"),
                ));
            }
        }
        return Ok(paths);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .at("read model folder", dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        let has_bin = std::fs::read_dir(dir)
            .at("read model folder", dir)?
            .filter_map(|e| e.ok())
            .any(|e| e.file_name().to_string_lossy().ends_with(".bin"));
        if has_bin {
            return Err(TensorError::format(
                dir,
                "only pickled PyTorch `.bin` weights found; yibuild reads safetensors only, \
                 because unpickling runs arbitrary code. Convert once with \
                 `python -c \"from transformers import AutoModelForCausalLM as M; \
                 M.from_pretrained('DIR').save_pretrained('DIR', safe_serialization=True)\"`",
            ));
        }
        return Err(TensorError::format(dir, "no .safetensors files found"));
    }
    Ok(files)
}

/// The shard file a `weight_map` entry of `index` names, refused unless it is
/// a relative path that stays inside the model folder: an index from a
/// download or a shared folder must not make yibuild read (and hash into an
/// output) a file elsewhere.
fn contained_shard<'a>(index: &Path, tensor: &str, file: &'a serde_json::Value) -> Result<&'a str> {
    let Some(name) = file.as_str() else {
        return Err(TensorError::format(
            index,
            format!("weight_map entry `{tensor}` must name a shard file, found `{file}`"),
        ));
    };
    let inside = !name.is_empty()
        && !name.contains('\0')
        && Path::new(name)
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    if !inside {
        return Err(TensorError::format(
            index,
            format!(
                "weight_map entry `{tensor}` names shard `{name}`, which is not a file inside \
                 the model folder (absolute paths and `..` are refused)"
            ),
        ));
    }
    Ok(name)
}

impl ModelTensors {
    /// Maps every shard of the model in `dir` and reads their headers.
    pub fn open(dir: &Path) -> Result<ModelTensors> {
        let mut shards = Vec::new();
        let mut tensors = BTreeMap::new();
        let mut order = Vec::new();
        for (shard, path) in shard_files(dir)?.into_iter().enumerate() {
            let file = File::open(&path).at("open", &path)?;
            // SAFETY: the mapping is read-only; cache objects and inputs are never
            // modified in place by yibuild (they are replaced by rename).
            let mmap = unsafe { Mmap::map(&file) }.at("map", &path)?;
            let parsed = safetensors::SafeTensors::deserialize(&mmap).map_err(|e| {
                TensorError::format(
                    &path,
                    format!("not a valid safetensors file ({e}); is it truncated?"),
                )
            })?;
            let (header_len, _) = safetensors::SafeTensors::read_metadata(&mmap)
                .map_err(|e| TensorError::format(&path, e.to_string()))?;
            let data_start = 8 + header_len;
            let mut in_shard: Vec<(usize, String, TensorInfo)> = Vec::new();
            for (name, view) in parsed.tensors() {
                let dtype = DType::from_safetensors(view.dtype())
                    .map_err(|e| TensorError::format(&path, format!("tensor `{name}`: {e}")))?;
                let start = view.data().as_ptr() as usize - mmap.as_ptr() as usize;
                debug_assert!(start >= data_start);
                let info = TensorInfo {
                    dtype,
                    shape: view.shape().to_vec(),
                    shard,
                    range: start..start + view.data().len(),
                };
                in_shard.push((start, name, info));
            }
            in_shard.sort_by_key(|(start, _, _)| *start);
            for (_, name, info) in in_shard {
                if tensors.contains_key(&name) {
                    return Err(TensorError::format(
                        dir,
                        format!("tensor `{name}` appears in two shards"),
                    ));
                }
                order.push(name.clone());
                tensors.insert(name, info);
            }
            shards.push((path, mmap));
        }
        Ok(ModelTensors {
            dir: dir.to_path_buf(),
            shards,
            tensors,
            order,
        })
    }

    /// The model folder these tensors came from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Tensor names in file order (shard by shard, by offset).
    pub fn names(&self) -> &[String] {
        &self.order
    }

    /// Type, shape and location of `name`, if the model has it.
    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.get(name)
    }

    /// Type, shape and location of `name`, or an error naming the model and tensor.
    pub fn require(&self, name: &str) -> Result<&TensorInfo> {
        self.info(name).ok_or_else(|| TensorError::Missing {
            dir: self.dir.clone(),
            name: name.to_owned(),
        })
    }

    /// The shard file paths, in index order.
    pub fn shard_paths(&self) -> impl Iterator<Item = &Path> {
        self.shards.iter().map(|(p, _)| p.as_path())
    }

    /// The raw little-endian bytes of a tensor, straight from the mapping.
    pub fn bytes(&self, name: &str) -> Result<&[u8]> {
        let info = self.require(name)?;
        Ok(&self.shards[info.shard].1[info.range.clone()])
    }

    /// The whole tensor converted to `f32`.
    pub fn read_f32(&self, name: &str) -> Result<Vec<f32>> {
        let rows = self.require(name)?.rows();
        self.read_rows_f32(name, 0..rows)
    }

    /// Rows `rows` of a tensor (first dimension) converted to `f32`: the unit of
    /// chunked, bounded-memory processing.
    pub fn read_rows_f32(&self, name: &str, rows: Range<usize>) -> Result<Vec<f32>> {
        let mut out = vec![0.0; rows.len() * self.require(name)?.row_len()];
        self.read_rows_into(name, rows, &mut out)?;
        Ok(out)
    }

    /// Byte range of rows `rows` of tensor `name` inside its shard mapping.
    fn row_bytes(&self, name: &str, rows: &Range<usize>) -> Result<(usize, Range<usize>)> {
        let info = self.require(name)?;
        let row_bytes = info.row_len() * info.dtype.size();
        let start = info.range.start + rows.start * row_bytes;
        let end = (info.range.start + rows.end * row_bytes).min(info.range.end);
        Ok((info.shard, start..end))
    }

    /// Asks the kernel to start reading rows `rows` of `name` from disk now, so
    /// that I/O overlaps with work on the rows before them.
    pub fn prefetch(&self, name: &str, rows: Range<usize>) {
        if let Ok((shard, range)) = self.row_bytes(name, &rows) {
            // Advice only; a failure changes speed, not results.
            let _ = self.shards[shard].1.advise_range(
                memmap2::Advice::WillNeed,
                range.start,
                range.len(),
            );
        }
    }

    /// Drops this process's mapping of rows `rows` of `name` once they have been
    /// consumed: the pages stay in the page cache but stop counting towards the
    /// process's resident memory, which is what keeps a merge of many large
    /// models within its memory budget.
    ///
    /// One page fault can map a whole page-cache folio (several MiB on recent
    /// kernels), reaching into bytes released earlier, so the released range
    /// extends `RELEASE_MARGIN` bytes beyond the rows on both sides.
    pub fn release(&self, name: &str, rows: Range<usize>) {
        if let Ok((shard, range)) = self.row_bytes(name, &rows) {
            let mapped = self.shards[shard].1.len();
            let range = range.start.saturating_sub(RELEASE_MARGIN)
                ..(range.end + RELEASE_MARGIN).min(mapped);
            // SAFETY: the mapping is read-only and file-backed; MADV_DONTNEED
            // only drops page-table entries, and a later read faults the same
            // bytes back in from the file.
            let _ = unsafe {
                self.shards[shard].1.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    range.start,
                    range.len(),
                )
            };
        }
    }

    /// Like [`read_rows_f32`](Self::read_rows_f32), into a caller-owned buffer of
    /// exactly `rows.len() * row_len` elements.
    pub fn read_rows_into(&self, name: &str, rows: Range<usize>, out: &mut [f32]) -> Result<()> {
        let info = self.require(name)?;
        if rows.end > info.rows() {
            return Err(TensorError::Internal(format!(
                "{}: rows {}..{} of `{name}` requested but it has {} rows",
                self.dir.display(),
                rows.start,
                rows.end,
                info.rows()
            )));
        }
        let row_bytes = info.row_len() * info.dtype.size();
        let start = info.range.start + rows.start * row_bytes;
        let end = info.range.start + rows.end * row_bytes;
        info.dtype
            .decode_into(&self.shards[info.shard].1[start..end], out);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::TinyLlama;

    /// A two-shard model at `model/` and a valid shard copied next to it, at
    /// `outside.safetensors`.
    fn model_and_outside() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("model");
        TinyLlama {
            shards: 2,
            ..Default::default()
        }
        .write(&dir)
        .unwrap();
        let outside = root.path().join("outside.safetensors");
        std::fs::copy(&shard_files(&dir).unwrap()[0], &outside).unwrap();
        (root, dir, outside)
    }

    /// Points the first `weight_map` entry of the model in `dir` at `shard`.
    fn point_first_tensor_at(dir: &Path, shard: serde_json::Value) {
        let index = dir.join("model.safetensors.index.json");
        let mut json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&index).unwrap()).unwrap();
        let map = json["weight_map"].as_object_mut().unwrap();
        let first = map.keys().next().unwrap().clone();
        map.insert(first, shard);
        std::fs::write(&index, serde_json::to_vec(&json).unwrap()).unwrap();
    }

    #[test]
    fn index_entries_outside_the_model_folder_are_refused() {
        let (_root, dir, outside) = model_and_outside();
        for shard in [
            "../outside.safetensors",
            "sub/../../outside.safetensors",
            &outside.display().to_string(),
        ] {
            point_first_tensor_at(&dir, serde_json::json!(shard));
            let err = ModelTensors::open(&dir).unwrap_err().to_string();
            assert!(
                err.starts_with(&format!(
                    "{}: weight_map entry `",
                    dir.join("model.safetensors.index.json").display()
                )) && err.contains(&format!(
                    "names shard `{shard}`, which is not a file inside the model folder"
                )),
                "{err}"
            );
        }
    }

    #[test]
    fn a_non_string_index_entry_is_an_error() {
        let (_root, dir, _) = model_and_outside();
        point_first_tensor_at(&dir, serde_json::json!(7));
        let err = shard_files(&dir).unwrap_err().to_string();
        assert!(err.contains("must name a shard file, found `7`"), "{err}");
    }
}
