//! Typed reading of one YAML mapping against the keys a schema allows, with
//! "did you mean" errors for unknown keys.

use super::diag::{did_you_mean, Diag, RecipeError};
use super::yaml::{Node, Value};

/// The entries of one mapping node, consumed key by key; [`Fields::finish`]
/// rejects whatever was not consumed.
pub struct Fields<'a> {
    diag: &'a Diag,
    node: &'a Node,
    what: String,
    allowed: &'static [&'static str],
}

impl<'a> Fields<'a> {
    /// Starts reading `node`, which must be a mapping; `what` names it in errors
    /// ("step `merged`") and `allowed` lists every key it may have.
    pub fn new(
        diag: &'a Diag,
        node: &'a Node,
        what: impl Into<String>,
        allowed: &'static [&'static str],
    ) -> Result<Fields<'a>, RecipeError> {
        let what = what.into();
        if node.as_map().is_none() {
            return Err(diag.error(
                node.span,
                format!("{what} must be a mapping, found {}", node.type_name()),
            ));
        }
        Ok(Fields {
            diag,
            node,
            what,
            allowed,
        })
    }

    /// The diagnostic context, for errors about values.
    pub fn diag(&self) -> &'a Diag {
        self.diag
    }

    /// The mapping node itself.
    pub fn node(&self) -> &'a Node {
        self.node
    }

    /// Rejects keys outside the allowed list, suggesting the closest allowed key.
    pub fn finish(&self) -> Result<(), RecipeError> {
        for (key, _) in self.node.as_map().unwrap_or_default() {
            let name = key.as_str().unwrap_or_default();
            if !self.allowed.contains(&name) {
                let err = self
                    .diag
                    .error(key.span, format!("unknown key `{name}` in {}", self.what));
                return Err(match did_you_mean(name, self.allowed.iter().copied()) {
                    Some(s) => err.with_help(format!("did you mean `{s}`?")),
                    None => err.with_help(format!("expected one of: {}", self.allowed.join(", "))),
                });
            }
        }
        Ok(())
    }

    /// The node under `key`, if present and not null.
    pub fn opt(&self, key: &str) -> Option<&'a Node> {
        debug_assert!(self.allowed.contains(&key), "schema does not list `{key}`");
        self.node.get(key).filter(|n| n.value != Value::Null)
    }

    /// The node under `key`, or an error saying it is required.
    pub fn req(&self, key: &str) -> Result<&'a Node, RecipeError> {
        self.opt(key).ok_or_else(|| {
            self.diag.error(
                self.node.span,
                format!("{} is missing the required key `{key}`", self.what),
            )
        })
    }

    /// A required string.
    pub fn req_str(&self, key: &str) -> Result<String, RecipeError> {
        expect_str(self.diag, self.req(key)?, key)
    }

    /// An optional string.
    pub fn opt_str(&self, key: &str) -> Result<Option<String>, RecipeError> {
        self.opt(key)
            .map(|n| expect_str(self.diag, n, key))
            .transpose()
    }

    /// An optional number.
    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>, RecipeError> {
        self.opt(key)
            .map(|n| {
                n.as_f64().ok_or_else(|| {
                    self.diag.error(
                        n.span,
                        format!("`{key}` must be a number, found {}", n.type_name()),
                    )
                })
            })
            .transpose()
    }

    /// An optional non-negative integer.
    pub fn opt_u64(&self, key: &str) -> Result<Option<u64>, RecipeError> {
        self.opt(key)
            .map(|n| match n.value {
                Value::Int(i) if i >= 0 => Ok(i as u64),
                _ => Err(self.diag.error(
                    n.span,
                    format!(
                        "`{key}` must be a non-negative integer, found {}",
                        n.type_name()
                    ),
                )),
            })
            .transpose()
    }

    /// An optional boolean.
    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>, RecipeError> {
        self.opt(key)
            .map(|n| match n.value {
                Value::Bool(b) => Ok(b),
                _ => Err(self.diag.error(
                    n.span,
                    format!("`{key}` must be true or false, found {}", n.type_name()),
                )),
            })
            .transpose()
    }

    /// An optional list of strings; a single string is accepted as a list of one.
    pub fn opt_str_list(&self, key: &str) -> Result<Vec<String>, RecipeError> {
        let Some(node) = self.opt(key) else {
            return Ok(Vec::new());
        };
        match &node.value {
            Value::Str(s) => Ok(vec![s.clone()]),
            Value::Seq(items) => items
                .iter()
                .map(|n| expect_str(self.diag, n, key))
                .collect(),
            _ => Err(self.diag.error(
                node.span,
                format!(
                    "`{key}` must be a list of strings, found {}",
                    node.type_name()
                ),
            )),
        }
    }
}

/// The string in `node`, or an error naming `key` and the type found.
pub fn expect_str(diag: &Diag, node: &Node, key: &str) -> Result<String, RecipeError> {
    node.as_str().map(str::to_owned).ok_or_else(|| {
        diag.error(
            node.span,
            format!("`{key}` must be a string, found {}", node.type_name()),
        )
    })
}
