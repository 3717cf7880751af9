//! Sweep reports: eval results gathered across the instances of a `matrix:`,
//! as a table (one row per variant, one column per metric, the best value of
//! each column marked), `report.json`, and plots of each metric against each
//! axis.
//!
//! Variants are recognized by their instance names (`ppl[density=0.5,w=1.0]`),
//! so a report needs nothing from the recipe but the eval outputs it gathers.
//! Evals of the same variant (one per text, say) share a row; evals that are
//! no instance (the base model's) share the row of the model they evaluated.

pub mod plot;

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

/// Whether a metric is better low (perplexity) or high (passkey accuracy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Goal {
    /// Lower is better.
    Min,
    /// Higher is better.
    Max,
}

impl Goal {
    /// `min` / `max`.
    pub fn name(self) -> &'static str {
        match self {
            Goal::Min => "min",
            Goal::Max => "max",
        }
    }

    /// The goal a metric has by its name: perplexity `min`, the rest `max`.
    pub fn of_metric(metric: &str) -> Goal {
        if metric.starts_with("ppl.") {
            Goal::Min
        } else {
            Goal::Max
        }
    }

    fn better(self, a: f64, b: f64) -> bool {
        match self {
            Goal::Min => a < b,
            Goal::Max => a > b,
        }
    }
}

/// One variant: its axis values and the metrics its evals measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// `density=0.5,w=1.0`, or for evals that are no instance the evaluated
    /// model's name (`results.json`'s `model.name`, else the eval step's).
    pub label: String,
    /// Axis values (JSON numbers, strings or booleans), axes in order.
    pub values: Vec<(String, Value)>,
    /// The eval steps whose results the row holds.
    pub evals: Vec<String>,
    /// Metric name → value.
    pub metrics: BTreeMap<String, f64>,
}

/// The table of a sweep.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepTable {
    /// Axes in order of first appearance.
    pub axes: Vec<String>,
    /// Metric names in order of first appearance.
    pub metrics: Vec<String>,
    /// Rows in the order the evals were gathered.
    pub rows: Vec<Row>,
}

/// Splits an instance name `step[a=1,b=x]` into the step and its axis values
/// (numbers and booleans typed, the rest strings); a plain name has none.
pub fn split_instance(name: &str) -> (&str, Vec<(String, Value)>) {
    let Some((base, rest)) = name.split_once('[') else {
        return (name, Vec::new());
    };
    let values = rest
        .trim_end_matches(']')
        .split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), typed(v)))
        .collect();
    (base, values)
}

fn typed(text: &str) -> Value {
    if let Ok(i) = text.parse::<i64>() {
        return json!(i);
    }
    if let Ok(f) = text.parse::<f64>() {
        return json!(f);
    }
    match text {
        "true" => json!(true),
        "false" => json!(false),
        _ => json!(text),
    }
}

/// The metrics of one eval `results.json`: `ppl.<text>` (perplexity on the
/// text of that name) and `passkey.<length>` (retrieval accuracy). Other
/// fields, `timing` among them, are not read. Perplexity comes first.
pub fn metrics_of(results: &Value) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    let ppl = &results["perplexity"];
    if let (Some(text), Some(v)) = (ppl["text"]["name"].as_str(), ppl["perplexity"].as_f64()) {
        out.push((format!("ppl.{text}"), v));
    }
    for l in results["passkey"]["lengths"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let (Some(len), Some(acc)) = (l["length"].as_u64(), l["accuracy"].as_f64()) {
            out.push((format!("passkey.{len}"), acc));
        }
    }
    out
}

impl SweepTable {
    /// Reads `results.json` of each gathered eval (`(step name, its output
    /// directory)`) into a table.
    pub fn collect(evals: &[(String, &Path)]) -> Result<SweepTable> {
        let mut table = SweepTable {
            axes: Vec::new(),
            metrics: Vec::new(),
            rows: Vec::new(),
        };
        for (name, dir) in evals {
            let path = if dir.is_dir() {
                dir.join("results.json")
            } else {
                dir.to_path_buf()
            };
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("eval `{name}` has no readable {}", path.display()))?;
            let results: Value = serde_json::from_str(&text)
                .with_context(|| format!("{} (eval `{name}`) is not JSON", path.display()))?;
            let metrics = metrics_of(&results);
            if metrics.is_empty() {
                bail!(
                    "{} (eval `{name}`) has neither perplexity nor passkey results",
                    path.display()
                );
            }
            let model = results["model"]["name"].as_str().unwrap_or(name);
            table.add(name, model, metrics)?;
        }
        Ok(table)
    }

    /// Adds eval `name`'s metrics to its variant's row; an eval that is no
    /// instance goes to the row of the `model` it evaluated.
    fn add(&mut self, name: &str, model: &str, metrics: Vec<(String, f64)>) -> Result<()> {
        let (_, values) = split_instance(name);
        let label = if values.is_empty() {
            model.to_owned()
        } else {
            name[name.find('[').map_or(0, |i| i + 1)..name.len() - 1].to_owned()
        };
        for (axis, _) in &values {
            if !self.axes.contains(axis) {
                self.axes.push(axis.clone());
            }
        }
        for (m, _) in &metrics {
            if !self.metrics.contains(m) {
                self.metrics.push(m.clone());
            }
        }
        let row = match self.rows.iter_mut().find(|r| r.label == label) {
            Some(row) => row,
            None => {
                self.rows.push(Row {
                    label: label.clone(),
                    values,
                    evals: Vec::new(),
                    metrics: BTreeMap::new(),
                });
                self.rows.last_mut().expect("just pushed")
            }
        };
        for (m, v) in metrics {
            if row.metrics.insert(m.clone(), v).is_some() {
                bail!(
                    "two evals of variant `{label}` report `{m}` ({} and `{name}`)",
                    row.evals.join(", ")
                );
            }
        }
        row.evals.push(name.to_owned());
        Ok(())
    }

    /// The index of the row with the best value of `metric`, first on ties.
    pub fn best(&self, metric: &str, goal: Goal) -> Option<usize> {
        let mut best: Option<(usize, f64)> = None;
        for (i, row) in self.rows.iter().enumerate() {
            if let Some(&v) = row.metrics.get(metric) {
                if best.is_none_or(|(_, b)| goal.better(v, b)) {
                    best = Some((i, v));
                }
            }
        }
        best.map(|(i, _)| i)
    }

    fn cells(&self, mark: impl Fn(&str) -> String) -> (Vec<String>, Vec<Vec<String>>) {
        let header: Vec<String> = ["variant".to_owned()]
            .into_iter()
            .chain(self.axes.iter().cloned())
            .chain(self.metrics.iter().cloned())
            .collect();
        let bests: Vec<Option<f64>> = self
            .metrics
            .iter()
            .map(|m| {
                self.best(m, Goal::of_metric(m))
                    .map(|i| self.rows[i].metrics[m])
            })
            .collect();
        let rows = self
            .rows
            .iter()
            .map(|row| {
                let mut cells = vec![row.label.clone()];
                for axis in &self.axes {
                    let v = row.values.iter().find(|(a, _)| a == axis);
                    cells.push(v.map_or("—".to_owned(), |(_, v)| crate::syntax::json_text(v)));
                }
                for (m, best) in self.metrics.iter().zip(&bests) {
                    cells.push(match row.metrics.get(m) {
                        None => "—".to_owned(),
                        Some(&v) if Some(v) == *best => mark(&format!("{v:.4}")),
                        Some(v) => format!("{v:.4}"),
                    });
                }
                cells
            })
            .collect();
        (header, rows)
    }

    /// The table as GitHub Markdown, best value of each column in bold.
    pub fn markdown(&self) -> String {
        let (header, rows) = self.cells(|s| format!("**{s}**"));
        let mut out = format!("| {} |\n|", header.join(" | "));
        for i in 0..header.len() {
            out.push_str(if i == 0 { "---|" } else { "---:|" });
        }
        out.push('\n');
        for r in rows {
            out.push_str(&format!("| {} |\n", r.join(" | ")));
        }
        out
    }

    /// The table aligned for a terminal, best value of each column starred.
    pub fn terminal(&self) -> String {
        let (header, rows) = self.cells(|s| format!("{s}*"));
        let widths: Vec<usize> = (0..header.len())
            .map(|i| {
                rows.iter()
                    .map(|r| r[i].chars().count())
                    .chain([header[i].chars().count()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |cells: &[String]| {
            let parts: Vec<String> = cells
                .iter()
                .zip(&widths)
                .enumerate()
                .map(|(i, (c, w))| {
                    if i == 0 {
                        format!("{c:<w$}")
                    } else {
                        format!("{c:>w$}")
                    }
                })
                .collect();
            format!("{}\n", parts.join("  ").trim_end())
        };
        let mut out = line(&header);
        for r in &rows {
            out.push_str(&line(r));
        }
        out.push_str("* best of its column\n");
        out
    }

    /// `report.json`: axes, metrics with their goal and best variant, rows,
    /// and the selected variant if any.
    pub fn to_json(&self, selected: Option<&Selection>) -> Value {
        let metrics: Vec<Value> = self
            .metrics
            .iter()
            .map(|m| {
                let goal = Goal::of_metric(m);
                json!({"name": m, "goal": goal.name(), "best": self.best(m, goal).map(|i| &self.rows[i].label)})
            })
            .collect();
        let rows: Vec<Value> = self
            .rows
            .iter()
            .map(|r| {
                json!({
                    "variant": r.label,
                    "values": r.values.iter().cloned().collect::<serde_json::Map<_, _>>(),
                    "evals": r.evals,
                    "metrics": r.metrics,
                })
            })
            .collect();
        json!({
            "version": 1,
            "axes": self.axes,
            "metrics": metrics,
            "rows": rows,
            "selected": selected.map(|s| json!({"variant": self.rows[s.row].label, "metric": s.metric, "goal": s.goal.name(), "value": self.rows[s.row].metrics[&s.metric]})),
        })
    }
}

/// The variant chosen by `select: {metric, goal}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Selection {
    /// The metric it was chosen on.
    pub metric: String,
    /// Lower or higher is better.
    pub goal: Goal,
    /// Its row in the table.
    pub row: usize,
}

/// Chooses the best row on `metric`; an error when no row has the metric.
pub fn select(table: &SweepTable, metric: &str, goal: Goal) -> Result<Selection> {
    match table.best(metric, goal) {
        Some(row) => Ok(Selection {
            metric: metric.to_owned(),
            goal,
            row,
        }),
        None => bail!(
            "no gathered eval reports `{metric}` (they report: {})",
            table.metrics.join(", ")
        ),
    }
}

/// The table of a `report.json` written by a report step, for `yibuild report`.
pub fn from_report_json(v: &Value) -> SweepTable {
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(str::to_owned))
            .collect()
    };
    let rows = v["rows"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| Row {
            label: r["variant"].as_str().unwrap_or_default().to_owned(),
            values: r["values"]
                .as_object()
                .map(|o| o.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                .unwrap_or_default(),
            evals: strings(&r["evals"]),
            metrics: r["metrics"]
                .as_object()
                .map(|o| {
                    o.iter()
                        .filter_map(|(k, v)| Some((k.clone(), v.as_f64()?)))
                        .collect()
                })
                .unwrap_or_default(),
        })
        .collect();
    SweepTable {
        axes: strings(&v["axes"]),
        metrics: v["metrics"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m["name"].as_str().map(str::to_owned))
            .collect(),
        rows,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A results.json in the eval step's schema, with a `timing` object the
    /// report must ignore.
    fn results(text: &str, ppl: f64, passkey: &[(u64, f64)]) -> Value {
        let lengths: Vec<Value> = passkey
            .iter()
            .map(|(l, a)| json!({"length": l, "accuracy": a, "correct": 0, "trials": 10}))
            .collect();
        json!({
            "version": 1,
            "model": {"name": "m", "digest": "00", "format": "safetensors", "storage": "bfloat16", "architecture": "LlamaForCausalLM", "max_position_embeddings": 128},
            "tokenizer": {"name": "m", "digest": "00", "bytes": 1},
            "device": "cpu",
            "perplexity": {"text": {"name": text, "digest": "00", "bytes": 10}, "protocol": "sliding", "context": 64, "perplexity": ppl, "perplexity_uncertainty": 0.1, "scored_tokens": 100},
            "passkey": {"candidates": 10, "lengths": lengths},
            "timing": {"device": "cpu", "load_seconds": 1.0, "perplexity_tokens_per_second": 99.0}
        })
    }

    fn table(entries: &[(&str, Value)]) -> (tempfile::TempDir, SweepTable) {
        let dir = tempfile::tempdir().unwrap();
        let mut evals = Vec::new();
        for (name, v) in entries {
            let d = dir.path().join(name);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("results.json"), v.to_string()).unwrap();
            evals.push((name.to_string(), d));
        }
        let refs: Vec<(String, &Path)> = evals
            .iter()
            .map(|(n, d)| (n.clone(), d.as_path()))
            .collect();
        let t = SweepTable::collect(&refs).unwrap();
        (dir, t)
    }

    #[test]
    fn rows_per_variant_columns_per_metric_best_marked() {
        let (_d, t) = table(&[
            ("base-ppl", results("wiki", 9.0, &[])),
            (
                "ppl[density=0.5,w=1.0]",
                results("wiki", 7.5, &[(256, 0.5)]),
            ),
            (
                "ppl[density=0.75,w=1.0]",
                results("wiki", 7.25, &[(256, 0.9)]),
            ),
            ("code[density=0.5,w=1.0]", results("code", 3.0, &[])),
        ]);
        assert_eq!(t.axes, ["density", "w"]);
        assert_eq!(t.metrics, ["ppl.wiki", "passkey.256", "ppl.code"]);
        assert_eq!(t.rows.len(), 3);
        assert_eq!(t.rows[1].label, "density=0.5,w=1.0");
        assert_eq!(t.rows[1].metrics["ppl.code"], 3.0);
        assert_eq!(t.rows[1].values[0], ("density".to_owned(), json!(0.5)));
        let md = t.markdown();
        assert_eq!(
            md.lines().collect::<Vec<_>>(),
            [
                "| variant | density | w | ppl.wiki | passkey.256 | ppl.code |",
                "|---|---:|---:|---:|---:|---:|",
                "| m | — | — | 9.0000 | — | — |",
                "| density=0.5,w=1.0 | 0.5 | 1.0 | 7.5000 | 0.5000 | **3.0000** |",
                "| density=0.75,w=1.0 | 0.75 | 1.0 | **7.2500** | **0.9000** | — |",
            ]
        );
        let sel = select(&t, "ppl.wiki", Goal::Min).unwrap();
        assert_eq!(sel.row, 2);
        let j = t.to_json(Some(&sel));
        assert_eq!(j["selected"]["variant"], "density=0.75,w=1.0");
        assert_eq!(j["metrics"][1]["best"], "density=0.75,w=1.0");
        assert_eq!(j["rows"][0]["metrics"]["ppl.wiki"], 9.0);
        let err = select(&t, "ppl.web", Goal::Min).unwrap_err().to_string();
        assert!(err.contains("no gathered eval reports `ppl.web`"), "{err}");
        assert_eq!(from_report_json(&j), t);
        assert!(t.terminal().contains("7.2500*"));
    }

    #[test]
    fn duplicate_metric_in_a_row_and_empty_results_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        std::fs::create_dir_all(&a).unwrap();
        std::fs::write(
            a.join("results.json"),
            results("wiki", 1.0, &[]).to_string(),
        )
        .unwrap();
        let err = SweepTable::collect(&[("x[d=1]".into(), &a), ("y[d=1]".into(), &a)])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("two evals of variant `d=1` report `ppl.wiki`"),
            "{err}"
        );
        std::fs::write(a.join("results.json"), r#"{"version":1,"timing":{}}"#).unwrap();
        let err = SweepTable::collect(&[("x".into(), &a)])
            .unwrap_err()
            .to_string();
        assert!(err.contains("has neither perplexity nor passkey"), "{err}");
    }
}
