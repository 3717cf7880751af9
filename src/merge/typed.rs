//! Parameters resolved for one tensor, typed per method: what the kernels
//! read. The plan fills them from the settings by mergekit's precedence and
//! the method's documented defaults ([`super::method`]), so a kernel never
//! looks a parameter up by name or supplies a default of its own.

use std::collections::BTreeMap;

use super::method::Method;
use super::params::ParamValue;

/// Resolved values by parameter name, as the plan found them for one tensor
/// (given or defaulted; absent only when unset or missing).
pub(super) type Table = BTreeMap<&'static str, ParamValue>;

fn num(table: &Table, name: &str) -> Option<f64> {
    match table.get(name) {
        Some(ParamValue::Num(x)) => Some(*x),
        _ => None,
    }
}

fn flag(table: &Table, name: &str) -> Option<bool> {
    match table.get(name) {
        Some(ParamValue::Bool(b)) => Some(*b),
        _ => None,
    }
}

/// Per-model parameters of one input tensor. A field is `Some` exactly when
/// the method reads that parameter and it was given or has a default.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ModelParams {
    /// `weight`.
    pub weight: Option<f64>,
    /// `density` (task-arithmetic family).
    pub density: Option<f64>,
    /// `gamma` (breadcrumbs).
    pub gamma: Option<f64>,
    /// `epsilon` (della).
    pub epsilon: Option<f64>,
    /// `scale` (passthrough).
    pub scale: Option<f64>,
}

impl ModelParams {
    /// The typed form of a resolved table.
    pub(super) fn from_table(table: &Table) -> ModelParams {
        ModelParams {
            weight: num(table, "weight"),
            density: num(table, "density"),
            gamma: num(table, "gamma"),
            epsilon: num(table, "epsilon"),
            scale: num(table, "scale"),
        }
    }

    /// The weight of an input the method weighs: the plan made a missing one
    /// an error, and the methods without weights never ask.
    pub fn weight(&self) -> f64 {
        self.weight
            .expect("the plan resolves `weight` for every weighted input")
    }

    /// The density of a task-arithmetic-family input (default 1).
    pub fn density(&self) -> f64 {
        self.density
            .expect("the plan resolves `density` for the task-arithmetic family")
    }
}

/// How the task-arithmetic family rescales kept deltas (`rescale`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rescale {
    /// Not at all (`false`).
    None,
    /// mergekit ≥ 0.1 (`true` or `l1`): match the L1 norm of the unmasked
    /// delta, per tensor.
    L1,
    /// The DARE paper (`inverse_density`): divide by the keep probability.
    InverseDensity,
}

/// The global parameters of the task-arithmetic family.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GtaParams {
    /// Divide by the sum of the (elected) weights.
    pub normalize: bool,
    /// Rescaling of kept deltas.
    pub rescale: Rescale,
    /// Scale of the merged task vector.
    pub lambda: f64,
}

/// The global parameters of one tensor, per method.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Globals {
    /// `linear`.
    Linear {
        /// Divide by the sum of the weights.
        normalize: bool,
    },
    /// `slerp` and `nearswap`.
    Interpolate {
        /// The interpolation factor (`t`).
        t: f64,
    },
    /// `nuslerp`.
    Nuslerp {
        /// Whole tensors as one vector (`nuslerp_flatten`).
        flatten: bool,
        /// Rows along dim 0 (`nuslerp_row_wise`).
        row_wise: bool,
    },
    /// `multislerp`.
    Multislerp {
        /// Scale the weights to sum to 1.
        normalize_weights: bool,
        /// Added to norms.
        eps: f64,
    },
    /// `karcher`.
    Karcher {
        /// Iteration limit.
        max_iter: usize,
        /// Convergence tolerance.
        tol: f64,
    },
    /// The task-arithmetic family.
    TaskArithmetic(GtaParams),
    /// `sce`.
    Sce {
        /// Fraction of entries kept by variance.
        select_topk: f64,
    },
    /// `model_stock`.
    ModelStock {
        /// Per row rather than per tensor.
        filter_wise: bool,
    },
    /// `ram` and `ramplus_tl`.
    Ram {
        /// Deltas at most this large count as unchanged.
        epsilon: f64,
        /// `ramplus_tl`'s `r` and `alpha`.
        plus: Option<(f64, f64)>,
    },
    /// `passthrough`.
    Passthrough,
}

impl Globals {
    /// The typed form of a resolved table; `None` when a required value is
    /// missing (which the plan has already reported).
    pub(super) fn from_table(method: Method, table: &Table) -> Option<Globals> {
        use Method::*;
        Some(match method {
            Linear => Globals::Linear {
                normalize: flag(table, "normalize")?,
            },
            Slerp | Nearswap => Globals::Interpolate {
                t: num(table, "t")?,
            },
            Nuslerp => Globals::Nuslerp {
                flatten: flag(table, "nuslerp_flatten")?,
                row_wise: flag(table, "nuslerp_row_wise")?,
            },
            Multislerp => Globals::Multislerp {
                normalize_weights: flag(table, "normalize_weights")?,
                eps: num(table, "eps")?,
            },
            Karcher => Globals::Karcher {
                max_iter: num(table, "max_iter")? as usize,
                tol: num(table, "tol")?,
            },
            TaskArithmetic | Ties | DareTies | DareLinear | Breadcrumbs | BreadcrumbsTies
            | Della | DellaLinear => Globals::TaskArithmetic(GtaParams {
                normalize: flag(table, "normalize")?,
                rescale: match table.get("rescale")? {
                    ParamValue::Bool(false) => Rescale::None,
                    ParamValue::Bool(true) => Rescale::L1,
                    ParamValue::Str(s) if s == "l1" => Rescale::L1,
                    ParamValue::Str(s) if s == "inverse_density" => Rescale::InverseDensity,
                    _ => return None,
                },
                lambda: num(table, "lambda")?,
            }),
            Sce => Globals::Sce {
                select_topk: num(table, "select_topk")?,
            },
            ModelStock => Globals::ModelStock {
                filter_wise: flag(table, "filter_wise")?,
            },
            Ram => Globals::Ram {
                epsilon: num(table, "epsilon")?,
                plus: None,
            },
            RamplusTl => Globals::Ram {
                epsilon: num(table, "epsilon")?,
                plus: Some((num(table, "r")?, num(table, "alpha")?)),
            },
            Passthrough => Globals::Passthrough,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merge::method::ParamDefault;

    /// Every method's defaults alone build its typed globals: no name in
    /// [`Globals::from_table`] is missing from the registry.
    #[test]
    fn every_method_resolves_from_its_defaults() {
        for (name, method) in Method::ALL {
            let mut table = Table::new();
            for spec in method.global_params() {
                let value = match spec.default {
                    ParamDefault::Num(x) => ParamValue::Num(x),
                    ParamDefault::Bool(b) => ParamValue::Bool(b),
                    ParamDefault::Required => ParamValue::Num(0.5),
                    ParamDefault::Unset => continue,
                };
                table.insert(spec.name, value);
            }
            assert!(
                Globals::from_table(*method, &table).is_some(),
                "{name}: {table:?}"
            );
        }
    }
}
