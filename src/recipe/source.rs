//! Recipe sources: local files and folders, and Hugging Face Hub repositories.

use std::path::{Path, PathBuf};

use crate::syntax::diag::{Diag, RecipeError};
use crate::syntax::yaml::{Node, Span};

/// Where a source's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceSpec {
    /// A file or folder on disk.
    Local {
        /// As written in the recipe.
        written: String,
        /// Resolved against the recipe's directory.
        path: PathBuf,
    },
    /// A Hub model repository, `hf://org/name[@revision]`.
    Hub {
        /// `org/name`.
        repo: String,
        /// Branch, tag or commit; `main` when omitted.
        revision: String,
    },
}

/// A named input of the recipe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// The name steps refer to it by.
    pub name: String,
    /// Where it comes from.
    pub spec: SourceSpec,
    /// Where the recipe declares it.
    pub span: Span,
}

impl Source {
    /// Parses the string form, `hf://org/name[@rev]` or a path.
    pub fn parse(name: &str, node: &Node, diag: &Diag, base: &Path) -> Result<Source, RecipeError> {
        let Some(text) = node.as_str() else {
            return Err(diag.error(
                node.span,
                format!(
                    "source `{name}` must be a path or `hf://org/name[@revision]`, found {}",
                    node.type_name()
                ),
            ));
        };
        let spec = if let Some(rest) = text.strip_prefix("hf://") {
            parse_hub(rest).ok_or_else(|| {
                diag.error(
                    node.span,
                    format!(
                        "source `{name}`: `{text}` is not of the form hf://org/name[@revision]"
                    ),
                )
            })?
        } else if text.contains("://") {
            return Err(diag.error(
                node.span,
                format!("source `{name}`: unsupported scheme in `{text}` (use a path or hf://)"),
            ));
        } else {
            SourceSpec::Local {
                written: text.to_owned(),
                path: base.join(text),
            }
        };
        Ok(Source {
            name: name.to_owned(),
            spec,
            span: node.span,
        })
    }

    /// A short description for plans and cards (`hf://org/name@rev` or the path as written).
    pub fn describe(&self) -> String {
        match &self.spec {
            SourceSpec::Local { written, .. } => written.clone(),
            SourceSpec::Hub { repo, revision } if revision == "main" => format!("hf://{repo}"),
            SourceSpec::Hub { repo, revision } => format!("hf://{repo}@{revision}"),
        }
    }

    /// The Hub repository id, for cards (`base_model`).
    pub fn hub_repo(&self) -> Option<&str> {
        match &self.spec {
            SourceSpec::Hub { repo, .. } => Some(repo),
            SourceSpec::Local { .. } => None,
        }
    }
}

/// Parses `org/name[@revision]`.
pub fn parse_hub(text: &str) -> Option<SourceSpec> {
    let (repo, revision) = match text.split_once('@') {
        Some((r, rev)) if !rev.is_empty() => (r, rev),
        Some(_) => return None,
        None => (text, "main"),
    };
    let mut parts = repo.split('/');
    let (org, model) = (parts.next()?, parts.next()?);
    let valid = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    if parts.next().is_some() || !valid(org) || !valid(model) {
        return None;
    }
    Some(SourceSpec::Hub {
        repo: repo.to_owned(),
        revision: revision.to_owned(),
    })
}

/// Why a source cannot be read right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unavailable {
    /// A local path that does not exist.
    Missing(PathBuf),
    /// A Hub repository (or revision) not in the local Hub cache.
    NotFetched {
        /// `org/name`.
        repo: String,
        /// The revision asked for.
        revision: String,
    },
}

impl std::error::Error for Unavailable {}

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unavailable::Missing(p) => write!(f, "{} does not exist", p.display()),
            Unavailable::NotFetched { repo, revision } => write!(
                f,
                "hf://{repo}@{revision} is not in the Hub cache ({}); download it first, e.g. \
                 `huggingface-cli download {repo} --revision {revision}`",
                crate::hub::hub_cache_dir().display()
            ),
        }
    }
}

impl Source {
    /// The file or folder holding the source's bytes: the local path, or the
    /// snapshot folder of the pinned commit in the Hub cache.
    pub fn locate(&self) -> Result<PathBuf, Unavailable> {
        match &self.spec {
            SourceSpec::Local { path, .. } => {
                if path.exists() {
                    Ok(path.clone())
                } else {
                    Err(Unavailable::Missing(path.clone()))
                }
            }
            SourceSpec::Hub { repo, revision } => {
                let repo_dir = crate::hub::hub_cache_dir()
                    .join(format!("models--{}", repo.replace('/', "--")));
                let commit = std::fs::read_to_string(repo_dir.join("refs").join(revision))
                    .map(|s| s.trim().to_owned())
                    .unwrap_or_else(|_| revision.clone());
                let snapshot = repo_dir.join("snapshots").join(commit);
                if snapshot.is_dir() {
                    Ok(snapshot)
                } else {
                    Err(Unavailable::NotFetched {
                        repo: repo.clone(),
                        revision: revision.clone(),
                    })
                }
            }
        }
    }
}
