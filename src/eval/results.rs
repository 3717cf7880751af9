//! The `results.json` an eval step writes, and the table printed after a build.
//!
//! Everything except the top-level `timing` object is a deterministic function
//! of the inputs, the parameters and the device kind; `timing` (seconds,
//! tokens per second) varies run to run, so consumers that compare or hash
//! results (the package step) must leave it out.

use serde::{Deserialize, Serialize};

use super::passkey::PasskeyResult;
use super::perplexity::PerplexityResult;

/// Format version of `results.json`.
pub const RESULTS_VERSION: u32 = 1;

/// The evaluated model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// The input's name in the recipe.
    pub name: String,
    /// Content digest of the input artifact.
    pub digest: String,
    /// `safetensors` or `gguf`.
    pub format: String,
    /// Storage types of its weights (`bfloat16`, `Q8_0+F32`, ...).
    pub storage: String,
    /// `architectures[0]` of its config.
    pub architecture: String,
    /// `max_position_embeddings`.
    pub max_position_embeddings: usize,
}

/// The tokenizer used and the text it tokenized.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextInfo {
    /// The text source's name in the recipe.
    pub name: String,
    /// Content digest of the text.
    pub digest: String,
    /// Size of the text in bytes.
    pub bytes: usize,
}

/// Perplexity with the text it was measured on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PerplexitySection {
    /// The evaluated text.
    pub text: TextInfo,
    /// The measurement.
    #[serde(flatten)]
    pub result: PerplexityResult,
}

/// Wall-clock figures; not reproducible, kept apart from the results.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Timing {
    /// The device in detail (`cpu, 2 threads`).
    pub device: String,
    /// Seconds spent opening the model.
    pub load_seconds: f64,
    /// Seconds of the perplexity pass.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub perplexity_seconds: Option<f64>,
    /// Tokens run through the model per second by the perplexity pass.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub perplexity_tokens_per_second: Option<f64>,
    /// Seconds of the passkey trials.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub passkey_seconds: Option<f64>,
}

/// The whole `results.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalResults {
    /// [`RESULTS_VERSION`].
    pub version: u32,
    /// The evaluated model.
    pub model: ModelInfo,
    /// Digest of the tokenizer.json used and where it came from.
    pub tokenizer: TextInfo,
    /// Device kind the numbers were computed on (`cpu` or `cuda`).
    pub device: String,
    /// Perplexity, when requested.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub perplexity: Option<PerplexitySection>,
    /// Passkey retrieval, when requested.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub passkey: Option<PasskeyResult>,
    /// Non-reproducible wall-clock figures.
    pub timing: Timing,
}

impl EvalResults {
    /// Refuses results holding a NaN or infinite number (a broken model or
    /// forward pass): JSON would store them as `null`, and a build must not
    /// report such a number as a measurement.
    pub fn check_finite(&self) -> anyhow::Result<()> {
        let mut numbers: Vec<(String, f64)> = Vec::new();
        if let Some(p) = &self.perplexity {
            let r = &p.result;
            let on = format!("on `{}`", p.text.name);
            numbers.extend([
                (format!("perplexity {on}"), r.perplexity),
                (format!("mean negative log-likelihood {on}"), r.mean_nll),
                (
                    format!("perplexity uncertainty {on}"),
                    r.perplexity_uncertainty,
                ),
            ]);
        }
        for l in self.passkey.iter().flat_map(|p| &p.lengths) {
            numbers.push((
                format!("passkey mean key log-probability at {} tokens", l.length),
                l.mean_key_log_prob,
            ));
            numbers.push((
                format!("passkey accuracy at {} tokens", l.length),
                l.accuracy,
            ));
        }
        match numbers.iter().find(|(_, v)| !v.is_finite()) {
            Some((what, v)) => anyhow::bail!(
                "the {what} of `{}` is {v}: the forward pass produced non-finite values \
                 (NaN or infinite weights?); nothing is stored",
                self.model.name
            ),
            None => Ok(()),
        }
    }
}

/// Reads a `results.json` written by an eval step (for the table after a
/// cached step, and for the model card).
pub fn read_results(path: &std::path::Path) -> anyhow::Result<EvalResults> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{} is not an eval results file: {e}", path.display()))
}

/// One table for many eval steps: a row per evaluated model (in the order
/// given), a column per perplexity text, then passkey accuracy per length.
/// This is what a build prints after its evals, and what the README shows.
pub fn format_summary(results: &[EvalResults]) -> String {
    let mut models: Vec<&str> = Vec::new();
    let mut columns: Vec<String> = Vec::new();
    let mut cells: std::collections::BTreeMap<(String, String), String> = Default::default();
    for r in results {
        if !models.contains(&r.model.name.as_str()) {
            models.push(&r.model.name);
        }
        let mut put = |col: String, value: String| {
            if !columns.contains(&col) {
                columns.push(col.clone());
            }
            cells.insert((r.model.name.clone(), col), value);
        };
        if let Some(p) = &r.perplexity {
            put(
                format!("ppl {}", p.text.name),
                format!("{:.3}", p.result.perplexity),
            );
        }
        if let Some(pk) = &r.passkey {
            for l in &pk.lengths {
                put(
                    format!("passkey@{}", l.length),
                    format!("{:.0}%", 100.0 * l.accuracy),
                );
            }
        }
    }
    if columns.is_empty() {
        return String::new();
    }
    let mut rows: Vec<Vec<String>> = vec![std::iter::once("model".to_owned())
        .chain(columns.iter().cloned())
        .collect()];
    for m in &models {
        let mut row = vec![m.to_string()];
        row.extend(columns.iter().map(|c| {
            cells
                .get(&(m.to_string(), c.clone()))
                .cloned()
                .unwrap_or_else(|| "-".to_owned())
        }));
        rows.push(row);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for (n, row) in rows.iter().enumerate() {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i == 0 {
                    format!("{c:<w$}", w = widths[i])
                } else {
                    format!("{c:>w$}", w = widths[i])
                }
            })
            .collect();
        out.push_str(&format!("| {} |\n", line.join(" | ")));
        if n == 0 {
            let sep: Vec<String> = widths
                .iter()
                .enumerate()
                .map(|(i, w)| {
                    if i == 0 {
                        "-".repeat(*w)
                    } else {
                        format!("{}:", "-".repeat(w - 1))
                    }
                })
                .collect();
            out.push_str(&format!("| {} |\n", sep.join(" | ")));
        }
    }
    out
}
