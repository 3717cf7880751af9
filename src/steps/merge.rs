//! `merge`: a mergekit configuration (the step body, verbatim) merged by the
//! streaming engine in [`crate::merge`].

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Result;
use serde_json::json;

use super::{InputRef, ParseContext, Reads, Step, StepContext};
use crate::merge::{MergeConfig, MergeOptions, DEFAULT_MEM_BUDGET, DEFAULT_SEED};
use crate::syntax::diag::RecipeError;
use crate::syntax::yaml::Node;

/// A `merge` step: model names in the configuration are sources or steps.
#[derive(Debug, Clone)]
pub struct Merge {
    config: MergeConfig,
    seed: u64,
}

impl Merge {
    /// Parses the step body (a mergekit configuration); the seed is the step's
    /// `seed` key, if any.
    pub fn parse(node: &Node, cx: &ParseContext) -> Result<Merge, RecipeError> {
        let seed = cx.seed;
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
                reads: Reads::EVERYTHING,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::steps::{Artifact, Device};
    use crate::syntax::diag::Diag;

    #[test]
    fn runs_with_source_names_and_thread_count_does_not_change_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let base = crate::fixtures::TinyLlama {
            hidden: 32,
            intermediate: 48,
            vocab: 264,
            tokenizer_vocab: 264,
            ..Default::default()
        };
        base.write(&dir.path().join("yi")).unwrap();
        crate::fixtures::write_finetune(&base, &dir.path().join("tess"), 1, 0.2).unwrap();
        let yaml = "merge_method: dare_ties\nbase_model: yi\nmodels:\n  - model: tess\n    parameters: {weight: 0.5, density: 0.5}\n";
        let diag = Diag::new(std::path::Path::new("recipe.yml"), yaml);
        let node = &crate::syntax::yaml::parse_documents(yaml).unwrap()[0];
        let cx = ParseContext {
            diag: &diag,
            step: "merged",
            seed: Some(42),
            device: crate::steps::Device::Auto,
        };
        let step = Merge::parse(node, &cx).unwrap();
        let names: Vec<String> = step.inputs().into_iter().map(|i| i.name).collect();
        assert_eq!(names, ["yi", "tess"]);
        assert_eq!(step.params()["seed"], 42);
        let inputs: BTreeMap<String, Artifact> = ["yi", "tess"]
            .iter()
            .map(|n| {
                let a = Artifact {
                    path: dir.path().join(n),
                    ..Default::default()
                };
                (n.to_string(), a)
            })
            .collect();
        let sources = inputs
            .iter()
            .map(|(k, a)| (k.clone(), a.path.clone()))
            .collect();
        step.preflight(&sources).unwrap();
        let mut outputs = Vec::new();
        for threads in [1, 2] {
            let out = dir.path().join(format!("out{threads}"));
            std::fs::create_dir(&out).unwrap();
            let ctx = StepContext {
                name: "merged",
                recipe_name: "r",
                inputs: &inputs,
                out_dir: &out,
                threads,
                mem_budget: 1 << 30,
                device: Device::Cpu,
                log: &|_| {},
            };
            step.run(&ctx).unwrap();
            outputs.push(std::fs::read(out.join("model.safetensors")).unwrap());
        }
        assert!(outputs[0] == outputs[1]);
    }
}
