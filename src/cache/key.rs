//! Step keys: blake3 over a canonical encoding of everything that determines a
//! step's output.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

/// Version of the cache layout and key encoding. Bump it when either changes
/// meaning; every old entry then stops matching.
pub const CACHE_FORMAT: u32 = 1;

/// Encodes JSON canonically: object keys sorted, no whitespace, numbers in
/// serde_json's shortest round-trip form. YAML formatting, key order and
/// comments therefore never reach a key.
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
        other => out.push_str(&other.to_string()),
    }
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
}
