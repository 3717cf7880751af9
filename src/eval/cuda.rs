//! The CUDA backend (cudarc, libraries loaded at run time).
//!
//! cudarc panics when a CUDA library is missing, so [`probe`] checks for the
//! driver, NVRTC and cuBLAS libraries and a device before anything else here
//! touches cudarc.

use anyhow::{bail, Result};

use super::model::{LlamaConfig, WeightSource};
use super::{Backend, Batch};

/// Checks that the CUDA driver, NVRTC and cuBLAS libraries load and that a
/// device exists; the error says which part is missing.
pub fn probe() -> Result<()> {
    // SAFETY: these only try to dlopen the libraries.
    let libs = unsafe {
        [
            ("libcuda (driver)", cudarc::driver::sys::is_culib_present()),
            ("libnvrtc", cudarc::nvrtc::sys::is_culib_present()),
            ("libcublas", cudarc::cublas::sys::is_culib_present()),
        ]
    };
    let missing: Vec<&str> = libs.iter().filter(|(_, ok)| !ok).map(|(n, _)| *n).collect();
    if !missing.is_empty() {
        bail!("cannot load {}", missing.join(", "));
    }
    let count = std::panic::catch_unwind(cudarc::driver::CudaContext::device_count)
        .map_err(|_| anyhow::anyhow!("the CUDA driver failed to initialize"))?
        .map_err(|e| anyhow::anyhow!("the CUDA driver failed to initialize: {e}"))?;
    if count < 1 {
        bail!("the CUDA driver reports no device");
    }
    Ok(())
}

/// A model on the GPU.
pub struct CudaModel;

impl CudaModel {
    /// Uploads the weights.
    pub fn new(_cfg: LlamaConfig, _weights: &dyn WeightSource) -> Result<CudaModel> {
        bail!("the CUDA forward pass is not implemented yet")
    }
}

impl Backend for CudaModel {
    fn kind(&self) -> &'static str {
        "cuda"
    }

    fn device(&self) -> String {
        "cuda".into()
    }

    fn log_probs(&self, _batch: &Batch, _targets: &[(usize, u32)]) -> Result<Vec<f64>> {
        bail!("the CUDA forward pass is not implemented yet")
    }
}
