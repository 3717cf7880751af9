//! mergekit parameter settings: scalars, gradients interpolated over layers and
//! `filter:` conditionals, and their evaluation for one tensor.
//!
//! The semantics follow mergekit's `evaluate_setting`: a list of numbers is a
//! piecewise-linear gradient over the slice depth `t` in [0, 1], a list of other
//! scalars is a step function, and a list of `{filter, value}` entries takes the
//! first entry whose filter is absent, `*`, or a substring of the tensor name.

use crate::recipe::diag::{Diag, RecipeError};
use crate::recipe::yaml::{Node, Span, Value};

/// A resolved parameter value.
#[derive(Debug, Clone, PartialEq)]
pub enum ParamValue {
    /// A number (integers are numbers too).
    Num(f64),
    /// A boolean.
    Bool(bool),
    /// A string (for example `rescale: inverse_density`).
    Str(String),
}

impl ParamValue {
    /// The value as a number; booleans count as 0/1 like Python's.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            ParamValue::Num(x) => Some(*x),
            ParamValue::Bool(b) => Some(f64::from(u8::from(*b))),
            ParamValue::Str(_) => None,
        }
    }

    /// The value as a boolean; numbers are true when non-zero.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            ParamValue::Bool(b) => Some(*b),
            ParamValue::Num(x) => Some(*x != 0.0),
            ParamValue::Str(_) => None,
        }
    }

    /// JSON form, for normalized step parameters.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            ParamValue::Num(x) => serde_json::json!(x),
            ParamValue::Bool(b) => serde_json::json!(b),
            ParamValue::Str(s) => serde_json::json!(s),
        }
    }
}

/// One `{filter, value}` entry of a conditional list.
#[derive(Debug, Clone, PartialEq)]
pub struct Conditional {
    /// Substring of the tensor name the entry applies to; `None` or `*` for all.
    pub filter: Option<String>,
    /// A scalar or a gradient.
    pub value: Setting,
}

/// A parameter setting as written in the config.
#[derive(Debug, Clone, PartialEq)]
pub enum Setting {
    /// One value everywhere.
    Scalar(ParamValue),
    /// A gradient: numbers interpolated linearly over the slice depth.
    Gradient(Vec<f64>),
    /// Non-numeric list: a step function of the slice depth.
    Steps(Vec<ParamValue>),
    /// Conditionals; the first matching entry wins.
    Conditional(Vec<Conditional>),
}

/// A named setting and where it was written.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedSetting {
    /// Parameter name.
    pub name: String,
    /// Its setting.
    pub setting: Setting,
    /// Where the name was written.
    pub span: Span,
}

/// The `parameters:` mapping of one level of the config, in written order.
pub type Parameters = Vec<NamedSetting>;

fn scalar(node: &Node) -> Option<ParamValue> {
    match &node.value {
        Value::Int(i) => Some(ParamValue::Num(*i as f64)),
        Value::Float(f) => Some(ParamValue::Num(*f)),
        Value::Bool(b) => Some(ParamValue::Bool(*b)),
        Value::Str(s) => Some(ParamValue::Str(s.clone())),
        _ => None,
    }
}

fn parse_plain(diag: &Diag, node: &Node, name: &str) -> Result<Setting, RecipeError> {
    if let Some(v) = scalar(node) {
        return Ok(Setting::Scalar(v));
    }
    let Some(items) = node.as_seq() else {
        return Err(diag.error(
            node.span,
            format!(
                "parameter `{name}` must be a number, a list (gradient) or a list of \
                 {{filter, value}} entries, found {}",
                node.type_name()
            ),
        ));
    };
    if items.is_empty() {
        return Err(diag.error(node.span, format!("parameter `{name}` is an empty list")));
    }
    if let Some(numbers) = items.iter().map(Node::as_f64).collect::<Option<Vec<f64>>>() {
        return Ok(Setting::Gradient(numbers));
    }
    items
        .iter()
        .map(|n| {
            scalar(n).ok_or_else(|| {
                diag.error(
                    n.span,
                    format!(
                        "parameter `{name}`: list entries must be all numbers, all \
                         scalars, or all {{filter, value}} mappings"
                    ),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Setting::Steps)
}

/// Parses one parameter setting.
pub fn parse_setting(diag: &Diag, node: &Node, name: &str) -> Result<Setting, RecipeError> {
    if node.as_map().is_some() {
        return Err(diag
            .error(
                node.span,
                format!("parameter `{name}`: a single {{filter, value}} mapping is not allowed"),
            )
            .with_help("write it as a list: `- {filter: ..., value: ...}`"));
    }
    let Some(items) = node.as_seq() else {
        return parse_plain(diag, node, name);
    };
    if !items.iter().any(|n| n.as_map().is_some()) {
        return parse_plain(diag, node, name);
    }
    let mut conditionals = Vec::new();
    for item in items {
        let f = crate::recipe::fields::Fields::new(
            diag,
            item,
            format!("a conditional entry of `{name}`"),
            &["filter", "value"],
        )?;
        f.finish()?;
        let value = parse_plain(diag, f.req("value")?, name)?;
        if matches!(value, Setting::Conditional(_)) {
            return Err(diag.error(item.span, "conditional values cannot nest"));
        }
        conditionals.push(Conditional {
            filter: f.opt_str("filter")?,
            value,
        });
    }
    Ok(Setting::Conditional(conditionals))
}

/// Parses a `parameters:` mapping.
pub fn parse_parameters(diag: &Diag, node: Option<&Node>) -> Result<Parameters, RecipeError> {
    let Some(node) = node else {
        return Ok(Vec::new());
    };
    let Some(entries) = node.as_map() else {
        return Err(diag.error(
            node.span,
            format!("`parameters` must be a mapping, found {}", node.type_name()),
        ));
    };
    entries
        .iter()
        .filter(|(_, v)| v.value != Value::Null)
        .map(|(k, v)| {
            let name = crate::recipe::fields::expect_str(diag, k, "parameters")?;
            Ok(NamedSetting {
                setting: parse_setting(diag, v, &name)?,
                name,
                span: k.span,
            })
        })
        .collect()
}

impl Setting {
    /// The value for tensor `tensor` at slice depth `t` (in [0, 1]); `None`
    /// when no conditional entry matches (the next precedence level decides).
    pub fn evaluate(&self, tensor: &str, t: f64) -> Option<ParamValue> {
        match self {
            Setting::Scalar(v) => Some(v.clone()),
            Setting::Gradient(values) => Some(ParamValue::Num(interpolate(values, t))),
            Setting::Steps(values) => {
                let i = (t * (values.len() - 1) as f64) as usize;
                values.get(i.min(values.len() - 1)).cloned()
            }
            Setting::Conditional(entries) => entries
                .iter()
                .find(|c| match c.filter.as_deref() {
                    None | Some("*") => true,
                    Some(f) => tensor.contains(f),
                })
                .and_then(|c| c.value.evaluate(tensor, t)),
        }
    }
}

/// mergekit's gradient: `s = t·(n−1)`, linear between the two nearest points.
fn interpolate(values: &[f64], t: f64) -> f64 {
    if values.len() == 1 {
        return values[0];
    }
    let s = t.clamp(0.0, 1.0) * (values.len() - 1) as f64;
    let i0 = s as usize;
    let i1 = (i0 + 1).min(values.len() - 1);
    let frac = s - i0 as f64;
    (1.0 - frac) * values[i0] + frac * values[i1]
}

/// Looks `name` up in a parameters list and evaluates it for one tensor.
pub fn lookup(params: &Parameters, name: &str, tensor: &str, t: f64) -> Option<ParamValue> {
    params
        .iter()
        .find(|p| p.name == name)
        .and_then(|p| p.setting.evaluate(tensor, t))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recipe::yaml::parse_documents;

    fn setting(yaml: &str) -> Setting {
        let doc = &parse_documents(yaml).unwrap()[0];
        let diag = Diag::new(std::path::Path::new("x.yml"), yaml);
        parse_setting(&diag, doc.get("p").unwrap(), "p").unwrap()
    }

    #[test]
    fn gradients_interpolate_over_depth() {
        let s = setting("p: [0, 0.5, 0.3, 0.7, 1]\n");
        assert_eq!(s.evaluate("x", 0.0), Some(ParamValue::Num(0.0)));
        assert_eq!(s.evaluate("x", 1.0), Some(ParamValue::Num(1.0)));
        // t = 0.375 → s = 1.5, halfway between 0.5 and 0.3.
        let v = s.evaluate("x", 0.375).unwrap().as_f64().unwrap();
        assert!((v - 0.4).abs() < 1e-12, "{v}");
    }

    #[test]
    fn first_matching_filter_wins_and_no_match_falls_through() {
        let s = setting(
            "p:\n  - filter: self_attn\n    value: [0, 1]\n  - filter: mlp\n    value: 0.25\n",
        );
        let attn = "model.layers.0.self_attn.q_proj.weight";
        assert_eq!(s.evaluate(attn, 0.5), Some(ParamValue::Num(0.5)));
        assert_eq!(
            s.evaluate("model.layers.0.mlp.up_proj.weight", 0.0),
            Some(ParamValue::Num(0.25))
        );
        assert_eq!(s.evaluate("model.norm.weight", 0.0), None);
    }

    #[test]
    fn single_conditional_mapping_is_rejected() {
        let yaml = "p: {filter: mlp, value: 1}\n";
        let doc = &parse_documents(yaml).unwrap()[0];
        let diag = Diag::new(std::path::Path::new("x.yml"), yaml);
        let err = parse_setting(&diag, doc.get("p").unwrap(), "p").unwrap_err();
        assert!(err.to_string().contains("write it as a list"), "{err}");
    }
}
