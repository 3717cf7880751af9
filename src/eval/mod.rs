//! Evaluation of decoder models (Llama family, Qwen2/3, Gemma 2/3, Phi-3):
//! perplexity under the protocols other tools use, and passkey retrieval, on
//! the GPU through cudarc when one is usable (Llama-family layers) and on the
//! CPU otherwise.
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

use model::{ModelConfig, WeightSource};

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

/// Where to run, as requested by the user (`--device`, an eval's `device:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    /// CUDA when a GPU and its libraries are present, the CPU otherwise.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// CUDA; an error without a GPU.
    Cuda,
}

/// What `auto` means on this machine, probed once per process: CUDA when a
/// GPU and its libraries are usable, else the CPU with the reason.
fn machine_device() -> &'static (Device, Option<String>) {
    static PROBED: std::sync::OnceLock<(Device, Option<String>)> = std::sync::OnceLock::new();
    PROBED.get_or_init(|| match cuda::probe() {
        Ok(()) => (Device::Cuda, None),
        Err(why) => (Device::Cpu, Some(format!("{why:#}"))),
    })
}

/// The device a step runs on: its own `device:` when explicit, else
/// `--device` when explicit, else what this machine has. Never `auto`, so
/// that step keys and results name the device that computes.
pub fn resolve_device(step: Device, cli: Device) -> Device {
    match (step, cli) {
        (Device::Auto, Device::Auto) => machine_device().0,
        (Device::Auto, d) | (d, _) => d,
    }
}

/// Why `auto` resolved to the CPU on this machine, when it did.
pub fn no_gpu_reason() -> Option<&'static str> {
    machine_device().1.as_deref()
}

/// Opens the backend for a resolved `device`: CUDA (an error without a
/// usable GPU) or the CPU.
pub fn open_backend<'w>(
    device: Device,
    cfg: &ModelConfig,
    weights: &'w dyn WeightSource,
    threads: usize,
) -> Result<Box<dyn Backend + 'w>> {
    match device {
        Device::Cpu => Ok(Box::new(cpu::CpuModel::new(cfg.clone(), weights, threads)?)),
        Device::Cuda => match cuda::probe() {
            Ok(()) => Ok(Box::new(cuda::CudaModel::new(cfg.clone(), weights)?)),
            Err(why) => bail!("device `cuda` requested but no GPU is usable: {why}"),
        },
        Device::Auto => bail!("internal: the device was not resolved before the step ran"),
    }
}
