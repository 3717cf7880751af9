//! mergekit parameter settings: scalars, gradients interpolated over layers and
//! `filter:` conditionals, and their evaluation for one tensor.
//!
//! The semantics follow mergekit's `evaluate_setting`: a list of numbers is a
//! piecewise-linear gradient over the slice depth `t` in [0, 1], a list of other
//! scalars is a step function, and a list of `{filter, value}` entries takes the
//! first entry whose filter is absent, `*`, or a substring of the tensor name.

use super::method::ParamKind;
use crate::syntax::diag::{Diag, RecipeError};
use crate::syntax::yaml::{Node, Span, Value};

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

/// The value of an untyped parameter (a legacy one mergekit ignores).
fn untyped(node: &Node) -> Option<ParamValue> {
    match &node.value {
        Value::Int(i) => Some(ParamValue::Num(*i as f64)),
        Value::Float(f) => Some(ParamValue::Num(*f)),
        Value::Bool(b) => Some(ParamValue::Bool(*b)),
        Value::Str(s) => Some(ParamValue::Str(s.clone())),
        _ => None,
    }
}

/// A finite number written as a number or as a quoted number.
fn number(node: &Node) -> Option<f64> {
    let x = match &node.value {
        Value::Int(i) => *i as f64,
        Value::Float(f) => *f,
        Value::Str(s) => s.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    x.is_finite().then_some(x)
}

/// How a scalar is shown in an error.
fn shown(node: &Node) -> String {
    match &node.value {
        Value::Str(s) => format!("`{s}`"),
        Value::Int(i) => i.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => node.type_name().to_string(),
    }
}

/// One scalar of parameter `name`, typed by `kind` (`None`: untyped).
fn scalar(
    diag: &Diag,
    node: &Node,
    name: &str,
    kind: Option<ParamKind>,
) -> Result<ParamValue, RecipeError> {
    let Some(kind) = kind else {
        return untyped(node).ok_or_else(|| {
            diag.error(
                node.span,
                format!(
                    "parameter `{name}` must be a scalar, found {}",
                    node.type_name()
                ),
            )
        });
    };
    let bad = |expected: &str| {
        diag.error(
            node.span,
            format!(
                "parameter `{name}` must be {expected}, found {}",
                shown(node)
            ),
        )
    };
    match kind {
        ParamKind::Number => number(node)
            .map(ParamValue::Num)
            .ok_or_else(|| bad("a finite number (quoted or not)")),
        ParamKind::Count => number(node)
            .filter(|x| *x >= 0.0 && x.fract() == 0.0)
            .map(ParamValue::Num)
            .ok_or_else(|| bad("a whole number")),
        ParamKind::Flag => match node.value {
            Value::Bool(b) => Ok(ParamValue::Bool(b)),
            _ => Err(bad("true or false")),
        },
        ParamKind::Rescale => match &node.value {
            Value::Bool(b) => Ok(ParamValue::Bool(*b)),
            Value::Str(s) if s == "l1" || s == "inverse_density" => Ok(ParamValue::Str(s.clone())),
            _ => Err(bad("true, false, `l1` or `inverse_density`")),
        },
    }
}

fn parse_plain(
    diag: &Diag,
    node: &Node,
    name: &str,
    kind: Option<ParamKind>,
) -> Result<Setting, RecipeError> {
    let Some(items) = node.as_seq() else {
        if node.as_map().is_some() {
            return Err(diag.error(
                node.span,
                format!(
                    "parameter `{name}` must be a number, a list (gradient) or a list of \
                     {{filter, value}} entries, found {}",
                    node.type_name()
                ),
            ));
        }
        return scalar(diag, node, name, kind).map(Setting::Scalar);
    };
    if items.is_empty() {
        return Err(diag.error(node.span, format!("parameter `{name}` is an empty list")));
    }
    match kind {
        Some(ParamKind::Number) => items
            .iter()
            .map(|n| match scalar(diag, n, name, kind)? {
                ParamValue::Num(x) => Ok(x),
                _ => unreachable!("a number parameter parses to a number"),
            })
            .collect::<Result<Vec<f64>, _>>()
            .map(Setting::Gradient),
        Some(ParamKind::Count) => Err(diag.error(
            node.span,
            format!("parameter `{name}` takes one whole number, not a list"),
        )),
        Some(_) => items
            .iter()
            .map(|n| scalar(diag, n, name, kind))
            .collect::<Result<Vec<_>, _>>()
            .map(Setting::Steps),
        None => {
            if let Some(numbers) = items.iter().map(Node::as_f64).collect::<Option<Vec<f64>>>() {
                return Ok(Setting::Gradient(numbers));
            }
            items
                .iter()
                .map(|n| scalar(diag, n, name, None))
                .collect::<Result<Vec<_>, _>>()
                .map(Setting::Steps)
        }
    }
}

/// Parses one parameter setting; `kind` types its values (`None` for a
/// parameter the method does not read, which is checked by name later).
pub fn parse_setting(
    diag: &Diag,
    node: &Node,
    name: &str,
    kind: Option<ParamKind>,
) -> Result<Setting, RecipeError> {
    if node.as_map().is_some() {
        return Err(diag
            .error(
                node.span,
                format!("parameter `{name}`: a single {{filter, value}} mapping is not allowed"),
            )
            .with_help("write it as a list: `- {filter: ..., value: ...}`"));
    }
    let Some(items) = node.as_seq() else {
        return parse_plain(diag, node, name, kind);
    };
    if !items.iter().any(|n| n.as_map().is_some()) {
        return parse_plain(diag, node, name, kind);
    }
    let mut conditionals = Vec::new();
    for item in items {
        let f = crate::syntax::fields::Fields::new(
            diag,
            item,
            format!("a conditional entry of `{name}`"),
            &["filter", "value"],
        )?;
        f.finish()?;
        let value_node = f.req("value")?;
        if value_node
            .as_seq()
            .is_some_and(|v| v.iter().any(|n| n.as_map().is_some()))
        {
            return Err(diag.error(item.span, "conditional values cannot nest"));
        }
        conditionals.push(Conditional {
            filter: f.opt_str("filter")?,
            value: parse_plain(diag, value_node, name, kind)?,
        });
    }
    Ok(Setting::Conditional(conditionals))
}

/// Parses a `parameters:` mapping; `kind_of` gives the kind of each
/// parameter the merge method reads.
pub fn parse_parameters(
    diag: &Diag,
    node: Option<&Node>,
    kind_of: &dyn Fn(&str) -> Option<ParamKind>,
) -> Result<Parameters, RecipeError> {
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
            let name = crate::syntax::fields::expect_str(diag, k, "parameters")?;
            Ok(NamedSetting {
                setting: parse_setting(diag, v, &name, kind_of(&name))?,
                name,
                span: k.span,
            })
        })
        .collect()
}

/// The setting as JSON with every value in its typed form (quoted numbers
/// as numbers), for step keys.
impl Setting {
    /// Normalized JSON form.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Setting::Scalar(v) => v.to_json(),
            Setting::Gradient(values) => serde_json::json!(values),
            Setting::Steps(values) => values.iter().map(ParamValue::to_json).collect(),
            Setting::Conditional(entries) => entries
                .iter()
                .map(|c| serde_json::json!({"filter": c.filter, "value": c.value.to_json()}))
                .collect(),
        }
    }
}

/// A `parameters:` mapping in normalized JSON form.
pub fn parameters_json(params: &Parameters) -> serde_json::Value {
    params
        .iter()
        .map(|p| (p.name.clone(), p.setting.to_json()))
        .collect::<serde_json::Map<_, _>>()
        .into()
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
    use crate::syntax::yaml::parse_documents;

    fn setting(yaml: &str) -> Setting {
        let doc = &parse_documents(yaml).unwrap()[0];
        let diag = Diag::new(std::path::Path::new("x.yml"), yaml);
        parse_setting(&diag, doc.get("p").unwrap(), "p", Some(ParamKind::Number)).unwrap()
    }

    #[test]
    fn gradients_interpolate_over_depth() {
        let s = setting("p: [0, 0.5, 0.3, 0.7, 1]\n");
        assert_eq!(s.evaluate("x", 0.0), Some(ParamValue::Num(0.0)));
        assert_eq!(s.evaluate("x", 1.0), Some(ParamValue::Num(1.0)));
        // t = 0.375 → s = 1.5, halfway between 0.5 and 0.3.
        let Some(ParamValue::Num(v)) = s.evaluate("x", 0.375) else {
            panic!("a gradient evaluates to a number")
        };
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
        let err = parse_setting(&diag, doc.get("p").unwrap(), "p", None).unwrap_err();
        assert!(err.to_string().contains("write it as a list"), "{err}");
    }
}
