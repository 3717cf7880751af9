//! A YAML document as a tree of nodes that remember where they were written, so
//! that every recipe error can point at a file, line and column.

use std::borrow::Cow;
use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle, Span as YamlSpan};

/// A position in the recipe text: 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub col: usize,
    /// Length in characters of the marked text on its line (at least 1).
    pub len: usize,
}

/// One YAML value and where it starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// The value.
    pub value: Value,
    /// Where the value (for a mapping or sequence: its first entry) was written.
    pub span: Span,
}

/// YAML values resolved with the 1.2 core schema (plain `yes` stays a string).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `~`, `null` or an empty value.
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// An integer that fits in 64 bits.
    Int(i64),
    /// Any other number.
    Float(f64),
    /// A string (quoted, or plain and not another type).
    Str(String),
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping, in the order written; keys are strings.
    Map(Vec<(Node, Node)>),
}

impl Node {
    /// A short name of the node's type for error messages ("a string").
    pub fn type_name(&self) -> &'static str {
        match self.value {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }

    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The number as `f64`, for integers and floats.
    pub fn as_f64(&self) -> Option<f64> {
        match self.value {
            Value::Int(i) => Some(i as f64),
            Value::Float(f) => Some(f),
            _ => None,
        }
    }

    /// The mapping's entries, if this is one.
    pub fn as_map(&self) -> Option<&[(Node, Node)]> {
        match &self.value {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }

    /// The sequence's items, if this is one.
    pub fn as_seq(&self) -> Option<&[Node]> {
        match &self.value {
            Value::Seq(s) => Some(s),
            _ => None,
        }
    }

    /// Looks a key up in a mapping node.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.as_map()?
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v)
    }

    /// Converts to JSON (mapping order kept; the caller canonicalizes for hashing).
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match &self.value {
            Value::Null => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
            Value::Str(s) => J::String(s.clone()),
            Value::Seq(items) => J::Array(items.iter().map(Node::to_json).collect()),
            Value::Map(entries) => J::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.as_str().unwrap_or_default().to_owned(), v.to_json()))
                    .collect(),
            ),
        }
    }
}

/// A YAML syntax error with its position.
#[derive(Debug, Clone)]
pub struct SyntaxError {
    /// What the parser said.
    pub message: String,
    /// Where.
    pub span: Span,
}

/// Nodes that anchors and aliases may copy in one YAML stream. Every alias
/// copies its anchored node (and every anchor keeps a copy), so a few hundred
/// bytes of nested aliases ("billion laughs") would otherwise expand to
/// gigabytes. Real recipes and mergekit configurations copy a few hundred.
pub const MAX_ALIAS_NODES: usize = 100_000;

/// Bytes of scalar text that anchors and aliases may copy in one YAML stream,
/// for the same reason: one long anchored string aliased many times.
pub const MAX_ALIAS_BYTES: usize = 4 << 20;

/// How deeply collections may nest (aliases included). Deeper trees are not a
/// recipe, and every walk over a node tree (drop included) recurses.
pub const MAX_DEPTH: usize = 128;

/// Parses every document of a YAML stream into node trees.
///
/// Anchors and aliases are expanded, within [`MAX_ALIAS_NODES`],
/// [`MAX_ALIAS_BYTES`] and [`MAX_DEPTH`]; tags are ignored except `!!str`.
pub fn parse_documents(text: &str) -> Result<Vec<Node>, SyntaxError> {
    let mut builder = Builder::default();
    // Pull events one at a time (the parser's own `load` recurses once per
    // nesting level) and stop at the first error the builder finds.
    for event in Parser::new_from_str(text) {
        let (event, span) = event.map_err(|e| SyntaxError {
            message: e.info().to_owned(),
            span: Span {
                line: e.marker().line(),
                col: e.marker().col() + 1,
                len: 1,
            },
        })?;
        builder.on_event(event, span);
        if let Some(err) = builder.error.take() {
            return Err(err);
        }
    }
    Ok(builder.documents)
}

enum Frame {
    Seq(Vec<Node>, Span, usize),
    Map(Vec<(Node, Node)>, Option<Node>, Span, usize),
}

/// What copying a node costs: its nodes, its scalar bytes, and its height
/// (1 for a scalar).
#[derive(Debug, Clone, Copy, Default)]
struct Cost {
    nodes: usize,
    bytes: usize,
    height: usize,
}

impl Cost {
    fn of(node: &Node) -> Cost {
        let mut cost = Cost {
            nodes: 1,
            bytes: 0,
            height: 1,
        };
        let mut add = |child: &Node| {
            let c = Cost::of(child);
            cost.nodes += c.nodes;
            cost.bytes += c.bytes;
            cost.height = cost.height.max(c.height + 1);
        };
        match &node.value {
            Value::Str(s) => cost.bytes = s.len(),
            Value::Seq(items) => items.iter().for_each(&mut add),
            Value::Map(entries) => entries.iter().for_each(|(k, v)| {
                add(k);
                add(v);
            }),
            Value::Null | Value::Bool(_) | Value::Int(_) | Value::Float(_) => {}
        }
        cost
    }
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    documents: Vec<Node>,
    /// Anchored nodes by the parser's anchor id, with their copy cost.
    anchors: HashMap<usize, (Node, Cost)>,
    /// What anchors and aliases have copied so far.
    copied: Cost,
    error: Option<SyntaxError>,
}
fn to_span(span: YamlSpan) -> Span {
    let len = if span.end.line() == span.start.line() {
        span.end.col().saturating_sub(span.start.col()).max(1)
    } else {
        1
    };
    Span {
        line: span.start.line(),
        col: span.start.col() + 1,
        len,
    }
}

fn resolve_plain(text: &str) -> Value {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" => return Value::Float(f64::INFINITY),
        "-.inf" | "-.Inf" | "-.INF" => return Value::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Value::Float(f64::NAN),
        _ => {}
    }
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(i) = text.parse::<i64>() {
            return Value::Int(i);
        }
    }
    if let Some(hex) = text.strip_prefix("0x") {
        if let Ok(i) = i64::from_str_radix(hex, 16) {
            return Value::Int(i);
        }
    }
    let looks_numeric = text
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'-' | b'+'))
        && text.bytes().any(|b| b.is_ascii_digit());
    if looks_numeric {
        if let Ok(f) = text.parse::<f64>() {
            return Value::Float(f);
        }
    }
    Value::Str(text.to_owned())
}

impl Builder {
    /// Adds a finished node to its parent; `at` is where it starts (for a
    /// collection: its opening, which errors point at).
    fn push_node(&mut self, node: Node, anchor: usize, at: Span) {
        if anchor > 0 {
            let cost = Cost::of(&node);
            if self.charge(cost, at, "anchoring this node") {
                self.anchors.insert(anchor, (node.clone(), cost));
            }
        }
        match self.stack.last_mut() {
            None => self.documents.push(node),
            Some(Frame::Seq(items, _, _)) => items.push(node),
            Some(Frame::Map(entries, pending, _, _)) => match pending.take() {
                None => {
                    if node.as_str().is_none() {
                        let key = match &node.value {
                            Value::Int(i) => Some(i.to_string()),
                            Value::Bool(b) => Some(b.to_string()),
                            Value::Float(f) => Some(f.to_string()),
                            _ => None,
                        };
                        match key {
                            Some(k) => {
                                *pending = Some(Node {
                                    value: Value::Str(k),
                                    span: node.span,
                                })
                            }
                            None => {
                                self.error.get_or_insert(SyntaxError {
                                    message: format!(
                                        "mapping keys must be strings, found {}",
                                        node.type_name()
                                    ),
                                    span: node.span,
                                });
                                *pending = Some(node);
                            }
                        }
                        return;
                    }
                    if entries.iter().any(|(k, _)| k.as_str() == node.as_str()) {
                        self.error.get_or_insert(SyntaxError {
                            message: format!(
                                "duplicate key `{}`",
                                node.as_str().unwrap_or_default()
                            ),
                            span: node.span,
                        });
                    }
                    *pending = Some(node);
                }
                Some(key) => entries.push((key, node)),
            },
        }
    }
}

impl Builder {
    /// Records an error unless one is recorded already.
    fn fail(&mut self, span: Span, message: String) {
        self.error.get_or_insert(SyntaxError { message, span });
    }

    /// Adds the cost of one copy made for an anchor or alias at `span`;
    /// false (and an error naming the limit) when it would pass a limit.
    fn charge(&mut self, cost: Cost, span: Span, what: &str) -> bool {
        let nodes = self.copied.nodes.saturating_add(cost.nodes);
        let bytes = self.copied.bytes.saturating_add(cost.bytes);
        let limit = if nodes > MAX_ALIAS_NODES {
            format!("more than {MAX_ALIAS_NODES} nodes (limit MAX_ALIAS_NODES)")
        } else if bytes > MAX_ALIAS_BYTES {
            format!("more than {MAX_ALIAS_BYTES} bytes of text (limit MAX_ALIAS_BYTES)")
        } else {
            self.copied.nodes = nodes;
            self.copied.bytes = bytes;
            return true;
        };
        self.fail(
            span,
            format!(
                "YAML alias expansion limit: {what} would make anchors and aliases copy {limit}; \
                 refused as a likely alias bomb"
            ),
        );
        false
    }

    /// Checks that a collection opened at `span`, `height` levels tall,
    /// stays within [`MAX_DEPTH`].
    fn check_depth(&mut self, height: usize, span: Span) -> bool {
        if self.stack.len() + height <= MAX_DEPTH {
            return true;
        }
        self.fail(
            span,
            format!(
                "YAML nesting limit: collections nest more than {MAX_DEPTH} levels deep \
                 (limit MAX_DEPTH)"
            ),
        );
        false
    }

    fn on_event(&mut self, ev: Event<'_>, span: YamlSpan) {
        let here = to_span(span);
        match ev {
            Event::Scalar(text, style, anchor, tag) => {
                let forced_str = tag.as_ref().is_some_and(|t| t.suffix == "str");
                let value = if style == ScalarStyle::Plain && !forced_str {
                    resolve_plain(&text)
                } else {
                    Value::Str(Cow::into_owned(text))
                };
                self.push_node(Node { value, span: here }, anchor, here);
            }
            Event::SequenceStart(anchor, _) => {
                if self.check_depth(1, here) {
                    self.stack.push(Frame::Seq(Vec::new(), here, anchor))
                }
            }
            Event::MappingStart(anchor, _) => {
                if self.check_depth(1, here) {
                    self.stack.push(Frame::Map(Vec::new(), None, here, anchor))
                }
            }
            Event::SequenceEnd => {
                if let Some(Frame::Seq(items, start, anchor)) = self.stack.pop() {
                    let span = items.first().map_or(start, |n| n.span);
                    self.push_node(
                        Node {
                            value: Value::Seq(items),
                            span,
                        },
                        anchor,
                        start,
                    );
                }
            }
            Event::MappingEnd => {
                if let Some(Frame::Map(entries, _, start, anchor)) = self.stack.pop() {
                    let span = entries.first().map_or(start, |(k, _)| k.span);
                    self.push_node(
                        Node {
                            value: Value::Map(entries),
                            span,
                        },
                        anchor,
                        start,
                    );
                }
            }
            Event::Alias(id) => {
                let Some(&(_, cost)) = self.anchors.get(&id) else {
                    // The parser resolves names; an id without a node is an
                    // anchor of an earlier document.
                    self.fail(here, "alias to an anchor of another document".into());
                    return;
                };
                // A node `height` tall adds `height - 1` collection levels.
                if self.check_depth(cost.height - 1, here)
                    && self.charge(cost, here, "expanding this alias")
                {
                    let node = self.anchors[&id].0.clone();
                    self.push_node(node, 0, here);
                }
            }
            Event::DocumentStart(_) => self.anchors.clear(),
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentEnd => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_schema_and_spans() {
        let docs = parse_documents("a: 1\nb: [yes, 0.5, 'x']\nc: {d: ~}\n").unwrap();
        let doc = &docs[0];
        assert_eq!(doc.get("a").unwrap().value, Value::Int(1));
        let b = doc.get("b").unwrap().as_seq().unwrap();
        assert_eq!(b[0].value, Value::Str("yes".into()));
        assert_eq!(b[1].value, Value::Float(0.5));
        assert_eq!(b[1].span.line, 2);
        assert_eq!(doc.get("c").unwrap().get("d").unwrap().value, Value::Null);
    }

    #[test]
    fn duplicate_key_is_an_error() {
        let err = parse_documents("a: 1\na: 2\n").unwrap_err();
        assert!(err.message.contains("duplicate key `a`"));
        assert_eq!(err.span.line, 2);
    }

    /// Nine levels of nine aliases each: 9^9 copies if expanded.
    fn billion_laughs() -> String {
        let mut text = String::from("a: &a [\"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\"]\n");
        for (prev, name) in ["a", "b", "c", "d", "e", "f", "g", "h"]
            .iter()
            .zip(["b", "c", "d", "e", "f", "g", "h", "i"])
        {
            let items = vec![format!("*{prev}"); 9].join(", ");
            text.push_str(&format!("{name}: &{name} [{items}]\n"));
        }
        text
    }

    #[test]
    fn alias_bomb_is_refused_at_the_alias_that_passes_the_limit() {
        let text = billion_laughs();
        assert!(text.len() < 600, "{}", text.len());
        let err = parse_documents(&text).unwrap_err();
        assert!(
            err.message.contains("YAML alias expansion limit")
                && err
                    .message
                    .contains("more than 100000 nodes (limit MAX_ALIAS_NODES)"),
            "{}",
            err.message
        );
        // Anchoring level e (9^5 strings, after copying 9^5 for its aliases)
        // passes 100000 copied nodes.
        assert_eq!(err.span.line, 5);
    }

    #[test]
    fn long_string_aliased_many_times_is_refused_by_bytes() {
        let long = "x".repeat(1 << 20);
        let text = format!("a: &a \"{long}\"\nb: [*a, *a, *a, *a, *a]\n");
        let err = parse_documents(&text).unwrap_err();
        assert!(
            err.message
                .contains("more than 4194304 bytes of text (limit MAX_ALIAS_BYTES)"),
            "{}",
            err.message
        );
        assert_eq!((err.span.line, err.span.col), (2, 17));
    }

    #[test]
    fn deep_nesting_is_refused_without_recursing() {
        // Flow collections: the scanner's own limit (255 levels) answers first.
        assert!(parse_documents(&"[".repeat(100_000)).is_err());
        // Block collections: ours.
        let text = format!("{}x\n", "- ".repeat(100_000));
        let err = parse_documents(&text).unwrap_err();
        assert!(
            err.message
                .contains("nest more than 128 levels deep (limit MAX_DEPTH)"),
            "{}",
            err.message
        );
        assert_eq!((err.span.line, err.span.col), (1, 257));
        // Aliases count towards depth too: 100 levels aliased 100 levels deep.
        let deep = format!(
            "a: &a {}1{}\nb: {}*a{}\n",
            "[".repeat(100),
            "]".repeat(100),
            "[".repeat(100),
            "]".repeat(100)
        );
        let err = parse_documents(&deep).unwrap_err();
        assert!(err.message.contains("limit MAX_DEPTH"), "{}", err.message);
        assert_eq!(err.span.line, 2);
    }

    #[test]
    fn ordinary_aliases_expand() {
        let docs =
            parse_documents("p: &p {density: 0.5, weight: [1, 2]}\nq: *p\nr: [*p, *p]\n").unwrap();
        let doc = &docs[0];
        assert_eq!(doc.get("q"), doc.get("p"));
        let r = doc.get("r").unwrap().as_seq().unwrap();
        assert_eq!(
            r[1].get("weight").unwrap().as_seq().unwrap()[1].value,
            Value::Int(2)
        );
    }

    #[test]
    fn anchors_do_not_leak_into_the_next_document() {
        let err = parse_documents("a: &x 1\n---\nb: *x\n").unwrap_err();
        assert_eq!(err.span.line, 3, "{}", err.message);
    }
}
