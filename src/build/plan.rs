//! One [`Plan`] per command: the recipe's graph, the targets asked for, and
//! every source and step they need in dependency order. `build`, `plan`,
//! `status`, `explain`, `fetch`, `cache push|pull` and the Slurm workers all
//! start from it, so they agree on what a target means and in which order
//! steps go. Keys are not part of the plan: a step's key needs its inputs'
//! digests, which for step inputs exist only once those are built or found
//! in the cache (see [`crate::build::keys`] and [`crate::build::freshness`]).

use crate::build::error::InputError;
use crate::recipe::graph::BuildGraph;
use crate::recipe::{suggest, Recipe, StepDef};
use crate::syntax::diag::RecipeError;

/// What one command works on.
#[derive(Debug)]
pub struct Plan<'r> {
    /// The recipe.
    pub recipe: &'r Recipe,
    /// Its dependency graph.
    pub graph: BuildGraph,
    /// The targets: those named, or the recipe's defaults, or all leaves.
    pub targets: Vec<String>,
    /// Every source and step the targets need, each after its inputs.
    pub order: Vec<String>,
}

impl<'r> Plan<'r> {
    /// The plan for the targets `named` (the recipe's defaults when empty);
    /// an unknown name is an [`InputError`] with a suggestion.
    pub fn new(recipe: &'r Recipe, named: &[String]) -> Result<Plan<'r>, InputError> {
        let graph = BuildGraph::new(recipe);
        let targets = select_targets(recipe, &graph, named)?;
        let order = graph.plan(recipe, &targets);
        Ok(Plan {
            recipe,
            graph,
            targets,
            order,
        })
    }

    /// The plan that builds one step of `recipe` (a Slurm worker's).
    pub fn for_step(recipe: &'r Recipe, step: &str) -> Plan<'r> {
        let graph = BuildGraph::new(recipe);
        let targets = vec![step.to_owned()];
        let order = graph.plan(recipe, &targets);
        Plan {
            recipe,
            graph,
            targets,
            order,
        }
    }

    /// The planned steps (not sources), in order.
    pub fn steps(&self) -> impl Iterator<Item = &'r StepDef> + '_ {
        self.order.iter().filter_map(|n| self.recipe.step(n))
    }

    /// The sources and steps `name` reads.
    pub fn inputs(&self, name: &str) -> Vec<String> {
        self.graph.inputs(name)
    }
}

/// The targets of a recipe without `default:`: every leaf, except that a
/// `publish` step is replaced by what it publishes. Uploading is never a side
/// effect of a plain build; it happens when a publish step is named (on the
/// command line, in `default:`) or by `yibuild publish`.
fn implicit_targets(recipe: &Recipe, graph: &BuildGraph) -> Vec<String> {
    let mut targets: Vec<String> = Vec::new();
    for leaf in graph.leaves(recipe) {
        let names = match recipe.step(&leaf) {
            Some(s) if s.step.kind() == "publish" => {
                s.step.inputs().into_iter().map(|i| i.name).collect()
            }
            _ => vec![leaf],
        };
        for name in names {
            if recipe.step(&name).is_some() && !targets.contains(&name) {
                targets.push(name);
            }
        }
    }
    targets
}

/// The targets to build: those named, or the recipe's defaults, or all
/// leaves but publish steps.
fn select_targets(
    recipe: &Recipe,
    graph: &BuildGraph,
    named: &[String],
) -> Result<Vec<String>, InputError> {
    if named.is_empty() {
        return Ok(if recipe.default.is_empty() {
            implicit_targets(recipe, graph)
        } else {
            recipe.default.clone()
        });
    }
    let mut selected = Vec::new();
    for t in named {
        if let Some(steps) = recipe.resolve_target(t) {
            selected.extend(steps);
        } else {
            let names = recipe.steps.iter().map(|s| s.name.as_str());
            let hint = suggest(RecipeError::file(&recipe.file, ""), t, names).help;
            return Err(InputError::UnknownStep {
                recipe: recipe.file.clone(),
                name: t.clone(),
                hint,
            });
        }
    }
    Ok(selected)
}
