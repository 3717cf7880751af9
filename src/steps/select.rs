//! `select`: the model of the variant a sweep report chose, as a model folder
//! a package step can release. The choice travels with it in
//! `yibuild-selection.json`, which the package step turns into a card section
//! naming the sweep the model won.

use anyhow::{bail, Context, Result};
use serde_json::json;

use super::package::refs;
use super::{input_ref, InputRef, ParseContext, Step, StepContext};
use crate::fs::files::{link_tree, read_json, write_json};
use crate::syntax::diag::RecipeError;
use crate::syntax::fields::Fields;
use crate::syntax::yaml::Node;

/// The file a selected model folder carries its choice in.
pub const SELECTION_FILE: &str = "yibuild-selection.json";

/// A `select` step.
#[derive(Debug, Clone)]
pub struct Select {
    report: InputRef,
    models: Vec<InputRef>,
}

impl Select {
    /// Parses `{report: STEP, models: [instances]}`.
    pub fn parse(node: &Node, cx: &ParseContext) -> Result<Select, RecipeError> {
        let f = Fields::new(
            cx.diag,
            node,
            format!("select step `{}`", cx.step),
            &["report", "models"],
        )?;
        f.finish()?;
        let models = refs(&f, "models")?;
        if models.is_empty() {
            return Err(cx.diag.error(
                node.span,
                format!(
                    "select step `{}` needs `models` (e.g. `models: [merged[*]]`)",
                    cx.step
                ),
            ));
        }
        Ok(Select {
            report: input_ref(cx.diag, f.req("report")?, "report")?,
            models,
        })
    }
}

/// The variant part of an instance name: `density=0.5,w=1.0` for
/// `merged[density=0.5,w=1.0]`.
fn variant_of(name: &str) -> Option<&str> {
    let (_, rest) = name.split_once('[')?;
    rest.strip_suffix(']')
}

impl Step for Select {
    fn kind(&self) -> &'static str {
        "select"
    }

    fn version(&self) -> u32 {
        1
    }

    fn inputs(&self) -> Vec<InputRef> {
        std::iter::once(self.report.clone())
            .chain(self.models.iter().cloned())
            .collect()
    }

    fn params(&self) -> serde_json::Value {
        json!({
            "report": self.report.name,
            "models": self.models.iter().map(|m| &m.name).collect::<Vec<_>>(),
        })
    }

    fn run(&self, ctx: &StepContext) -> Result<()> {
        let path = ctx.input(&self.report.name)?.path.join("report.json");
        let report = read_json(&path)
            .with_context(|| format!("`{}` is not a report step", self.report.name))?;
        let Some(variant) = report["selected"]["variant"].as_str() else {
            bail!(
                "report `{}` selects no variant: give it `select: {{metric, goal}}`",
                self.report.name
            );
        };
        let Some(model) = self
            .models
            .iter()
            .find(|m| variant_of(&m.name) == Some(variant))
        else {
            let names: Vec<&str> = self.models.iter().map(|m| m.name.as_str()).collect();
            bail!(
                "report `{}` selected `{variant}`, but no model of that variant is among {}",
                self.report.name,
                names.join(", ")
            );
        };
        link_tree(&ctx.input(&model.name)?.path, ctx.out_dir, &|rel| {
            rel == SELECTION_FILE
        })?;
        let rows = report["rows"].as_array().map_or(0, |r| {
            r.iter()
                .filter(|row| row["values"].as_object().is_some_and(|v| !v.is_empty()))
                .count()
        });
        write_json(
            &ctx.out_dir.join(SELECTION_FILE),
            &json!({
                "sweep": self.report.name,
                "model": model.name,
                "variant": variant,
                "axes": report["axes"],
                "variants": rows,
                "metric": report["selected"]["metric"],
                "goal": report["selected"]["goal"],
                "value": report["selected"]["value"],
            }),
        )?;
        (ctx.log)(&format!("selected {}", model.name));
        Ok(())
    }
}

/// The card paragraph for a model chosen by a sweep, from its selection file.
pub fn card_paragraph(selection: &serde_json::Value) -> String {
    let axes: Vec<&str> = selection["axes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str())
        .collect();
    let best = if selection["goal"] == "max" {
        "highest"
    } else {
        "lowest"
    };
    format!(
        "This model is `{}`, chosen by the sweep `{}` over {} ({} variants) for the {best} `{}` ({:.4}).",
        selection["model"].as_str().unwrap_or_default(),
        selection["sweep"].as_str().unwrap_or_default(),
        axes.join(" × "),
        selection["variants"],
        selection["metric"].as_str().unwrap_or_default(),
        selection["value"].as_f64().unwrap_or(f64::NAN),
    )
}
