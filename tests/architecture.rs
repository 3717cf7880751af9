//! The crate's layering, checked on its source: every module sits in a layer,
//! imports only from its own layer or below, the import graph has no cycles
//! (the build layer is checked file by file), and nothing below the CLI
//! prints. The README's Architecture section describes the same layers.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level modules of `src/`, bottom layer first.
const LAYERS: &[(&str, u8)] = &[
    ("fs", 0),
    ("syntax", 0),
    ("simd", 0),
    ("cache", 1),
    ("tensor", 1),
    ("hf", 1),
    ("hub", 2),
    ("fixtures", 2),
    ("tokenizer", 2),
    ("gguf", 2),
    ("eval", 2),
    ("merge", 2),
    ("sweep", 2),
    ("card", 2),
    ("steps", 3),
    ("recipe", 4),
    ("build", 5),
    ("cli", 6),
];

/// Modules whose files are checked one by one for cycles.
const BY_FILE: &[&str] = &["build"];

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The file's code without its unit tests and comments: tests may use any
/// fixture, and doc links are not imports.
fn code(text: &str) -> String {
    let text = text.split("#[cfg(test)]\nmod tests").next().unwrap();
    text.lines()
        .map(|l| l.split("//").next().unwrap())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The unit a file belongs to: its top-level module, or `module::file` for
/// the modules in [`BY_FILE`].
fn unit_of(rel: &str) -> String {
    let parts: Vec<&str> = rel.trim_end_matches(".rs").split('/').collect();
    match parts.as_slice() {
        [top, file, ..] if BY_FILE.contains(top) && *file != "mod" => format!("{top}::{file}"),
        [top, ..] => top.to_string(),
        [] => unreachable!(),
    }
}

/// The units a file's code names through `crate::` paths, grouped imports
/// (`crate::{a, b}`) included.
fn imports(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        let heads: Vec<String> = if let Some(group) = rest.strip_prefix('{') {
            let group = &group[..group.find('}').unwrap_or(group.len())];
            group
                .split(',')
                .map(|p| p.trim().to_string())
                .filter(|p| !p.is_empty())
                .collect()
        } else {
            vec![rest.to_string()]
        };
        for head in heads {
            let top = ident(&head);
            let unit = match head[top.len()..].strip_prefix("::") {
                Some(sub) if BY_FILE.contains(&top.as_str()) && !ident(sub).is_empty() => {
                    format!("{top}::{}", ident(sub))
                }
                _ => top,
            };
            out.insert(unit);
        }
    }
    out
}

struct Crate {
    /// Unit → units it imports, with the files that do.
    edges: BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
    /// Relative path → code.
    files: BTreeMap<String, String>,
}

fn load() -> Crate {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut paths = Vec::new();
    rust_files(&src, &mut paths);
    let mut edges: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    let mut files = BTreeMap::new();
    for path in paths {
        let rel = path
            .strip_prefix(&src)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let code = code(&std::fs::read_to_string(&path).unwrap());
        let unit = unit_of(&rel);
        for target in imports(&code) {
            if target != unit && unit != "main" && unit != "lib" {
                edges
                    .entry(unit.clone())
                    .or_default()
                    .entry(target)
                    .or_default()
                    .insert(rel.clone());
            }
        }
        files.insert(rel, code);
    }
    Crate { edges, files }
}

fn layer(unit: &str) -> Option<u8> {
    let top = unit.split("::").next().unwrap();
    LAYERS.iter().find(|(m, _)| *m == top).map(|(_, l)| *l)
}

#[test]
fn every_module_has_a_layer() {
    let krate = load();
    let tops: BTreeSet<String> = krate
        .files
        .keys()
        .map(|rel| {
            rel.split('/')
                .next()
                .unwrap()
                .trim_end_matches(".rs")
                .to_string()
        })
        .filter(|m| m != "main" && m != "lib")
        .collect();
    let unplaced: Vec<&String> = tops.iter().filter(|m| layer(m).is_none()).collect();
    assert!(
        unplaced.is_empty(),
        "modules without a layer in tests/architecture.rs (and the README): {unplaced:?}"
    );
}

#[test]
fn no_module_imports_from_a_higher_layer() {
    let krate = load();
    let mut upward = Vec::new();
    for (from, targets) in &krate.edges {
        for (to, files) in targets {
            if let (Some(a), Some(b)) = (layer(from), layer(to)) {
                if b > a {
                    upward.push(format!(
                        "{from} (layer {a}) imports {to} (layer {b}) in {files:?}"
                    ));
                }
            }
        }
    }
    assert!(upward.is_empty(), "{}", upward.join("\n"));
}

#[test]
fn the_import_graph_has_no_cycles() {
    let krate = load();
    // Depth-first search for a back edge; reports the cycle it closes.
    fn visit(
        unit: &str,
        edges: &BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|u| u == unit) {
            let mut cycle = path[at..].to_vec();
            cycle.push(unit.to_string());
            return Some(cycle);
        }
        if done.contains(unit) {
            return None;
        }
        path.push(unit.to_string());
        for next in edges.get(unit).into_iter().flat_map(|t| t.keys()) {
            if let Some(cycle) = visit(next, edges, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(unit.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for unit in krate.edges.keys() {
        if let Some(cycle) = visit(unit, &krate.edges, &mut Vec::new(), &mut done) {
            panic!("import cycle: {}", cycle.join(" -> "));
        }
    }
}

#[test]
fn nothing_below_the_cli_prints() {
    let krate = load();
    let printing: Vec<&String> = krate
        .files
        .iter()
        .filter(|(rel, _)| !rel.starts_with("cli/") && *rel != "main.rs")
        .filter(|(_, code)| {
            ["println!", "eprintln!", "print!(", "eprint!("]
                .iter()
                .any(|m| code.contains(m))
        })
        .map(|(rel, _)| rel)
        .collect();
    assert!(
        printing.is_empty(),
        "files below the CLI that print: {printing:?}"
    );
}

#[test]
fn the_checker_sees_imports_and_cycles() {
    // The checks above pass vacuously if the parser finds nothing.
    let found = imports("use crate::build::plan::Plan;\nuse crate::{fs, syntax::yaml};\n");
    assert_eq!(
        found,
        ["build::plan", "fs", "syntax"]
            .map(String::from)
            .into_iter()
            .collect()
    );
    assert_eq!(unit_of("build/slurm/job.rs"), "build::slurm");
    assert_eq!(unit_of("build/mod.rs"), "build");
    assert_eq!(unit_of("recipe/matrix.rs"), "recipe");
    let krate = load();
    assert!(krate.edges["build::exec"].contains_key("build::plan"));
    assert!(krate.edges["steps"].contains_key("merge"));
}
