//! Recipe diagnostics: an error message tied to a place in a file, rendered the
//! way rustc and cargo render theirs.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::yaml::Span;

/// An error in a recipe (or a mergekit config), with the file, the place and
/// optionally a hint. Bad recipes exit with code 2.
#[derive(Debug, Clone)]
pub struct RecipeError {
    /// What is wrong.
    pub message: String,
    /// The file the recipe came from.
    pub file: PathBuf,
    /// Where in the file (line 0 when the error is about the file as a whole).
    pub span: Span,
    /// The text of the file, to show the offending line.
    pub source: Option<Arc<str>>,
    /// A suggestion such as "did you mean `density`?".
    pub help: Option<String>,
}

impl RecipeError {
    /// An error about the whole file (no line to point at).
    pub fn file(file: &Path, message: impl Into<String>) -> RecipeError {
        RecipeError {
            message: message.into(),
            file: file.to_path_buf(),
            span: Span::default(),
            source: None,
            help: None,
        }
    }

    /// Adds a hint line.
    pub fn with_help(mut self, help: impl Into<String>) -> RecipeError {
        self.help = Some(help.into());
        self
    }

    /// The `file:line:col` location string.
    pub fn location(&self) -> String {
        if self.span.line == 0 {
            self.file.display().to_string()
        } else {
            format!(
                "{}:{}:{}",
                self.file.display(),
                self.span.line,
                self.span.col
            )
        }
    }
}

impl fmt::Display for RecipeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.message)?;
        write!(f, "  --> {}", self.location())?;
        let line_text = self
            .source
            .as_deref()
            .and_then(|s| s.lines().nth(self.span.line.wrapping_sub(1)));
        if let Some(text) = line_text {
            let number = self.span.line.to_string();
            let pad = " ".repeat(number.len());
            write!(
                f,
                "\n{pad} |\n{number} | {text}\n{pad} | {}{}",
                " ".repeat(self.span.col.saturating_sub(1)),
                "^".repeat(self.span.len.max(1))
            )?;
        }
        if let Some(help) = &self.help {
            write!(f, "\n  = help: {help}")?;
        }
        Ok(())
    }
}

impl std::error::Error for RecipeError {}

/// The closest of `candidates` to `word`, if it is close enough to be a likely typo.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// Builds [`RecipeError`]s for one file: carries its path and text so that
/// parsing code only says what and where.
#[derive(Debug, Clone)]
pub struct Diag {
    file: PathBuf,
    source: Arc<str>,
}

impl Diag {
    /// A diagnostic context for `file` whose text is `source`.
    pub fn new(file: &Path, source: &str) -> Diag {
        Diag {
            file: file.to_path_buf(),
            source: Arc::from(source),
        }
    }

    /// The file the diagnostics are about.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// An error at `span`.
    pub fn error(&self, span: Span, message: impl Into<String>) -> RecipeError {
        RecipeError {
            message: message.into(),
            file: self.file.clone(),
            span,
            source: Some(self.source.clone()),
            help: None,
        }
    }
}
