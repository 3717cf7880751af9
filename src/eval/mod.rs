//! Evaluation of Llama-family models: perplexity under the protocols other
//! tools use, and passkey retrieval, on the GPU through cudarc when one is
//! usable and on the CPU otherwise.
//!
//! The forward pass is our own (candle's Llama returns only the last
//! position's logits): [`model`] reads the configuration and exposes weights by
//! Hugging Face name through [`model::WeightSource`]; [`cpu`] and [`cuda`] run
//! the same computation. A [`Batch`] is one window of tokens (the trunk) plus
//! optional branches that each continue the trunk on their own, so several
//! candidate continuations share one pass over a long prompt.

use anyhow::{bail, Result};

pub mod cpu;
pub mod cuda;
pub mod gguf_weights;
mod kernels;
pub mod model;
pub mod passkey;
pub mod perplexity;
pub mod results;

use model::{LlamaConfig, WeightSource};

/// Tokens evaluated in one forward pass: a trunk, and branches that each
/// follow the whole trunk (positions continue after it) without seeing each
/// other.
///
/// Rows are numbered trunk first, then each branch in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    trunk: Vec<u32>,
    branches: Vec<Vec<u32>>,
}

impl Batch {
    /// A plain causal window.
    pub fn window(tokens: Vec<u32>) -> Batch {
        Batch {
            trunk: tokens,
            branches: Vec::new(),
        }
    }

    /// A trunk with branches; empty branches are allowed.
    pub fn with_branches(trunk: Vec<u32>, branches: Vec<Vec<u32>>) -> Batch {
        Batch { trunk, branches }
    }

    /// Number of rows (tokens) in the pass.
    pub fn rows(&self) -> usize {
        self.trunk.len() + self.branches.iter().map(Vec::len).sum::<usize>()
    }

    /// The row of token `j` of branch `b`.
    pub fn branch_row(&self, b: usize, j: usize) -> usize {
        self.trunk.len() + self.branches[..b].iter().map(Vec::len).sum::<usize>() + j
    }

    /// Every token in row order.
    pub fn tokens(&self) -> impl Iterator<Item = u32> + '_ {
        self.trunk
            .iter()
            .chain(self.branches.iter().flatten())
            .copied()
    }

    /// The position of every row.
    pub fn positions(&self) -> Vec<usize> {
        let p = self.trunk.len();
        (0..p)
            .chain(self.branches.iter().flat_map(|b| p..p + b.len()))
            .collect()
    }

    /// The largest position in the pass.
    pub fn max_position(&self) -> usize {
        let longest = self.branches.iter().map(Vec::len).max().unwrap_or(0);
        (self.trunk.len() + longest).saturating_sub(1)
    }

    /// Consecutive query rows in blocks of at most `size`, each with the key
    /// ranges it may attend to (a query additionally sees only rows ≤ its own).
    pub(crate) fn query_blocks(&self, size: usize) -> Vec<QueryBlock> {
        let p = self.trunk.len();
        let mut blocks = Vec::new();
        for r0 in (0..p).step_by(size) {
            let rows = r0..(r0 + size).min(p);
            blocks.push(QueryBlock {
                keys: std::iter::once(0..rows.end).collect(),
                rows,
            });
        }
        let mut start = p;
        for b in &self.branches {
            for r0 in (start..start + b.len()).step_by(size) {
                let rows = r0..(r0 + size).min(start + b.len());
                blocks.push(QueryBlock {
                    keys: vec![0..p, start..rows.end],
                    rows,
                });
            }
            start += b.len();
        }
        blocks
    }
}

/// One block of consecutive query rows and the key rows it may see.
#[derive(Debug, Clone)]
pub(crate) struct QueryBlock {
    /// Query rows (absolute row indices in the batch).
    pub rows: std::ops::Range<usize>,
    /// Key row ranges visible to the block; each query also only sees keys at
    /// rows ≤ its own.
    pub keys: Vec<std::ops::Range<usize>>,
}

/// A device that can run the forward pass.
pub trait Backend {
    /// The device kind (`cpu` or `cuda`), which can change results in the
    /// last digits.
    fn kind(&self) -> &'static str;

    /// A description of the device for timing notes (`cpu, 2 threads`).
    fn device(&self) -> String;

    /// Runs `batch` and returns, for each `(row, token)` target, the natural
    /// log-probability the model assigns to `token` after reading up to `row`.
    fn log_probs(&self, batch: &Batch, targets: &[(usize, u32)]) -> Result<Vec<f64>>;
}

/// Where to run, as requested by the user.
pub use crate::steps::Device;

/// Opens the backend for `device`: CUDA when asked for (an error without a
/// usable GPU), CUDA or CPU for `auto` (saying on `log` why the CPU was chosen),
/// the CPU otherwise.
pub fn open_backend<'w>(
    device: Device,
    cfg: &LlamaConfig,
    weights: &'w dyn WeightSource,
    threads: usize,
    log: &dyn Fn(&str),
) -> Result<Box<dyn Backend + 'w>> {
    let cpu = || -> Result<Box<dyn Backend + 'w>> {
        Ok(Box::new(cpu::CpuModel::new(cfg.clone(), weights, threads)?))
    };
    match device {
        Device::Cpu => cpu(),
        Device::Cuda => match cuda::probe() {
            Ok(()) => Ok(Box::new(cuda::CudaModel::new(cfg.clone(), weights)?)),
            Err(why) => bail!("device `cuda` requested but no GPU is usable: {why}"),
        },
        Device::Auto => match cuda::probe() {
            Ok(()) => Ok(Box::new(cuda::CudaModel::new(cfg.clone(), weights)?)),
            Err(why) => {
                log(&format!("eval: no usable GPU ({why}); running on the CPU"));
                cpu()
            }
        },
    }
}
