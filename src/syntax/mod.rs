//! The syntax layer: YAML documents with source spans ([`yaml`]), diagnostics
//! that point at a file, line and column ([`diag`]), and typed reading of a
//! mapping against a schema ([`fields`]). Shared by recipes, mergekit configs,
//! step parameters and project files; knows nothing of what they mean.

pub mod diag;
pub mod fields;
pub mod yaml;

/// A matrix value (as JSON) as it appears in instance names: floats keep a
/// decimal point (`1.0`), so `weight=1.0` reads as the number written.
pub fn json_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Number(n) if n.is_f64() => format!("{:?}", n.as_f64().unwrap_or(0.0)),
        other => other.to_string(),
    }
}
