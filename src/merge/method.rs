//! The merge methods mergekit users can name, with their parameters and
//! per-method defaults (mergekit 0.1.x's registry, `merge_methods/*.py`).

/// A merge method, as named by `merge_method:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// Weighted average.
    Linear,
    /// Base plus weighted task vectors.
    TaskArithmetic,
    /// TIES: magnitude trim, sign election, disjoint mean.
    Ties,
    /// DARE random drop with TIES sign election.
    DareTies,
    /// DARE random drop, summed.
    DareLinear,
    /// Model breadcrumbs: drop the largest and smallest deltas.
    Breadcrumbs,
    /// Breadcrumbs with TIES sign election.
    BreadcrumbsTies,
    /// DELLA magnitude-ranked random drop with sign election.
    Della,
    /// DELLA without sign election.
    DellaLinear,
    /// Spherical interpolation between two models.
    Slerp,
    /// Weighted slerp of two models (task vectors when a base is given).
    Nuslerp,
    /// Spherical barycentre of several models.
    Multislerp,
    /// Riemannian (Karcher) mean on the sphere.
    Karcher,
    /// Model Stock: interpolation towards the base by the angle of task vectors.
    ModelStock,
    /// SCE: select by variance, calculate weights, erase by sign.
    Sce,
    /// Take a model's value only where it is close to the base.
    Nearswap,
    /// Reinforced agent merging: unique deltas summed, shared averaged.
    Ram,
    /// RAM with overlap-dependent rescaling of unique deltas.
    RamplusTl,
    /// Copy tensors (optionally scaled); layer stacking.
    Passthrough,
}

/// What values a parameter takes; quoted numbers count as numbers, as
/// mergekit 0.1.5 reads them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamKind {
    /// A finite number; a list of numbers is a gradient.
    Number,
    /// A whole number (an iteration count), never a gradient.
    Count,
    /// `true` or `false`.
    Flag,
    /// `rescale`: a flag, or `l1` / `inverse_density`.
    Rescale,
}

/// The default of a parameter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ParamDefault {
    /// Must be given (for every model but the base, for per-model parameters).
    Required,
    /// A number.
    Num(f64),
    /// A boolean.
    Bool(bool),
    /// Absent unless given.
    Unset,
}

/// A parameter a method reads.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ParamSpec {
    /// The name as written under `parameters:`.
    pub name: &'static str,
    /// The values it takes.
    pub kind: ParamKind,
    /// Its default (mergekit's documented one).
    pub default: ParamDefault,
}

const fn required(name: &'static str) -> ParamSpec {
    ParamSpec {
        name,
        kind: ParamKind::Number,
        default: ParamDefault::Required,
    }
}

const fn unset(name: &'static str) -> ParamSpec {
    ParamSpec {
        name,
        kind: ParamKind::Number,
        default: ParamDefault::Unset,
    }
}

const fn num(name: &'static str, default: f64) -> ParamSpec {
    ParamSpec {
        name,
        kind: ParamKind::Number,
        default: ParamDefault::Num(default),
    }
}

const fn count(name: &'static str, default: f64) -> ParamSpec {
    ParamSpec {
        name,
        kind: ParamKind::Count,
        default: ParamDefault::Num(default),
    }
}

const fn flag(name: &'static str, default: bool) -> ParamSpec {
    ParamSpec {
        name,
        kind: ParamKind::Flag,
        default: ParamDefault::Bool(default),
    }
}

const fn rescale(default: bool) -> ParamSpec {
    ParamSpec {
        name: "rescale",
        kind: ParamKind::Rescale,
        default: ParamDefault::Bool(default),
    }
}

/// What a method does with `base_model`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BaseRole {
    /// The method needs a base model.
    Required,
    /// The method uses a base model when given.
    Optional,
    /// The base model, if listed, is one more ordinary input.
    Input,
}

/// Accepted anywhere and ignored, as mergekit does: old recipes on the Hub use them.
pub const LEGACY_PARAMS: &[&str] = &["int8_mask", "embed_slerp"];

/// `normalize`, `rescale` and `lambda` of the task-arithmetic family.
const fn gta_globals(normalize: bool, rescale_default: bool) -> [ParamSpec; 3] {
    [
        flag("normalize", normalize),
        rescale(rescale_default),
        num("lambda", 1.0),
    ]
}

const GTA_PLAIN: [ParamSpec; 3] = gta_globals(false, false);
const GTA_NORMALIZE: [ParamSpec; 3] = gta_globals(true, false);
const GTA_RESCALE: [ParamSpec; 3] = gta_globals(false, true);
const GTA_BOTH: [ParamSpec; 3] = gta_globals(true, true);

impl Method {
    /// Every method with its `merge_method:` name.
    pub const ALL: &'static [(&'static str, Method)] = &[
        ("linear", Method::Linear),
        ("task_arithmetic", Method::TaskArithmetic),
        ("ties", Method::Ties),
        ("dare_ties", Method::DareTies),
        ("dare_linear", Method::DareLinear),
        ("breadcrumbs", Method::Breadcrumbs),
        ("breadcrumbs_ties", Method::BreadcrumbsTies),
        ("della", Method::Della),
        ("della_linear", Method::DellaLinear),
        ("slerp", Method::Slerp),
        ("nuslerp", Method::Nuslerp),
        ("multislerp", Method::Multislerp),
        ("karcher", Method::Karcher),
        ("model_stock", Method::ModelStock),
        ("sce", Method::Sce),
        ("nearswap", Method::Nearswap),
        ("ram", Method::Ram),
        ("ramplus_tl", Method::RamplusTl),
        ("passthrough", Method::Passthrough),
    ];

    /// Looks a `merge_method:` name up.
    pub fn parse(name: &str) -> Option<Method> {
        Self::ALL.iter().find(|(n, _)| *n == name).map(|(_, m)| *m)
    }

    /// The `merge_method:` name.
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, m)| *m == self)
            .map(|(n, _)| *n)
            .expect("every method is listed in ALL")
    }

    /// Whether this is one of the generalized task-arithmetic family.
    pub fn is_task_arithmetic_family(self) -> bool {
        matches!(
            self,
            Method::TaskArithmetic
                | Method::Ties
                | Method::DareTies
                | Method::DareLinear
                | Method::Breadcrumbs
                | Method::BreadcrumbsTies
                | Method::Della
                | Method::DellaLinear
        )
    }

    /// Per-model ("tensor") parameters.
    pub fn model_params(self) -> &'static [ParamSpec] {
        use Method::*;
        match self {
            Linear | Nuslerp | Multislerp => &const { [required("weight")] },
            Karcher => &const { [num("weight", 1.0)] },
            TaskArithmetic | Ties | DareTies | DareLinear => {
                &const { [required("weight"), num("density", 1.0)] }
            }
            Breadcrumbs | BreadcrumbsTies => {
                &const { [required("weight"), num("density", 1.0), num("gamma", 0.01)] }
            }
            Della | DellaLinear => {
                &const {
                    [
                        required("weight"),
                        num("density", 1.0),
                        num("epsilon", 0.15),
                    ]
                }
            }
            Sce => &const { [unset("weight")] },
            Passthrough => &const { [unset("scale")] },
            Slerp | ModelStock | Nearswap | Ram | RamplusTl => &[],
        }
    }

    /// Parameters read once per tensor (never per model).
    pub fn global_params(self) -> &'static [ParamSpec] {
        use Method::*;
        match self {
            Linear => &const { [flag("normalize", true)] },
            Slerp | Nearswap => &const { [required("t")] },
            Nuslerp => {
                &const {
                    [
                        flag("nuslerp_flatten", true),
                        flag("nuslerp_row_wise", false),
                    ]
                }
            }
            Multislerp => &const { [flag("normalize_weights", true), num("eps", 1e-8)] },
            Karcher => &const { [count("max_iter", 10.0), num("tol", 1e-5)] },
            TaskArithmetic | Breadcrumbs | BreadcrumbsTies => &GTA_PLAIN,
            Ties => &GTA_NORMALIZE,
            DareTies | DareLinear | DellaLinear => &GTA_RESCALE,
            Della => &GTA_BOTH,
            Sce => &const { [num("select_topk", 1.0)] },
            ModelStock => &const { [flag("filter_wise", false)] },
            Ram => &const { [num("epsilon", 1e-5)] },
            RamplusTl => &const { [num("r", 0.1), num("alpha", 0.2), num("epsilon", 1e-5)] },
            Passthrough => &[],
        }
    }

    /// The kind of parameter `name`, when the method reads it.
    pub fn param_kind(self, name: &str) -> Option<ParamKind> {
        self.model_params()
            .iter()
            .chain(self.global_params())
            .find(|p| p.name == name)
            .map(|p| p.kind)
    }

    /// The role of `base_model`.
    pub fn base_role(self) -> BaseRole {
        use Method::*;
        match self {
            Linear | Karcher | Passthrough => BaseRole::Input,
            Nuslerp | Multislerp => BaseRole::Optional,
            _ => BaseRole::Required,
        }
    }

    /// Name and paper link for the model card.
    pub fn reference(self) -> (&'static str, &'static str) {
        use Method::*;
        match self {
            Linear => ("Linear", "https://arxiv.org/abs/2203.05482"),
            TaskArithmetic => ("Task Arithmetic", "https://arxiv.org/abs/2212.04089"),
            Ties => ("TIES", "https://arxiv.org/abs/2306.01708"),
            DareTies | DareLinear => ("DARE", "https://arxiv.org/abs/2311.03099"),
            Breadcrumbs | BreadcrumbsTies => {
                ("Model Breadcrumbs", "https://arxiv.org/abs/2312.06795")
            }
            Della | DellaLinear => ("DELLA", "https://arxiv.org/abs/2406.11617"),
            Slerp => ("SLERP", "https://en.wikipedia.org/wiki/Slerp"),
            Nuslerp => ("NuSLERP", "https://en.wikipedia.org/wiki/Slerp"),
            Multislerp => ("Multi-SLERP", "https://github.com/arcee-ai/mergekit"),
            Karcher => ("Karcher Mean", "https://en.wikipedia.org/wiki/Karcher_mean"),
            ModelStock => ("Model Stock", "https://arxiv.org/abs/2403.19522"),
            Sce => ("SCE", "https://arxiv.org/abs/2408.07990"),
            Nearswap => ("NearSwap", "https://github.com/arcee-ai/mergekit"),
            Ram | RamplusTl => ("RAM", "https://arxiv.org/abs/2601.13572"),
            Passthrough => ("Passthrough", "https://github.com/arcee-ai/mergekit"),
        }
    }
}
