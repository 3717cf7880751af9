//! Step keys: blake3 over a canonical encoding of everything that determines a
//! step's output.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

/// Version of the cache layout and key encoding. Bump it when either changes
/// meaning; every old entry then stops matching.
pub const CACHE_FORMAT: u32 = 2;

/// Encodes JSON canonically: object keys sorted, no whitespace, numbers by
/// value ([`canonical_number`]). YAML formatting, key order, comments and the
/// spelling of a number (`1`, `1.0`, `1e0`) therefore never reach a key.
///
/// Steps give their parameters in typed form (a quoted number in a merge
/// config is a number by then), so this is the last word on spelling.
pub fn canonical_json(value: &Json) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Json, out: &mut String) {
    match value {
        Json::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Json::String(k.clone()).to_string());
                out.push(':');
                write_canonical(v, out);
            }
            out.push('}');
        }
        Json::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(v, out);
            }
            out.push(']');
        }
        Json::Number(n) => out.push_str(&canonical_number(n)),
        other => out.push_str(&other.to_string()),
    }
}

/// A number by its value: integers as integers, whole floats within the
/// exactly representable range (±2^53) as the same integers, other floats
/// in the shortest form that reads back to the same `f64`. Integer
/// parameters (counts, context sizes) keep the encoding they always had.
pub fn canonical_number(n: &serde_json::Number) -> String {
    if n.is_i64() || n.is_u64() {
        return n.to_string();
    }
    let x = n.as_f64().expect("a JSON number is an i64, u64 or f64");
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    if x.fract() == 0.0 && x.abs() <= EXACT {
        // -0.0 is 0 too.
        return (x as i64).to_string();
    }
    n.to_string()
}

/// Everything that goes into a step key, kept so that `explain` can say which
/// part changed since the last build.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyInputs {
    /// Cache format version.
    pub format: u32,
    /// Step kind.
    pub kind: String,
    /// The kind's implementation version.
    pub version: u32,
    /// Normalized parameters.
    pub params: Json,
    /// Input name → content digest of its artifact.
    pub inputs: BTreeMap<String, String>,
}

impl KeyInputs {
    /// The step key: hex blake3 of the canonical encoding.
    pub fn key(&self) -> String {
        let json = serde_json::to_value(self).expect("key inputs serialize");
        blake3::hash(canonical_json(&json).as_bytes())
            .to_hex()
            .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn key_order_does_not_matter() {
        let a = json!({"b": 1, "a": {"y": [1, 2], "x": 0.62}});
        let b = json!({"a": {"x": 0.62, "y": [1, 2]}, "b": 1});
        assert_eq!(canonical_json(&a), canonical_json(&b));
        assert_eq!(canonical_json(&a), r#"{"a":{"x":0.62,"y":[1,2]},"b":1}"#);
    }

    #[test]
    fn numbers_are_encoded_by_value() {
        let spellings = [json!(1), json!(1.0), json!(1e0), json!(-0.0 + 1.0)];
        for n in &spellings {
            assert_eq!(canonical_json(n), "1", "{n}");
        }
        assert_eq!(canonical_json(&json!(-0.0)), "0");
        assert_eq!(canonical_json(&json!(0.33)), "0.33");
        assert_eq!(canonical_json(&json!(5e6)), "5000000");
        assert_eq!(canonical_json(&json!(1e300)), "1e+300");
        assert_eq!(canonical_json(&json!(u64::MAX)), u64::MAX.to_string());
        assert_ne!(
            canonical_json(&json!(0.1)),
            canonical_json(&json!(0.1f32 as f64))
        );
    }
}
