//! Streams a Hugging Face model folder into GGUF files: tensors are read
//! through the safetensors mmap in slabs of rows, quantized on a thread pool,
//! and written in declaration order straight to the output file. Memory is
//! bounded by a window of slabs (about `2 × threads × 16 MiB` of f32), never by
//! the model size, and the output bytes do not depend on the thread count.
//!
//! A [`Conversion`] (config, tensor plan, tokenizer metadata) is built once
//! and reused for every preset written from the same model.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rayon::prelude::*;

use super::convert::{plan_tensors, Arch, HParams, PlannedTensor, Source};
use super::file::{GgufWriter, TensorDesc, Value};
use super::imatrix::Imatrix;
use super::mixture::{is_quantizable, tensor_type, MixtureModel, Preset, Role};
use super::quants::quantize_rows;
use super::tokenizer::vocab_metadata;
use super::types::GgmlType;
use crate::tensor::{DType, ModelTensors};

/// Elements per slab: the unit of parallel work (16 MiB of f32).
const SLAB_ELEMS: usize = 1 << 22;

/// A model folder read and mapped to GGUF, ready to be written as any preset.
#[derive(Debug)]
pub struct Conversion {
    /// Hyperparameters from config.json.
    pub hparams: HParams,
    /// Output tensors in declaration order.
    pub tensors: Vec<PlannedTensor>,
    /// `general.*` (except file type), architecture and tokenizer keys.
    pub metadata: Vec<(String, Value)>,
    model: ModelTensors,
}

/// The outcome of writing one file.
#[derive(Debug, Clone, PartialEq)]
pub struct Written {
    /// The file.
    pub path: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
    /// Tensor count per type.
    pub types: Vec<(GgmlType, usize)>,
}

impl Conversion {
    /// Reads config, tokenizer and tensor index of the model folder `dir`,
    /// checking everything that can be checked before the first byte is written.
    /// `name` becomes `general.name`.
    pub fn open(dir: &Path, name: &str) -> Result<Conversion> {
        let (hparams, config) = HParams::read(dir)?;
        let model = ModelTensors::open(dir)?;
        let tensors = plan_tensors(&hparams, &model)?;
        let mut metadata = vec![
            (
                "general.architecture".to_owned(),
                Value::String(hparams.arch.name().into()),
            ),
            ("general.type".to_owned(), Value::String("model".into())),
            ("general.name".to_owned(), Value::String(name.to_owned())),
        ];
        metadata.extend(hparams.metadata()?.into_iter().skip(1));
        metadata.extend(vocab_metadata(
            dir,
            hparams.arch,
            hparams.config.vocab,
            &config,
        )?);
        Ok(Conversion {
            hparams,
            tensors,
            metadata,
            model,
        })
    }

    fn mixture_model(&self, has_imatrix: bool) -> MixtureModel {
        let (arch, c) = (self.hparams.arch, &self.hparams.config);
        MixtureModel {
            n_layer: c.layers,
            n_gqa: c.heads / c.kv_heads,
            is_70b: arch == Arch::Llama && c.layers == 80 && c.heads != c.kv_heads,
            tied_embeddings: !self.tensors.iter().any(|t| t.name == "output.weight"),
            has_imatrix,
        }
    }

    /// The type each tensor gets under `preset` (llama-quantize's rules, which
    /// for some presets depend on whether an importance matrix is given).
    pub fn tensor_types(&self, preset: Preset, has_imatrix: bool) -> Vec<GgmlType> {
        let model = self.mixture_model(has_imatrix);
        self.tensors
            .iter()
            .map(|t| {
                if is_quantizable(&t.name, t.ne.len()) {
                    tensor_type(
                        preset,
                        &model,
                        Role::of(&t.name),
                        t.layer.unwrap_or(0),
                        t.row_len(),
                    )
                } else {
                    GgmlType::F32
                }
            })
            .collect()
    }

    /// Writes the model as `preset` to `path` using `pool`; `imatrix` (with the
    /// name recorded in the metadata) weights the quantization error.
    pub fn write(
        &self,
        path: &Path,
        preset: Preset,
        imatrix: Option<(&Imatrix, &str)>,
        pool: &rayon::ThreadPool,
        log: &(dyn Fn(&str) + Sync),
    ) -> Result<Written> {
        let types = self.tensor_types(preset, imatrix.is_some());
        let mut weights: Vec<Option<&[f32]>> = vec![None; self.tensors.len()];
        if let Some((im, _)) = imatrix {
            for (i, (t, ty)) in self.tensors.iter().zip(&types).enumerate() {
                let Some(w) = im.entries.get(&t.name) else {
                    continue;
                };
                if !ty.is_quantized() {
                    continue;
                }
                if w.len() != t.row_len() {
                    if t.name == "token_embd.weight" {
                        continue;
                    }
                    bail!(
                        "imatrix entry `{}` has {} values but the tensor has {} columns",
                        t.name,
                        w.len(),
                        t.row_len()
                    );
                }
                weights[i] = Some(w.as_slice());
            }
        }
        let mut metadata = self.metadata.clone();
        let at = metadata
            .iter()
            .position(|(k, _)| k == "general.name")
            .map_or(0, |p| p + 1);
        metadata.insert(
            at,
            ("general.file_type".into(), Value::U32(preset.file_type())),
        );
        metadata.insert(
            at + 1,
            ("general.quantization_version".into(), Value::U32(2)),
        );
        if let Some((im, name)) = imatrix {
            metadata.push((
                "quantize.imatrix.file".into(),
                Value::String(name.to_owned()),
            ));
            metadata.push((
                "quantize.imatrix.entries_count".into(),
                Value::U32(im.entries.len() as u32),
            ));
            if let Some(c) = im.chunks {
                metadata.push(("quantize.imatrix.chunks_count".into(), Value::U32(c as u32)));
            }
            if let Some(d) = im.datasets.first() {
                metadata.push(("quantize.imatrix.dataset".into(), Value::String(d.clone())));
            }
        }
        let descs: Vec<TensorDesc> = self
            .tensors
            .iter()
            .zip(&types)
            .map(|(t, ty)| TensorDesc {
                name: t.name.clone(),
                ty: *ty,
                ne: t.ne.clone(),
            })
            .collect();
        let mut writer = GgufWriter::create(path, &metadata, &descs)
            .with_context(|| format!("cannot start {}", path.display()))?;
        let windows = 2 * pool.current_num_threads();
        for (i, (t, ty)) in self.tensors.iter().zip(&types).enumerate() {
            self.write_tensor(t, *ty, weights[i], windows, pool, &mut writer)
                .with_context(|| format!("tensor `{}` ({} → {ty})", t.name, t.source_name()))?;
            log(&format!(
                "[{}/{}] {:<28} {:>6}",
                i + 1,
                self.tensors.len(),
                t.name,
                ty.name()
            ));
        }
        let path = writer
            .finish()
            .with_context(|| format!("cannot finish {}", path.display()))?;
        let mut counts: Vec<(GgmlType, usize)> = Vec::new();
        for ty in &types {
            match counts.iter_mut().find(|(t, _)| t == ty) {
                Some((_, n)) => *n += 1,
                None => counts.push((*ty, 1)),
            }
        }
        counts.sort();
        Ok(Written {
            bytes: std::fs::metadata(&path)?.len(),
            path,
            types: counts,
        })
    }

    fn write_tensor(
        &self,
        t: &PlannedTensor,
        ty: GgmlType,
        imatrix: Option<&[f32]>,
        window: usize,
        pool: &rayon::ThreadPool,
        writer: &mut GgufWriter,
    ) -> Result<()> {
        let (row_len, rows) = (t.row_len(), t.rows());
        let source = match &t.source {
            Source::Generated(_, values) => {
                let mut out = Vec::new();
                quantize_rows(ty, values, row_len, None, &mut out)?;
                writer.write_data(&out)?;
                return Ok(());
            }
            Source::Hf(name) => name,
        };
        if t.ne.len() == 1 {
            let mut values = self.model.read_f32(source)?;
            if t.shift != 0.0 {
                // The converter adds in the tensor's own type when that is
                // f16 (it widens only other types to f32 first).
                let f16 = self.model.require(source)?.dtype == DType::F16;
                for v in &mut values {
                    *v += t.shift;
                    if f16 {
                        *v = half::f16::from_f32(*v).to_f32();
                    }
                }
            }
            let mut out = Vec::new();
            quantize_rows(ty, &values, row_len, None, &mut out)?;
            writer.write_data(&out)?;
            return Ok(());
        }
        // Slabs of at most SLAB_ELEMS, and at least two per thread so that a
        // tensor smaller than `threads` slabs still keeps every thread busy.
        let threads = pool.current_num_threads();
        let per_slab = (SLAB_ELEMS / row_len)
            .min(rows.div_ceil(2 * threads))
            .max(1);
        let starts: Vec<usize> = (0..rows).step_by(per_slab).collect();
        for group in starts.chunks(window) {
            let outs: Vec<Result<Vec<u8>>> = pool.install(|| {
                group
                    .par_iter()
                    .map(|&start| {
                        let end = (start + per_slab).min(rows);
                        let mut x = vec![0.0f32; (end - start) * row_len];
                        if t.permute_heads.is_some() {
                            for (r, dst) in (start..end).zip(x.chunks_exact_mut(row_len)) {
                                let src = t.source_row(r);
                                self.model.read_rows_into(source, src..src + 1, dst)?;
                            }
                        } else {
                            self.model.read_rows_into(source, start..end, &mut x)?;
                        }
                        let mut out = Vec::new();
                        quantize_rows(ty, &x, row_len, imatrix, &mut out)?;
                        Ok(out)
                    })
                    .collect()
            });
            for out in outs {
                writer.write_data(&out?)?;
            }
        }
        release_pages(self.model.bytes(source)?);
        Ok(())
    }
}

/// Tells the kernel the mapped pages of a finished tensor are not needed
/// again, so the resident set stays near one window of slabs instead of
/// growing to the model size (the pages are re-read from the file if touched).
fn release_pages(bytes: &[u8]) {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
    let start = bytes.as_ptr() as usize;
    let aligned = start - start % page;
    let len = start + bytes.len() - aligned;
    // SAFETY: [aligned, aligned + len) lies inside the read-only file mapping
    // that `bytes` borrows from (mappings start on a page boundary); dropping
    // pages of a read-only file mapping only discards cached copies.
    unsafe {
        libc::madvise(aligned as *mut libc::c_void, len, libc::MADV_DONTNEED);
    }
}
