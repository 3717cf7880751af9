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

use anyhow::{bail, Result};

use super::engine::{Chunks, Output};
use super::method::Method;
use super::plan::TensorJob;
use super::typed::Globals;

/// Checks a job's parameter values for one method, before anything runs.
pub fn validate(method: Method, job: &TensorJob) -> Result<(), String> {
    for input in &job.inputs {
        if let Some(d) = input.params.density {
            if !(0.0..=1.0).contains(&d) {
                return Err(format!("`density` must be within [0, 1], found {d}"));
            }
            if d == 0.0 && !matches!(method, Method::TaskArithmetic) {
                return Err("`density` 0 would drop every delta; use a positive density".into());
            }
            if let Some(e) = input.params.epsilon {
                if d < 1.0 && (d - e <= 0.0 || d + e >= 1.0) {
                    return Err(format!(
                        "`epsilon` {e} with `density` {d}: density ± epsilon must lie within (0, 1)"
                    ));
                }
            }
        }
    }
    if let Globals::Linear { normalize: true } = job.globals {
        let sum: f64 = job.inputs.iter().filter_map(|i| i.params.weight).sum();
        if sum.abs() < 1e-12 {
            return Err("the weights sum to zero, so `normalize: true` would divide by zero; set `normalize: false`".into());
        }
    }
    Ok(())
}

/// Produces one output tensor.
pub fn run(method: Method, chunks: &Chunks, out: &mut Output) -> Result<()> {
    use Method::*;
    match (method, chunks.job.globals) {
        (Linear, Globals::Linear { normalize }) => linear::linear(chunks, out, normalize),
        (Passthrough, Globals::Passthrough) => linear::passthrough(chunks, out),
        (Nearswap, Globals::Interpolate { t }) => linear::nearswap(chunks, out, t),
        (Slerp, Globals::Interpolate { t }) => spherical::slerp(chunks, out, t),
        (Nuslerp, Globals::Nuslerp { flatten, row_wise }) => {
            spherical::nuslerp(chunks, out, flatten, row_wise)
        }
        (
            Multislerp,
            Globals::Multislerp {
                normalize_weights,
                eps,
            },
        ) => spherical::multislerp(chunks, out, normalize_weights, eps),
        (Karcher, Globals::Karcher { max_iter, tol }) => {
            spherical::karcher(chunks, out, max_iter, tol)
        }
        (ModelStock, Globals::ModelStock { filter_wise }) => {
            model_stock::model_stock(chunks, out, filter_wise)
        }
        (Sce, Globals::Sce { select_topk }) => sce::sce(chunks, out, select_topk),
        (Ram | RamplusTl, Globals::Ram { epsilon, plus }) => ram::run(chunks, out, epsilon, plus),
        (m, Globals::TaskArithmetic(p)) if m.is_task_arithmetic_family() => {
            gta::run(m, &p, chunks, out)
        }
        (m, g) => bail!(
            "internal: merge method `{}` was planned with {g:?}",
            m.name()
        ),
    }
}
