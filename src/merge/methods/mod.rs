//! The merge methods, one file per family, behind one dispatch.
//!
//! Every method works on a [`Chunks`] reader (one or more streaming passes over
//! the tensor's inputs) and emits its output rows in order to an [`Output`].

mod gta;
mod linear;
mod model_stock;
mod ram;
mod sce;
mod sparsify;
mod spherical;

use anyhow::Result;

use super::engine::{Chunks, Output};
use super::method::Method;
use super::plan::TensorJob;

/// Checks a job's parameter values for one method, before anything runs.
pub fn validate(method: Method, job: &TensorJob) -> Result<(), String> {
    for input in &job.inputs {
        if let Some(d) = input.num("density") {
            if !(0.0..=1.0).contains(&d) {
                return Err(format!("`density` must be within [0, 1], found {d}"));
            }
            if method.is_task_arithmetic_family()
                && d == 0.0
                && !matches!(method, Method::TaskArithmetic)
            {
                return Err("`density` 0 would drop every delta; use a positive density".into());
            }
            if let (Some(e), Method::Della | Method::DellaLinear) = (input.num("epsilon"), method) {
                if d < 1.0 && (d - e <= 0.0 || d + e >= 1.0) {
                    return Err(format!(
                        "`epsilon` {e} with `density` {d}: density ± epsilon must lie within (0, 1)"
                    ));
                }
            }
        }
    }
    if method.is_task_arithmetic_family() {
        gta::validate_rescale(job.globals.get("rescale"))?;
    }
    if method == Method::Linear && job.flag("normalize") {
        let sum: f64 = job.inputs.iter().filter_map(|i| i.num("weight")).sum();
        if sum.abs() < 1e-12 {
            return Err("the weights sum to zero, so `normalize: true` would divide by zero; set `normalize: false`".into());
        }
    }
    Ok(())
}

/// Produces one output tensor.
pub fn run(method: Method, chunks: &Chunks, out: &mut Output) -> Result<()> {
    use Method::*;
    match method {
        Linear => linear::linear(chunks, out),
        Passthrough => linear::passthrough(chunks, out),
        Nearswap => linear::nearswap(chunks, out),
        TaskArithmetic | Ties | DareTies | DareLinear | Breadcrumbs | BreadcrumbsTies | Della
        | DellaLinear => gta::run(method, chunks, out),
        Slerp => spherical::slerp(chunks, out),
        Nuslerp => spherical::nuslerp(chunks, out),
        Multislerp => spherical::multislerp(chunks, out),
        Karcher => spherical::karcher(chunks, out),
        ModelStock => model_stock::model_stock(chunks, out),
        Sce => sce::sce(chunks, out),
        Ram | RamplusTl => ram::run(method, chunks, out),
    }
}
