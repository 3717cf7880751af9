//! `merge`: a mergekit configuration (the step body, verbatim) merged by the
//! streaming engine in [`crate::merge`].

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Result;
use serde_json::json;

use super::{InputRef, ParseContext, Step, StepContext};
use crate::merge::{MergeConfig, MergeOptions, DEFAULT_MEM_BUDGET, DEFAULT_SEED};
use crate::recipe::diag::RecipeError;
use crate::recipe::yaml::Node;

/// A `merge` step: model names in the configuration are sources or steps.
#[derive(Debug, Clone)]
pub struct Merge {
    config: MergeConfig,
    seed: u64,
}

impl Merge {
    /// Parses the step body (a mergekit configuration); `seed` is the step's
    /// `seed` key, if any.
    pub fn parse(node: &Node, cx: &ParseContext, seed: Option<u64>) -> Result<Merge, RecipeError> {
        // The body has no text of its own; its JSON form is valid YAML for
        // `mergekit_config.yml`.
        let text = serde_json::to_string_pretty(&node.to_json()).unwrap_or_default() + "\n";
        Ok(Merge {
            config: MergeConfig::parse(cx.diag, node, &text)?,
            seed: seed.unwrap_or(DEFAULT_SEED),
        })
    }

    fn budget(mem_budget: u64) -> u64 {
        mem_budget.clamp(64 << 20, DEFAULT_MEM_BUDGET)
    }
}

impl Step for Merge {
    fn kind(&self) -> &'static str {
        "merge"
    }

    fn version(&self) -> u32 {
        1
    }

    fn inputs(&self) -> Vec<InputRef> {
        self.config
            .referenced_models()
            .into_iter()
            .map(|m| InputRef {
                name: m.name.clone(),
                span: m.span,
            })
            .collect()
    }

    fn params(&self) -> serde_json::Value {
        json!({"config": self.config.json, "seed": self.seed})
    }

    fn memory_estimate(&self, ctx: &StepContext) -> u64 {
        Self::budget(ctx.mem_budget)
    }

    fn preflight(&self, sources: &BTreeMap<String, PathBuf>) -> Result<()> {
        let referenced = self.config.referenced_models();
        if referenced.iter().all(|m| sources.contains_key(&m.name)) {
            crate::merge::preflight(&self.config, sources, self.seed)?;
        } else {
            // Some inputs are other steps' outputs: check the sources alone.
            for m in referenced {
                if let Some(dir) = sources.get(&m.name) {
                    crate::tensor::ModelTensors::open(dir)
                        .map_err(|e| anyhow::anyhow!("model `{}`: {e:#}", m.name))?;
                }
            }
        }
        Ok(())
    }

    fn run(&self, ctx: &StepContext) -> Result<()> {
        let models: BTreeMap<String, PathBuf> = ctx
            .inputs
            .iter()
            .map(|(name, a)| (name.clone(), a.path.clone()))
            .collect();
        let opts = MergeOptions {
            seed: self.seed,
            threads: ctx.threads.max(1),
            mem_budget: Self::budget(ctx.mem_budget),
            ..MergeOptions::default()
        };
        crate::merge::merge(&self.config, &models, ctx.out_dir, &opts, ctx.log)
    }
}
