//! `report`: gathers the eval results of a sweep into `report.md` (a table,
//! best value per column in bold, and the plot), `report.json`, `report.svg`
//! and `report.png`; with `select`, names the best variant on one metric.

use anyhow::{Context, Result};
use serde_json::json;

use super::package::refs;
use super::{InputRef, ParseContext, Step, StepContext};
use crate::sweep::{self, plot, Goal, SweepTable};
use crate::syntax::diag::RecipeError;
use crate::syntax::fields::Fields;
use crate::syntax::yaml::Node;

/// A `report` step.
#[derive(Debug, Clone)]
pub struct Report {
    evals: Vec<InputRef>,
    select: Option<(String, Goal)>,
}

impl Report {
    /// Parses `{evals: [steps], select: {metric, goal: min|max}}`.
    pub fn parse(node: &Node, cx: &ParseContext) -> Result<Report, RecipeError> {
        let f = Fields::new(
            cx.diag,
            node,
            format!("report step `{}`", cx.step),
            &["evals", "select"],
        )?;
        f.finish()?;
        let evals = refs(&f, "evals")?;
        if evals.is_empty() {
            return Err(cx.diag.error(
                node.span,
                format!(
                    "report step `{}` needs `evals` (e.g. `evals: [ppl[*]]`)",
                    cx.step
                ),
            ));
        }
        let select = match f.opt("select") {
            None => None,
            Some(n) => {
                let s = Fields::new(cx.diag, n, "`select`", &["metric", "goal"])?;
                s.finish()?;
                let metric = s.req_str("metric")?;
                let goal = match s.opt_str("goal")?.as_deref() {
                    None => Goal::of_metric(&metric),
                    Some("min") => Goal::Min,
                    Some("max") => Goal::Max,
                    Some(other) => {
                        return Err(cx.diag.error(
                            s.req("goal")?.span,
                            format!("`goal` must be `min` or `max`, found `{other}`"),
                        ))
                    }
                };
                Some((metric, goal))
            }
        };
        Ok(Report { evals, select })
    }
}

impl Step for Report {
    fn kind(&self) -> &'static str {
        "report"
    }

    fn version(&self) -> u32 {
        1
    }

    fn inputs(&self) -> Vec<InputRef> {
        self.evals.clone()
    }

    fn params(&self) -> serde_json::Value {
        json!({
            "evals": self.evals.iter().map(|e| &e.name).collect::<Vec<_>>(),
            "select": self.select.as_ref().map(|(m, g)| json!({"metric": m, "goal": g.name()})),
        })
    }

    fn run(&self, ctx: &StepContext) -> Result<()> {
        let mut evals = Vec::new();
        for e in &self.evals {
            evals.push((e.name.clone(), ctx.input(&e.name)?.path.as_path()));
        }
        let table = SweepTable::collect(&evals)?;
        let selection = match &self.select {
            Some((metric, goal)) => Some(sweep::select(&table, metric, *goal)?),
            None => None,
        };
        let mut md = format!("# Sweep `{}` of {}\n\n", ctx.name, ctx.recipe_name);
        md.push_str(&table.markdown());
        md.push_str("\nBold: the best value of each column (lowest perplexity, highest passkey accuracy).\n");
        if let Some(s) = &selection {
            md.push_str(&format!(
                "\nSelected: `{}` ({} {} = {:.4}).\n",
                table.rows[s.row].label,
                s.goal.name(),
                s.metric,
                table.rows[s.row].metrics[&s.metric]
            ));
        }
        md.push_str("\n![metrics against each axis](report.svg)\n");
        let write = |name: &str, bytes: &[u8]| {
            std::fs::write(ctx.out_dir.join(name), bytes)
                .with_context(|| format!("cannot write {name}"))
        };
        write("report.md", md.as_bytes())?;
        let mut json = serde_json::to_string_pretty(&table.to_json(selection.as_ref()))?;
        json.push('\n');
        write("report.json", json.as_bytes())?;
        write("report.svg", plot::svg(&table)?.as_bytes())?;
        write("report.png", &plot::png(&table)?)?;
        (ctx.log)(&format!(
            "{} variants, {} metrics",
            table.rows.len(),
            table.metrics.len()
        ));
        Ok(())
    }
}
