//! Running a merge plan: tensor by tensor, in row chunks sized from the memory
//! budget, on a thread pool of a fixed size, with the output streamed to a
//! writer thread.
//!
//! Determinism: every per-element operation is independent of how rows are
//! grouped, and every reduction over a tensor is computed per row in `f64` and
//! then summed over rows in order, so the bytes written do not depend on the
//! thread count or the chunk size.

use std::cell::RefCell;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, sync_channel, Receiver, SyncSender};
use std::sync::Mutex;

use anyhow::{bail, Context, Result};
use rayon::prelude::*;

use super::plan::{InputModel, MergePlan, PlanUnion, TensorJob};
use crate::tensor::{ModelTensors, PlannedTensor, ShardedWriter};
use crate::tokenizer::union::remap_rows;

/// Elements decoded or encoded per parallel task.
const BLOCK: usize = 1 << 16;

/// How a merge runs (nothing here changes the output bytes).
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Worker threads.
    pub threads: usize,
    /// Peak memory the merge should stay under, in bytes.
    pub mem_budget: u64,
    /// Elements per chunk; `None` derives it from the budget (tests set it to
    /// show the output does not depend on it).
    pub chunk_elements: Option<usize>,
    /// Largest output shard in bytes.
    pub max_shard_size: u64,
    /// Told the bytes written so far and the total after each write.
    pub progress: Option<super::Progress>,
}

/// Bytes held per chunk element, per input model: the decoded `f32` copy,
/// the mapped storage pages (until released) and a mask byte.
const BYTES_PER_INPUT: usize = 4 + 2 + 1;
/// Bytes per chunk element besides the inputs: output `f32`, encoded chunks in
/// flight to the writer, and method scratch.
const BYTES_FIXED: usize = 4 + 3 * 4 + 8;

/// Elements per chunk for `inputs` models within `budget` bytes: half of
/// the budget goes to chunk buffers; the rest is headroom for the allocator
/// (buffers are freed and reallocated per chunk), the binary and thread stacks.
pub fn chunk_elements(budget: u64, inputs: usize) -> usize {
    let per_element = BYTES_PER_INPUT * inputs + BYTES_FIXED;
    ((budget / 2) as usize / per_element).max(4096)
}

/// Reads one tensor job's inputs chunk by chunk.
pub struct Chunks<'a> {
    /// The job.
    pub job: &'a TensorJob,
    models: &'a [InputModel],
    /// The union vocabulary and its models' tensors in union order, for jobs
    /// whose rows are re-indexed ([`TensorJob::remapped`]).
    union: Option<(&'a PlanUnion, Vec<&'a ModelTensors>)>,
    chunk_rows: usize,
    /// A tensor that fits in one chunk is decoded once for all passes.
    cache: RefCell<Option<Vec<Vec<f32>>>>,
    /// Decode buffers kept from earlier tensors: reusing them spares the
    /// page faults and zeroing of fresh allocations.
    spare: &'a Mutex<Vec<Vec<f32>>>,
}

impl Drop for Chunks<'_> {
    fn drop(&mut self) {
        if let Some(bufs) = self.cache.get_mut().take() {
            self.spare.lock().expect("spare buffers").extend(bufs);
        }
    }
}

impl Chunks<'_> {
    /// Output rows (1 for a vector).
    pub fn rows(&self) -> usize {
        self.job.rows()
    }

    /// Elements per row.
    pub fn row_len(&self) -> usize {
        self.job.row_len()
    }

    /// Whether the whole tensor is one chunk (so passes reuse one decode).
    pub fn single_chunk(&self) -> bool {
        self.rows() <= self.chunk_rows
    }

    /// The storage rows of input `i` that hold output rows `rows`.
    fn storage_rows(&self, i: usize, rows: &Range<usize>) -> Range<usize> {
        let input = &self.job.inputs[i];
        let info = self.models[input.model]
            .tensors
            .info(&input.tensor)
            .expect("the plan checked every input tensor exists");
        if self.job.shape.len() <= 1 {
            0..info.rows()
        } else {
            rows.clone()
        }
    }

    /// Unmaps output rows `rows` of every input (see
    /// [`crate::tensor::ModelTensors::release`]).
    fn release(&self, rows: Range<usize>) {
        if self.job.remapped {
            return;
        }
        for (i, input) in self.job.inputs.iter().enumerate() {
            let storage = self.storage_rows(i, &rows);
            self.models[input.model]
                .tensors
                .release(&input.tensor, storage);
        }
    }

    /// Calls `f` with each chunk of rows, in order, and every input's values
    /// for those rows as `f32`. Inputs are checked for NaN and infinity.
    pub fn pass(&self, mut f: impl FnMut(Range<usize>, &[Vec<f32>]) -> Result<()>) -> Result<()> {
        let rows = self.rows();
        let row_len = self.row_len();
        if let Some(bufs) = self.cache.borrow().as_ref() {
            return f(0..rows, bufs);
        }
        let mut bufs: Vec<Vec<f32>> = {
            let mut spare = self.spare.lock().expect("spare buffers");
            (0..self.job.inputs.len())
                .map(|_| spare.pop().unwrap_or_default())
                .collect()
        };
        let mut start = 0;
        while start < rows {
            let end = (start + self.chunk_rows).min(rows);
            if end < rows && !self.job.remapped {
                let next = end..(end + self.chunk_rows).min(rows);
                for (i, input) in self.job.inputs.iter().enumerate() {
                    self.models[input.model]
                        .tensors
                        .prefetch(&input.tensor, self.storage_rows(i, &next));
                }
            }
            let elems = (start * row_len)..(end * row_len);
            let remap = self.union.as_ref().filter(|_| self.job.remapped);
            let models = self.models;
            bufs.par_iter_mut().zip(&self.job.inputs).try_for_each(
                |(buf, input)| -> Result<()> {
                    let model = &models[input.model];
                    if let Some((union, tensors)) = remap {
                        let member = union.member(input.model);
                        *buf = remap_rows(&union.vocab, member, tensors, &input.tensor, start..end)
                            .with_context(|| format!("model `{}`", model.name))?;
                        return check_finite(buf, model, &input.tensor, elems.start);
                    }
                    let info = model.tensors.require(&input.tensor)?;
                    let size = info.dtype.size();
                    let bytes =
                        &model.tensors.bytes(&input.tensor)?[elems.start * size..elems.end * size];
                    buf.resize(elems.len(), 0.0);
                    let bad = buf
                        .par_chunks_mut(BLOCK)
                        .zip(bytes.par_chunks(BLOCK * size))
                        .enumerate()
                        .find_map_first(|(b, (out, raw))| {
                            info.dtype.decode_into(raw, out);
                            // A branch-free scan first (it vectorizes); the
                            // position only when something is wrong.
                            let bad = out.iter().fold(false, |bad, v| bad | !v.is_finite());
                            bad.then(|| out.iter().position(|v| !v.is_finite()))
                                .flatten()
                                .map(|p| b * BLOCK + p)
                        });
                    match bad {
                        Some(p) => non_finite(model, &input.tensor, elems.start + p),
                        None => Ok(()),
                    }
                },
            )?;
            self.release(start..end);
            f(start..end, &bufs)?;
            start = end;
        }
        if self.single_chunk() {
            *self.cache.borrow_mut() = Some(bufs);
        } else {
            self.spare.lock().expect("spare buffers").extend(bufs);
        }
        Ok(())
    }
}

/// The error for a NaN or infinity at `element` of a model's tensor.
fn non_finite(model: &InputModel, tensor: &str, element: usize) -> Result<()> {
    bail!(
        "model `{}`: tensor `{tensor}` contains NaN or infinity (element {element})",
        model.name
    )
}

/// Checks re-indexed rows starting at output element `first`.
fn check_finite(values: &[f32], model: &InputModel, tensor: &str, first: usize) -> Result<()> {
    match values.iter().position(|v| !v.is_finite()) {
        Some(p) => non_finite(model, tensor, first + p),
        None => Ok(()),
    }
}

/// Where a method sends its output, chunk by chunk, in row order.
pub struct Output<'a> {
    job: &'a TensorJob,
    tx: &'a SyncSender<Vec<u8>>,
    /// Byte buffers the writer has finished with, to be filled again.
    written_back: &'a Mutex<Receiver<Vec<u8>>>,
    /// The values buffer handed out by [`Output::buffer`], kept across chunks.
    values: &'a Mutex<Vec<f32>>,
    written: usize,
}

impl Output<'_> {
    /// A buffer of `len` values for the method to compute a chunk into,
    /// reused from chunk to chunk (so it holds stale values: the method must
    /// write every one); give it back with [`Output::emit_buffer`].
    pub fn buffer(&mut self, len: usize) -> Vec<f32> {
        let mut v = std::mem::take(&mut *self.values.lock().expect("output buffer"));
        v.resize(len, 0.0);
        v
    }

    /// [`Output::emit`] for a buffer from [`Output::buffer`], which is kept
    /// for the next chunk.
    pub fn emit_buffer(&mut self, values: Vec<f32>) -> Result<()> {
        let sent = self.emit(&values);
        *self.values.lock().expect("output buffer") = values;
        sent
    }

    /// Encodes the next rows of output to the job's dtype and queues them for
    /// writing.
    pub fn emit(&mut self, values: &[f32]) -> Result<()> {
        let dtype = self.job.dtype;
        let recycled = self.written_back.lock().expect("writer channel").try_recv();
        let mut bytes = recycled.unwrap_or_default();
        bytes.resize(values.len() * dtype.size(), 0);
        bytes
            .par_chunks_mut(BLOCK * dtype.size())
            .zip(values.par_chunks(BLOCK))
            .for_each(|(out, v)| dtype.encode_to_slice(v, out));
        self.written += values.len();
        self.tx
            .send(bytes)
            .map_err(|_| anyhow::anyhow!("the output writer stopped"))
    }
}

/// Runs every job of `plan` and writes the tensors into `out_dir`. Returns the
/// tensor files written.
pub fn run(
    plan: &MergePlan,
    out_dir: &Path,
    opts: &EngineOptions,
    log: &(dyn Fn(&str) + Sync),
) -> Result<Vec<PathBuf>> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(opts.threads.max(1))
        .build()
        .context("cannot start the merge thread pool")?;
    let planned: Vec<PlannedTensor> = plan
        .jobs
        .iter()
        .map(|j| PlannedTensor {
            name: j.name.clone(),
            dtype: j.dtype,
            shape: j.shape.clone(),
        })
        .collect();
    let mut writer = ShardedWriter::create(out_dir, planned, opts.max_shard_size)?;
    let (tx, rx) = sync_channel::<Vec<u8>>(2);
    let (give_back, written_back) = channel::<Vec<u8>>();
    let written_back = Mutex::new(written_back);
    let spare = Mutex::new(Vec::new());
    let values = Mutex::new(Vec::new());
    let total = plan.output_bytes();
    let progress = opts.progress.clone();
    std::thread::scope(|scope| {
        let writer_thread = scope.spawn(move || -> Result<ShardedWriter> {
            let mut written = 0;
            for bytes in rx {
                writer.write(&bytes)?;
                written += bytes.len() as u64;
                if let Some(p) = &progress {
                    (p.0)(written, total);
                }
                give_back.send(bytes).ok();
            }
            Ok(writer)
        });
        let computed = pool.install(|| -> Result<()> {
            let total = plan.jobs.len();
            for (n, job) in plan.jobs.iter().enumerate() {
                let elements = opts
                    .chunk_elements
                    .unwrap_or_else(|| chunk_elements(opts.mem_budget, job.inputs.len()));
                let chunks = Chunks {
                    job,
                    models: &plan.models,
                    union: plan.union.as_ref().map(|u| {
                        let tensors = u.members.iter().map(|m| &plan.models[*m].tensors);
                        (u, tensors.collect())
                    }),
                    chunk_rows: (elements / job.row_len().max(1)).max(1),
                    cache: RefCell::new(None),
                    spare: &spare,
                };
                let mut output = Output {
                    job,
                    tx: &tx,
                    written_back: &written_back,
                    values: &values,
                    written: 0,
                };
                super::methods::run(plan.method, &chunks, &mut output)
                    .with_context(|| format!("merging tensor `{}`", job.name))?;
                let expected: usize = job.shape.iter().product();
                if output.written != expected {
                    bail!(
                        "internal: method `{}` wrote {} of {expected} elements of `{}`",
                        plan.method.name(),
                        output.written,
                        job.name
                    );
                }
                if (n + 1) % 64 == 0 || n + 1 == total {
                    log(&format!("merged {}/{total} tensors", n + 1));
                }
            }
            Ok(())
        });
        drop(tx);
        let writer = writer_thread
            .join()
            .map_err(|_| anyhow::anyhow!("the output writer panicked"))?;
        // A writer that failed (a full disk) stopped the merge: its error,
        // with the file and the OS error, is the one to report.
        let writer = writer?;
        computed?;
        Ok(writer.finish()?)
    })
}

/// Runs `f` on every row of a chunk in parallel: `f(row_in_chunk, out_row)`.
pub fn par_rows(out: &mut [f32], row_len: usize, f: impl Fn(usize, &mut [f32]) + Sync + Send) {
    out.par_chunks_mut(row_len.max(1))
        .enumerate()
        .for_each(|(r, row)| f(r, row));
}

/// [`par_rows`] with a scratch value made by `init` once per parallel task
/// rather than per row: `f(row_in_chunk, out_row, scratch)`.
pub fn par_rows_with<T: Send>(
    out: &mut [f32],
    row_len: usize,
    init: impl Fn() -> T + Sync + Send,
    f: impl Fn(usize, &mut [f32], &mut T) + Sync + Send,
) {
    out.par_chunks_mut(row_len.max(1))
        .enumerate()
        .for_each_init(init, |scratch, (r, row)| f(r, row, scratch));
}

/// Adds a per-row statistic of a chunk to running totals, row by row in order,
/// so the totals do not depend on threads or chunking: `f(row_in_chunk)`
/// returns one value per slot of `totals`.
pub fn sum_rows(totals: &mut [f64], rows: usize, f: impl Fn(usize) -> Vec<f64> + Sync + Send) {
    let per_row: Vec<Vec<f64>> = (0..rows).into_par_iter().map(f).collect();
    for row in per_row {
        for (t, v) in totals.iter_mut().zip(row) {
            *t += v;
        }
    }
}
