//! A YAML document as a tree of nodes that remember where they were written, so
//! that every recipe error can point at a file, line and column.

use std::borrow::Cow;
use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle, Span as YamlSpan, SpannedEventReceiver};

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

/// Parses every document of a YAML stream into node trees.
///
/// Anchors and aliases are expanded; tags are ignored except `!!str`.
pub fn parse_documents(text: &str) -> Result<Vec<Node>, SyntaxError> {
    let mut builder = Builder::default();
    let mut parser = Parser::new_from_str(text);
    parser.load(&mut builder, true).map_err(|e| SyntaxError {
        message: e.info().to_owned(),
        span: Span {
            line: e.marker().line(),
            col: e.marker().col() + 1,
            len: 1,
        },
    })?;
    if let Some(err) = builder.error {
        return Err(err);
    }
    Ok(builder.documents)
}

enum Frame {
    Seq(Vec<Node>, Span, usize),
    Map(Vec<(Node, Node)>, Option<Node>, Span, usize),
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    documents: Vec<Node>,
    anchors: HashMap<usize, Node>,
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
    fn push_node(&mut self, node: Node, anchor: usize) {
        if anchor > 0 {
            self.anchors.insert(anchor, node.clone());
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

impl<'input> SpannedEventReceiver<'input> for Builder {
    fn on_event(&mut self, ev: Event<'input>, span: YamlSpan) {
        let here = to_span(span);
        match ev {
            Event::Scalar(text, style, anchor, tag) => {
                let forced_str = tag.as_ref().is_some_and(|t| t.suffix == "str");
                let value = if style == ScalarStyle::Plain && !forced_str {
                    resolve_plain(&text)
                } else {
                    Value::Str(Cow::into_owned(text))
                };
                self.push_node(Node { value, span: here }, anchor);
            }
            Event::SequenceStart(anchor, _) => {
                self.stack.push(Frame::Seq(Vec::new(), here, anchor))
            }
            Event::MappingStart(anchor, _) => {
                self.stack.push(Frame::Map(Vec::new(), None, here, anchor))
            }
            Event::SequenceEnd => {
                if let Some(Frame::Seq(items, span, anchor)) = self.stack.pop() {
                    let span = items.first().map_or(span, |n| n.span);
                    self.push_node(
                        Node {
                            value: Value::Seq(items),
                            span,
                        },
                        anchor,
                    );
                }
            }
            Event::MappingEnd => {
                if let Some(Frame::Map(entries, _, span, anchor)) = self.stack.pop() {
                    let span = entries.first().map_or(span, |(k, _)| k.span);
                    self.push_node(
                        Node {
                            value: Value::Map(entries),
                            span,
                        },
                        anchor,
                    );
                }
            }
            Event::Alias(id) => {
                let node = self.anchors.get(&id).cloned().unwrap_or(Node {
                    value: Value::Null,
                    span: here,
                });
                self.push_node(node, 0);
            }
            Event::Nothing
            | Event::StreamStart
            | Event::StreamEnd
            | Event::DocumentStart(_)
            | Event::DocumentEnd => {}
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
}
