//! Sweeps: a step with `matrix:` becomes one ordinary step per combination of
//! its axes' values, named `merged[density=0.62,weight=1.0]`.
//!
//! Expansion works on YAML nodes, before any step kind parses its body, so the
//! instances are plain steps for the graph, the cache and the executor:
//!
//! - `${{ matrix.AXIS }}` in a scalar is replaced by the instance's value; a
//!   scalar that is only the reference takes the value's type (a float stays a
//!   float), inside a longer string it is text.
//! - A step whose values name an expanded step fans out along the same axes,
//!   and the name is rewritten to the matching instance; so a whole merge →
//!   quantize → eval chain fans out from one `matrix:`. A value equal to an
//!   expanded step's name counts as a reference to it.
//! - `NAME[*]` gathers every instance of `NAME`, in instance order.
//! - Steps that reference no expanded step stay single and are shared.
//!
//! Instance order is deterministic: the cartesian product with the first axis
//! outermost, minus `exclude`, plus `include`, in the order written.

use std::collections::BTreeMap;

use crate::syntax::diag::{did_you_mean, Diag, RecipeError};
use crate::syntax::json_text;
use crate::syntax::yaml::{Node, Span, Value};

/// The default of `--max-variants`.
pub const DEFAULT_MAX_VARIANTS: usize = 64;

/// Options of recipe parsing that come from the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseOptions {
    /// The most instances one step may expand to (`--max-variants`): a typo
    /// in a matrix should not start hundreds of merges.
    pub max_variants: usize,
    /// `--device`: what an eval step's `device: auto` defers to before the
    /// machine is probed (see [`crate::eval::resolve_device`]).
    pub device: crate::steps::Device,
}

impl Default for ParseOptions {
    fn default() -> ParseOptions {
        ParseOptions {
            max_variants: DEFAULT_MAX_VARIANTS,
            device: crate::steps::Device::Auto,
        }
    }
}

/// One combination: each axis with its value, axes in order.
type Variant = Vec<(String, Value)>;

/// How one step was expanded, for `plan`, target selection and reports.
#[derive(Debug, Clone, PartialEq)]
pub struct Expansion {
    /// The step's name as written.
    pub step: String,
    /// Its axes: inherited from the steps it depends on first, then its own.
    pub axes: Vec<String>,
    /// Its instances in order.
    pub instances: Vec<Instance>,
}

/// One instance of an expanded step.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    /// `step[axis=value,...]`.
    pub name: String,
    /// Each axis with its value.
    pub values: Vec<(String, serde_json::Value)>,
}

/// A step entry after expansion: its (instance) name, where the step was
/// declared, and its body with `matrix:` removed and references substituted.
#[derive(Debug, Clone)]
pub struct ExpandedStep {
    /// The instance name (or the step name when not expanded).
    pub name: String,
    /// The span of the step's key.
    pub span: Span,
    /// The body to parse as a step.
    pub body: Node,
}

/// A step's own `matrix:`.
struct Matrix {
    axes: Vec<String>,
    combos: Vec<Variant>,
    span: Span,
}

/// What one step's body refers to among the steps.
#[derive(Default)]
struct Refs {
    /// Steps named as plain values, in order of first appearance.
    plain: Vec<String>,
}

/// Expands every matrixed step of `entries` (the `steps:` mapping) and the
/// steps that depend on them.
pub fn expand(
    entries: &[(Node, Node)],
    diag: &Diag,
    opts: &ParseOptions,
) -> Result<(Vec<ExpandedStep>, Vec<Expansion>), RecipeError> {
    let names: Vec<String> = entries
        .iter()
        .map(|(k, _)| k.as_str().unwrap_or_default().to_owned())
        .collect();
    let mut own: BTreeMap<String, Matrix> = BTreeMap::new();
    let mut refs: BTreeMap<String, Refs> = BTreeMap::new();
    for (name, (_, body)) in names.iter().zip(entries) {
        if let Some(m) = body.get("matrix") {
            own.insert(name.clone(), parse_matrix(m, name, diag)?);
        }
        let mut r = Refs::default();
        collect_refs(body, &names, &mut r);
        refs.insert(name.clone(), r);
    }
    let mut resolver = Resolver {
        own: &own,
        refs: &refs,
        spans: names
            .iter()
            .zip(entries)
            .map(|(n, (k, _))| (n.clone(), k.span))
            .collect(),
        diag,
        opts,
        done: BTreeMap::new(),
        visiting: Vec::new(),
    };
    for name in &names {
        resolver.variants(name)?;
    }
    let variants = resolver.done;
    let axes_of = |name: &str| -> Vec<String> {
        variants
            .get(name)
            .and_then(|v| v.as_ref())
            .and_then(|v| v.first())
            .map(|v| v.iter().map(|(a, _)| a.clone()).collect())
            .unwrap_or_default()
    };
    let mut steps = Vec::new();
    let mut expansions = Vec::new();
    for (name, (key, body)) in names.iter().zip(entries) {
        let body = without_matrix(body);
        match variants.get(name).and_then(|v| v.as_ref()) {
            None => {
                let cx = Instantiate {
                    step: name,
                    variant: &[],
                    variants: &variants,
                    diag,
                };
                steps.push(ExpandedStep {
                    name: name.clone(),
                    span: key.span,
                    body: cx.node(&body)?,
                });
            }
            Some(list) => {
                let mut instances = Vec::new();
                for variant in list {
                    let cx = Instantiate {
                        step: name,
                        variant,
                        variants: &variants,
                        diag,
                    };
                    let instance = instance_name(name, variant);
                    steps.push(ExpandedStep {
                        name: instance.clone(),
                        span: key.span,
                        body: cx.node(&body)?,
                    });
                    instances.push(Instance {
                        name: instance,
                        values: variant
                            .iter()
                            .map(|(a, v)| (a.clone(), value_json(v)))
                            .collect(),
                    });
                }
                expansions.push(Expansion {
                    step: name.clone(),
                    axes: axes_of(name),
                    instances,
                });
            }
        }
    }
    Ok((steps, expansions))
}

/// `step[axis=value,...]`.
fn instance_name(step: &str, variant: &[(String, Value)]) -> String {
    let parts: Vec<String> = variant
        .iter()
        .map(|(a, v)| format!("{a}={}", value_text(v)))
        .collect();
    format!("{step}[{}]", parts.join(","))
}

/// A matrix value as it appears in names and in text substitutions.
fn value_text(v: &Value) -> String {
    json_text(&value_json(v))
}

fn value_json(v: &Value) -> serde_json::Value {
    Node {
        value: v.clone(),
        span: Span::default(),
    }
    .to_json()
}

fn without_matrix(body: &Node) -> Node {
    match &body.value {
        Value::Map(entries) => Node {
            value: Value::Map(
                entries
                    .iter()
                    .filter(|(k, _)| k.as_str() != Some("matrix"))
                    .cloned()
                    .collect(),
            ),
            span: body.span,
        },
        _ => body.clone(),
    }
}

fn parse_matrix(node: &Node, step: &str, diag: &Diag) -> Result<Matrix, RecipeError> {
    let Some(entries) = node.as_map() else {
        return Err(diag.error(
            node.span,
            format!(
                "the matrix of step `{step}` must be a mapping of axes to lists of values, found {}",
                node.type_name()
            ),
        ));
    };
    let mut axes: Vec<(String, Vec<Value>)> = Vec::new();
    for (k, v) in entries {
        let axis = k.as_str().unwrap_or_default();
        if axis == "include" || axis == "exclude" {
            continue;
        }
        let valid = !axis.is_empty()
            && axis
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !valid {
            return Err(diag.error(
                k.span,
                format!("invalid axis name `{axis}`: use letters, digits, `-` and `_`"),
            ));
        }
        let items: Vec<&Node> = match v.as_seq() {
            Some(items) => items.iter().collect(),
            None => vec![v],
        };
        if items.is_empty() {
            return Err(diag.error(
                k.span,
                format!("axis `{axis}` of step `{step}` has no values"),
            ));
        }
        let mut values = Vec::new();
        for item in items {
            let value = scalar_value(item, diag)?;
            if values.contains(&value) {
                return Err(diag.error(
                    item.span,
                    format!(
                        "value `{}` is listed twice on axis `{axis}`",
                        value_text(&value)
                    ),
                ));
            }
            values.push(value);
        }
        axes.push((axis.to_owned(), values));
    }
    if axes.is_empty() {
        return Err(diag.error(
            node.span,
            format!("the matrix of step `{step}` has no axes"),
        ));
    }
    let axis_names: Vec<String> = axes.iter().map(|(a, _)| a.clone()).collect();
    let mut combos: Vec<Variant> = vec![Vec::new()];
    for (axis, values) in &axes {
        combos = combos
            .into_iter()
            .flat_map(|c| {
                values.iter().map(move |v| {
                    let mut c = c.clone();
                    c.push((axis.clone(), v.clone()));
                    c
                })
            })
            .collect();
    }
    if let Some(list) = node.get("exclude") {
        for entry in entries_of(list, "exclude", diag)? {
            let partial = assignment(entry, &axis_names, "exclude", diag)?;
            combos.retain(|c| !partial.iter().all(|p| c.contains(p)));
        }
    }
    if let Some(list) = node.get("include") {
        for entry in entries_of(list, "include", diag)? {
            let partial = assignment(entry, &axis_names, "include", diag)?;
            if partial.len() != axis_names.len() {
                return Err(diag.error(
                    entry.span,
                    format!(
                        "an `include` entry must give a value for every axis ({})",
                        axis_names.join(", ")
                    ),
                ));
            }
            let ordered: Variant = axis_names
                .iter()
                .filter_map(|a| partial.iter().find(|(b, _)| b == a).cloned())
                .collect();
            if !combos.contains(&ordered) {
                combos.push(ordered);
            }
        }
    }
    if combos.is_empty() {
        return Err(diag.error(
            node.span,
            format!("the matrix of step `{step}` excludes every combination"),
        ));
    }
    Ok(Matrix {
        axes: axis_names,
        combos,
        span: entries.first().map_or(node.span, |(k, _)| k.span),
    })
}

fn scalar_value(item: &Node, diag: &Diag) -> Result<Value, RecipeError> {
    match &item.value {
        Value::Int(_) | Value::Float(_) | Value::Bool(_) => Ok(item.value.clone()),
        Value::Str(s)
            if !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) =>
        {
            Ok(item.value.clone())
        }
        Value::Str(s) => Err(diag.error(
            item.span,
            format!("matrix value `{s}` cannot be part of a step name: use letters, digits, `-`, `_` and `.`"),
        )),
        _ => Err(diag.error(
            item.span,
            format!(
                "a matrix value must be a number, a boolean or a string, found {}",
                item.type_name()
            ),
        )),
    }
}

fn entries_of<'a>(list: &'a Node, key: &str, diag: &Diag) -> Result<Vec<&'a Node>, RecipeError> {
    match list.as_seq() {
        Some(items) => Ok(items.iter().collect()),
        None if list.as_map().is_some() => Ok(vec![list]),
        None => Err(diag.error(
            list.span,
            format!("`{key}` must be a list of mappings from axes to values"),
        )),
    }
}

/// An `include`/`exclude` entry as axis assignments, checked against the axes.
fn assignment(
    entry: &Node,
    axes: &[String],
    key: &str,
    diag: &Diag,
) -> Result<Variant, RecipeError> {
    let Some(pairs) = entry.as_map() else {
        return Err(diag.error(
            entry.span,
            format!(
                "an `{key}` entry must be a mapping from axes to values, found {}",
                entry.type_name()
            ),
        ));
    };
    let mut out = Vec::new();
    for (k, v) in pairs {
        let axis = k.as_str().unwrap_or_default();
        if !axes.iter().any(|a| a == axis) {
            let err = diag.error(
                k.span,
                format!(
                    "`{key}` names `{axis}`, which is not an axis of the matrix ({})",
                    axes.join(", ")
                ),
            );
            return Err(match did_you_mean(axis, axes.iter().map(String::as_str)) {
                Some(s) => err.with_help(format!("did you mean `{s}`?")),
                None => err,
            });
        }
        out.push((axis.to_owned(), scalar_value(v, diag)?));
    }
    Ok(out)
}

/// Collects the step names used as plain string values in `node`.
fn collect_refs(node: &Node, names: &[String], out: &mut Refs) {
    match &node.value {
        Value::Str(s) if names.contains(s) && !out.plain.contains(s) => {
            out.plain.push(s.clone());
        }
        Value::Seq(items) => items.iter().for_each(|i| collect_refs(i, names, out)),
        Value::Map(entries) => entries
            .iter()
            .filter(|(k, _)| k.as_str() != Some("matrix"))
            .for_each(|(_, v)| collect_refs(v, names, out)),
        _ => {}
    }
}

/// Computes each step's variants (None: not expanded), dependencies first.
struct Resolver<'a> {
    own: &'a BTreeMap<String, Matrix>,
    refs: &'a BTreeMap<String, Refs>,
    spans: BTreeMap<String, Span>,
    diag: &'a Diag,
    opts: &'a ParseOptions,
    done: BTreeMap<String, Option<Vec<Variant>>>,
    visiting: Vec<String>,
}

impl Resolver<'_> {
    fn variants(&mut self, name: &str) -> Result<Option<Vec<Variant>>, RecipeError> {
        if let Some(v) = self.done.get(name) {
            return Ok(v.clone());
        }
        if self.visiting.iter().any(|v| v == name) {
            // A cycle: reported with its path once the steps are parsed.
            return Ok(None);
        }
        self.visiting.push(name.to_owned());
        let mut inherited: Option<Vec<Variant>> = None;
        let deps = self
            .refs
            .get(name)
            .map(|r| r.plain.clone())
            .unwrap_or_default();
        for dep in deps {
            if let Some(theirs) = self.variants(&dep)? {
                inherited = Some(match inherited {
                    None => theirs,
                    Some(ours) => join(&ours, &theirs),
                });
            }
        }
        self.visiting.pop();
        let result = match (inherited, self.own.get(name)) {
            (None, None) => None,
            (Some(v), None) => Some(v),
            (None, Some(m)) => Some(m.combos.clone()),
            (Some(inh), Some(m)) => {
                if let Some(axis) = m.axes.iter().find(|a| inh[0].iter().any(|(b, _)| b == *a)) {
                    return Err(self.diag.error(
                        m.span,
                        format!("axis `{axis}` of step `{name}` is already an axis of a step it depends on"),
                    ).with_help("a dependent step follows its inputs' axes; give this axis another name"));
                }
                Some(
                    inh.iter()
                        .flat_map(|i| {
                            m.combos.iter().map(move |c| {
                                let mut v = i.clone();
                                v.extend(c.iter().cloned());
                                v
                            })
                        })
                        .collect(),
                )
            }
        };
        if let Some(list) = &result {
            if list.len() > self.opts.max_variants {
                let span = self
                    .own
                    .get(name)
                    .map(|m| m.span)
                    .or_else(|| self.spans.get(name).copied())
                    .unwrap_or_default();
                return Err(self
                    .diag
                    .error(
                        span,
                        format!(
                            "step `{name}` expands to {} variants, more than the limit of {}",
                            list.len(),
                            self.opts.max_variants
                        ),
                    )
                    .with_help("remove values or add `exclude` entries, or raise the limit with --max-variants"));
            }
        }
        self.done.insert(name.to_owned(), result.clone());
        Ok(result)
    }
}

/// The combinations of `a` and `b` that agree on their shared axes, `a`'s
/// order outermost.
fn join(a: &[Variant], b: &[Variant]) -> Vec<Variant> {
    let mut out: Vec<Variant> = Vec::new();
    for x in a {
        for y in b {
            let agree = y
                .iter()
                .all(|(axis, v)| x.iter().all(|(ax, w)| ax != axis || w == v));
            if !agree {
                continue;
            }
            let mut merged = x.clone();
            for (axis, v) in y {
                if !merged.iter().any(|(ax, _)| ax == axis) {
                    merged.push((axis.clone(), v.clone()));
                }
            }
            if !out.contains(&merged) {
                out.push(merged);
            }
        }
    }
    out
}

/// Substitutes one instance's values and references into a step body.
struct Instantiate<'a> {
    step: &'a str,
    variant: &'a [(String, Value)],
    variants: &'a BTreeMap<String, Option<Vec<Variant>>>,
    diag: &'a Diag,
}

impl Instantiate<'_> {
    fn node(&self, node: &Node) -> Result<Node, RecipeError> {
        let value = match &node.value {
            Value::Str(s) => return self.scalar(s, node.span),
            Value::Seq(items) => {
                let mut out = Vec::new();
                for item in items {
                    match item.as_str().and_then(|s| self.gather(s, item.span)) {
                        Some(all) => out.extend(all),
                        None => out.push(self.node(item)?),
                    }
                }
                Value::Seq(out)
            }
            Value::Map(entries) => Value::Map(
                entries
                    .iter()
                    .map(|(k, v)| Ok((k.clone(), self.node(v)?)))
                    .collect::<Result<_, RecipeError>>()?,
            ),
            other => other.clone(),
        };
        Ok(Node {
            value,
            span: node.span,
        })
    }

    /// `NAME[*]`: every instance of `NAME` as string nodes (just `NAME` when it
    /// is not expanded); None when `s` is not such a reference to a step.
    fn gather(&self, s: &str, span: Span) -> Option<Vec<Node>> {
        let base = s.strip_suffix("[*]")?;
        let names = match self.variants.get(base)? {
            None => vec![base.to_owned()],
            Some(list) => list.iter().map(|v| instance_name(base, v)).collect(),
        };
        Some(
            names
                .into_iter()
                .map(|n| Node {
                    value: Value::Str(n),
                    span,
                })
                .collect(),
        )
    }

    fn scalar(&self, s: &str, span: Span) -> Result<Node, RecipeError> {
        let text = |t: String| Node {
            value: Value::Str(t),
            span,
        };
        if let Some(all) = self.gather(s, span) {
            return Ok(Node {
                value: Value::Seq(all),
                span,
            });
        }
        if let Some(Some(list)) = self.variants.get(s) {
            // A reference to an expanded step: the instance on this variant's values.
            let axes: Vec<&String> = list[0].iter().map(|(a, _)| a).collect();
            let restricted: Variant = axes
                .iter()
                .filter_map(|a| self.variant.iter().find(|(b, _)| b == *a).cloned())
                .collect();
            return Ok(text(instance_name(s, &restricted)));
        }
        if !s.contains("${{") {
            return Ok(text(s.to_owned()));
        }
        let mut out = String::new();
        let mut rest = s;
        while let Some(start) = rest.find("${{") {
            let Some(len) = rest[start..].find("}}") else {
                return Err(self
                    .diag
                    .error(span, "unclosed `${{`: expected `${{ matrix.AXIS }}`"));
            };
            let expr = rest[start + 3..start + len].trim();
            let value = self.lookup(expr, span)?;
            let whole = start == 0 && rest[start + len + 2..].is_empty() && out.is_empty();
            if whole {
                return Ok(Node { value, span });
            }
            out.push_str(&rest[..start]);
            out.push_str(&value_text(&value));
            rest = &rest[start + len + 2..];
        }
        out.push_str(rest);
        Ok(text(out))
    }

    fn lookup(&self, expr: &str, span: Span) -> Result<Value, RecipeError> {
        let Some(axis) = expr.strip_prefix("matrix.") else {
            return Err(self.diag.error(
                span,
                format!("`${{{{ {expr} }}}}` is not a matrix reference: expected `${{{{ matrix.AXIS }}}}`"),
            ));
        };
        if let Some((_, v)) = self.variant.iter().find(|(a, _)| a == axis) {
            return Ok(v.clone());
        }
        if self.variant.is_empty() {
            return Err(self.diag.error(
                span,
                format!("step `{}` refers to `matrix.{axis}` but has no matrix and depends on no step with one", self.step),
            ));
        }
        let axes: Vec<&str> = self.variant.iter().map(|(a, _)| a.as_str()).collect();
        let err = self.diag.error(
            span,
            format!(
                "`matrix.{axis}` is not an axis of step `{}` (its axes: {})",
                self.step,
                axes.join(", ")
            ),
        );
        Err(match did_you_mean(axis, axes.iter().copied()) {
            Some(s) => err.with_help(format!("did you mean `matrix.{s}`?")),
            None => err,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::syntax::yaml::parse_documents;
    use std::path::Path;

    fn run(text: &str, max: usize) -> Result<(Vec<ExpandedStep>, Vec<Expansion>), RecipeError> {
        let diag = Diag::new(Path::new("r.yaml"), text);
        let doc = parse_documents(text).unwrap().remove(0);
        expand(
            doc.as_map().unwrap(),
            &diag,
            &ParseOptions {
                max_variants: max,
                ..ParseOptions::default()
            },
        )
    }

    fn names(steps: &[ExpandedStep]) -> Vec<&str> {
        steps.iter().map(|s| s.name.as_str()).collect()
    }

    #[test]
    fn cartesian_product_first_axis_outermost_and_typed_substitution() {
        let (steps, exp) = run(
            "m:\n  matrix: {density: [0.5, 0.75], weight: [1, 2]}\n  x: {d: '${{ matrix.density }}', note: 'd=${{matrix.density}} w=${{ matrix.weight }}'}\n",
            64,
        )
        .unwrap();
        assert_eq!(
            names(&steps),
            [
                "m[density=0.5,weight=1]",
                "m[density=0.5,weight=2]",
                "m[density=0.75,weight=1]",
                "m[density=0.75,weight=2]"
            ]
        );
        let body = &steps[3].body;
        assert_eq!(body.get("matrix"), None);
        let x = body.get("x").unwrap();
        assert_eq!(x.get("d").unwrap().value, Value::Float(0.75));
        assert_eq!(x.get("note").unwrap().as_str(), Some("d=0.75 w=2"));
        assert_eq!(exp[0].axes, ["density", "weight"]);
        assert_eq!(
            exp[0].instances[1].values[1],
            ("weight".to_owned(), serde_json::json!(2))
        );
    }

    #[test]
    fn exclude_partial_and_include_appended() {
        let (steps, _) = run(
            "m:\n  matrix:\n    a: [1, 2]\n    b: [x, y]\n    exclude: [{a: 1}]\n    include: [{a: 3, b: x}, {a: 2, b: y}]\n  k: 0\n",
            64,
        )
        .unwrap();
        assert_eq!(names(&steps), ["m[a=2,b=x]", "m[a=2,b=y]", "m[a=3,b=x]"]);
    }

    #[test]
    fn dependents_fan_out_shared_steps_stay_single_and_gather_collects() {
        let (steps, exp) = run(
            "tok: {k: src}\nm:\n  matrix: {d: [0.5, 0.6]}\n  k: {model: tok, d: '${{ matrix.d }}'}\nq:\n  matrix: {t: [q4, q8]}\n  k: {model: m}\ne:\n  k: {model: q, note: 'for ${{ matrix.t }}'}\nr:\n  k: {evals: ['e[*]', tok]}\n",
            64,
        )
        .unwrap();
        assert_eq!(
            names(&steps),
            [
                "tok",
                "m[d=0.5]",
                "m[d=0.6]",
                "q[d=0.5,t=q4]",
                "q[d=0.5,t=q8]",
                "q[d=0.6,t=q4]",
                "q[d=0.6,t=q8]",
                "e[d=0.5,t=q4]",
                "e[d=0.5,t=q8]",
                "e[d=0.6,t=q4]",
                "e[d=0.6,t=q8]",
                "r"
            ]
        );
        assert_eq!(
            steps[1]
                .body
                .get("k")
                .unwrap()
                .get("model")
                .unwrap()
                .as_str(),
            Some("tok")
        );
        assert_eq!(
            steps[5]
                .body
                .get("k")
                .unwrap()
                .get("model")
                .unwrap()
                .as_str(),
            Some("m[d=0.6]")
        );
        let e = steps[8].body.get("k").unwrap();
        assert_eq!(e.get("model").unwrap().as_str(), Some("q[d=0.5,t=q8]"));
        assert_eq!(e.get("note").unwrap().as_str(), Some("for q8"));
        let evals: Vec<_> = steps[11]
            .body
            .get("k")
            .unwrap()
            .get("evals")
            .unwrap()
            .as_seq()
            .unwrap()
            .iter()
            .map(|n| n.as_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            evals,
            [
                "e[d=0.5,t=q4]",
                "e[d=0.5,t=q8]",
                "e[d=0.6,t=q4]",
                "e[d=0.6,t=q8]",
                "tok"
            ]
        );
        assert_eq!(
            exp.iter().map(|e| e.step.as_str()).collect::<Vec<_>>(),
            ["m", "q", "e"]
        );
        assert_eq!(exp[2].axes, ["d", "t"]);
    }

    #[test]
    fn two_matrixed_inputs_join_on_shared_axes() {
        let (steps, _) = run(
            "a:\n  matrix: {d: [1, 2]}\n  k: 0\nb:\n  k: {m: a}\nc:\n  k: {x: a, y: b}\n",
            64,
        )
        .unwrap();
        assert_eq!(
            names(&steps),
            ["a[d=1]", "a[d=2]", "b[d=1]", "b[d=2]", "c[d=1]", "c[d=2]"]
        );
        assert_eq!(
            steps[5].body.get("k").unwrap().get("y").unwrap().as_str(),
            Some("b[d=2]")
        );
    }

    fn err(text: &str, max: usize) -> RecipeError {
        run(text, max).expect_err("an error")
    }

    #[test]
    fn errors_name_the_place() {
        let e = err(
            "m:\n  matrix: {density: [0.5]}\n  k: '${{ matrix.densty }}'\n",
            64,
        );
        assert!(
            e.message
                .contains("`matrix.densty` is not an axis of step `m`"),
            "{e}"
        );
        assert_eq!(e.help.as_deref(), Some("did you mean `matrix.density`?"));
        assert_eq!((e.span.line, e.span.col), (3, 6));
        let e = err("m:\n  matrix: {density: []}\n  k: 0\n", 64);
        assert!(
            e.message
                .contains("axis `density` of step `m` has no values"),
            "{e}"
        );
        assert_eq!(e.span.line, 2);
        let e = err(
            "m:\n  matrix:\n    density: [1]\n    exclude: [{densty: 1}]\n  k: 0\n",
            64,
        );
        assert!(
            e.message
                .contains("`exclude` names `densty`, which is not an axis"),
            "{e}"
        );
        assert_eq!((e.span.line, e.span.col), (4, 16));
        let e = err("m:\n  k: '${{ matrix.a }}'\n", 64);
        assert!(e.message.contains("has no matrix"), "{e}");
        let e = err("m:\n  matrix: {a: [1, 1]}\n  k: 0\n", 64);
        assert!(e.message.contains("listed twice"), "{e}");
    }

    #[test]
    fn variant_limit_counts_dependents_too() {
        let text = "m:\n  matrix: {a: [1, 2, 3], b: [1, 2, 3]}\n  k: 0\n";
        let e = err(text, 8);
        assert!(
            e.message
                .contains("step `m` expands to 9 variants, more than the limit of 8"),
            "{e}"
        );
        assert_eq!(e.span.line, 2);
        assert!(run(text, 9).is_ok());
        let e = err(
            "m:\n  matrix: {a: [1, 2]}\n  k: 0\nq:\n  matrix: {b: [1, 2, 3]}\n  k: m\n",
            5,
        );
        assert!(e.message.contains("step `q` expands to 6 variants"), "{e}");
    }
}
