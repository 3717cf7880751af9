//! Step kinds: one file each, all behind the [`Step`] trait.
//!
//! A step is a pure function of its inputs and parameters. It reads the input
//! artifacts it declared, writes into the fresh output directory it is given, and
//! says nothing except through that directory and progress messages. The
//! executor owns the cache; steps never touch it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::cache::Manifest;
use crate::hub::LockEntry;

use crate::card::RecipeFacts;
use crate::syntax::diag::{Diag, RecipeError};
use crate::syntax::yaml::{Node, Span};

mod eval;
mod merge;
mod package;
mod patch_config;
pub mod publish;
mod quantize;
mod report;
mod run;
pub mod select;
mod tokenizer;

pub use crate::eval::Device;

/// The implementation of one step kind, parsed from its recipe entry.
pub trait Step: Send + Sync + std::fmt::Debug {
    /// The kind name as written in recipes (`merge`, `patch_config`, ...).
    fn kind(&self) -> &'static str;

    /// The implementation version; bump it whenever the same inputs and
    /// parameters would produce different output bytes, so old cache entries
    /// stop matching.
    fn version(&self) -> u32;

    /// The sources and steps this step reads, with where the recipe names them.
    fn inputs(&self) -> Vec<InputRef>;

    /// Normalized parameters: everything besides input contents that determines
    /// the output. Hashed canonically into the step key, so it must not contain
    /// paths, times or anything machine-specific.
    fn params(&self) -> serde_json::Value;

    /// Estimated peak memory in bytes, used by the scheduler's `--mem-budget`.
    fn memory_estimate(&self, _ctx: &StepContext) -> u64 {
        256 << 20
    }

    /// Checks what can be checked cheaply before any step of the build runs
    /// (configs and tensor indexes of source inputs). Inputs that are other
    /// steps' outputs are not available yet and are absent from `sources`.
    fn preflight(&self, _sources: &BTreeMap<String, PathBuf>) -> anyhow::Result<()> {
        Ok(())
    }

    /// Receives facts about the whole recipe once it is parsed, for steps whose
    /// output describes the build (the package's model card). Whatever a step
    /// keeps from it must appear in [`params`](Step::params).
    fn bind(&mut self, _recipe: &RecipeFacts) {}

    /// Produces the output in `ctx.out_dir`.
    fn run(&self, ctx: &StepContext) -> anyhow::Result<()>;
}

/// A reference from a step to a source or another step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputRef {
    /// The referenced source or step name.
    pub name: String,
    /// Where the reference is written, for "unknown source or step" errors.
    pub span: Span,
    /// Which files of the input the step reads: its key hashes only those.
    pub reads: Reads,
}

impl InputRef {
    /// The same reference, reading only the files `reads` selects.
    pub fn reading(mut self, reads: Reads) -> InputRef {
        self.reads = reads;
        self
    }
}

/// The part of an input a step reads: a set of file groups. A step's key
/// covers only that part, so an eval that borrows a model's tokenizer is not
/// rebuilt when that model's weights change, and an eval of the weights is not
/// rebuilt when only the chat template changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reads(u8);

impl Default for Reads {
    fn default() -> Reads {
        Reads::EVERYTHING
    }
}

impl Reads {
    /// Every file of the input.
    pub const EVERYTHING: Reads = Reads(u8::MAX);
    /// The model itself: `config.json` and the weights (safetensors shards and
    /// their index, GGUF files).
    pub const MODEL: Reads = Reads(1);
    /// The tokenizer (`tokenizer.json`).
    pub const TOKENIZER: Reads = Reads(2);

    /// Whether a file at `path` (relative to the artifact, `""` for a
    /// single-file artifact, which is always read whole) is part of what is
    /// read.
    pub fn includes(self, path: &str) -> bool {
        let model = || {
            path == "config.json"
                || path == "model.safetensors.index.json"
                || (!path.contains('/')
                    && (path.ends_with(".safetensors") || path.ends_with(".gguf")))
        };
        self == Reads::EVERYTHING
            || path.is_empty()
            || (self.0 & Reads::MODEL.0 != 0 && model())
            || (self.0 & Reads::TOKENIZER.0 != 0 && path == "tokenizer.json")
    }

    /// What two references to the same input read together.
    pub fn union(self, other: Reads) -> Reads {
        Reads(self.0 | other.0)
    }

    /// A number naming the set, so that digests of different parts never
    /// coincide.
    pub fn code(self) -> u8 {
        self.0
    }
}

/// A finished input: where its bytes are and their content digest.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Artifact {
    /// A file or directory.
    pub path: PathBuf,
    /// Hex digest of the whole artifact (its manifest or its Hub lock entry).
    pub digest: String,
    /// The content id of each file by relative path (`""` for a single-file
    /// artifact), so that a key can cover only the files a step reads.
    pub files: Arc<BTreeMap<String, String>>,
}

impl Artifact {
    /// The artifact at `path` whose files `manifest` lists.
    pub fn from_manifest(path: PathBuf, manifest: &Manifest) -> Artifact {
        Artifact {
            path,
            digest: manifest.digest(),
            files: Arc::new(
                manifest
                    .files
                    .iter()
                    .map(|e| (e.path.clone(), file_id(e.size, &e.hash, e.exec)))
                    .collect(),
            ),
        }
    }

    /// A Hub snapshot at `path` pinned by `entry`.
    pub fn from_lock(path: PathBuf, entry: &LockEntry) -> Artifact {
        Artifact {
            path,
            digest: entry.digest(),
            files: Arc::new(
                entry
                    .files
                    .iter()
                    .map(|(p, f)| (p.clone(), f.content_id()))
                    .collect(),
            ),
        }
    }

    /// The files `reads` selects, with their content ids.
    pub fn files_read(&self, reads: Reads) -> BTreeMap<String, String> {
        self.files
            .iter()
            .filter(|(p, _)| reads.includes(p))
            .map(|(p, id)| (p.clone(), id.clone()))
            .collect()
    }

    /// The digest of the part of the artifact `reads` selects: the whole
    /// artifact's digest when everything is read.
    pub fn digest_of(&self, reads: Reads) -> String {
        match reads {
            Reads::EVERYTHING => self.digest.clone(),
            part => {
                let value =
                    serde_json::json!({"part": part.code(), "files": self.files_read(part)});
                blake3::hash(crate::cache::canonical_json(&value).as_bytes())
                    .to_hex()
                    .to_string()
            }
        }
    }
}

/// One file's content id within an artifact: size, blake3 and exec bit.
fn file_id(size: u64, hash: &str, exec: bool) -> String {
    format!("{size}:{hash}{}", if exec { ":x" } else { "" })
}

/// What a running step is given.
pub struct StepContext<'a> {
    /// The step's name in the recipe.
    pub name: &'a str,
    /// The recipe's `name`.
    pub recipe_name: &'a str,
    /// Every declared input, by the name the step used for it.
    pub inputs: &'a BTreeMap<String, Artifact>,
    /// An empty directory the step writes its output into.
    pub out_dir: &'a Path,
    /// Threads the step may use.
    pub threads: usize,
    /// The memory budget in bytes the step should stay under.
    pub mem_budget: u64,
    /// Device choice from `--device`.
    pub device: Device,
    /// Progress and notes for the user (one line each).
    pub log: &'a (dyn Fn(&str) + Sync),
}

impl StepContext<'_> {
    /// The artifact of a declared input.
    pub fn input(&self, name: &str) -> anyhow::Result<&Artifact> {
        self.inputs
            .get(name)
            .ok_or_else(|| anyhow::anyhow!("internal: input `{name}` was not provided"))
    }
}

/// What a step parser needs besides the YAML node.
pub struct ParseContext<'a> {
    /// Diagnostics for the recipe file.
    pub diag: &'a Diag,
    /// The step's name.
    pub step: &'a str,
    /// The step's `seed:` (for randomized methods), if written.
    pub seed: Option<u64>,
    /// `--device`, which a step's `device: auto` defers to.
    pub device: Device,
}

/// Every step kind a recipe may use, as written.
pub const KINDS: &[&str] = &[
    "merge",
    "patch_config",
    "tokenizer",
    "quantize",
    "eval",
    "package",
    "publish",
    "run",
    "report",
    "select",
];

/// Parses the body of a step of kind `kind`.
pub fn parse(kind: &str, node: &Node, cx: &ParseContext) -> Result<Box<dyn Step>, RecipeError> {
    match kind {
        "merge" => Ok(Box::new(merge::Merge::parse(node, cx)?)),
        "patch_config" => Ok(Box::new(patch_config::PatchConfig::parse(node, cx)?)),
        "run" => Ok(Box::new(run::Run::parse(node, cx)?)),
        "package" => Ok(Box::new(package::Package::parse(node, cx)?)),
        "publish" => Ok(Box::new(publish::Publish::parse(node, cx)?)),
        "tokenizer" => Ok(Box::new(tokenizer::TokenizerStep::parse(node, cx)?)),
        "eval" => Ok(Box::new(eval::Eval::parse(node, cx)?)),
        "quantize" => Ok(Box::new(quantize::Quantize::parse(node, cx)?)),
        "report" => Ok(Box::new(report::Report::parse(node, cx)?)),
        "select" => Ok(Box::new(select::Select::parse(node, cx)?)),
        _ => Err(cx.diag.error(
            node.span,
            format!("step kind `{kind}` is not implemented yet"),
        )),
    }
}

/// A reference to a source or step written as a plain string value.
pub fn input_ref(diag: &Diag, node: &Node, key: &str) -> Result<InputRef, RecipeError> {
    Ok(InputRef {
        name: crate::syntax::fields::expect_str(diag, node, key)?,
        span: node.span,
        reads: Reads::EVERYTHING,
    })
}
