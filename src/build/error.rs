//! Errors in what the user asked for, found before anything runs (exit code
//! 2), with their causes kept for the chain `main` prints.

use std::path::PathBuf;

use crate::cache::CacheError;
use crate::fs::error::IoError;
use crate::syntax::diag::RecipeError;

/// Why a build stopped before its plan could run to the end. A step that
/// fails is not one: its failure is in the build's summary, and unrelated
/// steps go on.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// What the user asked for is wrong (exit code 2).
    #[error(transparent)]
    Input(#[from] InputError),
    /// A recipe that a check made at build time refuses (a Slurm request no
    /// node can run): exit code 2, rendered with its place in the file.
    #[error(transparent)]
    Recipe(#[from] RecipeError),
    /// The cache cannot be opened, read or written.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// The build folder cannot be prepared.
    #[error(transparent)]
    Io(#[from] IoError),
    /// A source's files cannot be read to hash them.
    #[error("cannot hash source `{name}`")]
    Source {
        /// The source's name in the recipe.
        name: String,
        /// Why.
        #[source]
        cause: CacheError,
    },
    /// The Hub sources' weights cannot be downloaded.
    #[error("cannot download the Hub sources")]
    Download(#[source] anyhow::Error),
    /// A download from the remote cache cannot be stored in the local cache.
    #[error("cannot store a download from the remote cache")]
    Restore(#[source] anyhow::Error),
    /// The remote cache was required (`--remote-cache-required`) and failed.
    #[error("the remote cache is required (--remote-cache-required) and failed")]
    RemoteRequired(#[source] anyhow::Error),
}

/// An error in what the user asked for (an unknown step, a missing source, a
/// failed pre-flight check, a refused clean): reported before anything runs,
/// exit code 2. The cause, where there is one, is kept as the error's source.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// A target or step the recipe does not have.
    #[error("recipe {} has no step `{name}`{}", recipe.display(), hint.as_deref().map(|h| format!(" ({h})")).unwrap_or_default())]
    UnknownStep {
        /// The recipe file.
        recipe: PathBuf,
        /// The name asked for.
        name: String,
        /// A "did you mean" hint.
        hint: Option<String>,
    },
    /// A source that cannot be located or read.
    #[error("source `{name}`")]
    Source {
        /// The source's name in the recipe.
        name: String,
        /// Why.
        #[source]
        cause: anyhow::Error,
    },
    /// A model a mergekit config names that cannot be used.
    #[error("model `{name}`")]
    Model {
        /// The name as the config writes it.
        name: String,
        /// Why.
        #[source]
        cause: anyhow::Error,
    },
    /// A file or folder given on the command line that cannot be used as it is.
    #[error("{}", path.display())]
    File {
        /// The file or folder.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        cause: anyhow::Error,
    },
    /// The Hub sources cannot be pinned or their small files fetched.
    #[error(transparent)]
    Hub(anyhow::Error),
    /// A step's pre-flight check failed.
    #[error("step `{step}`")]
    Preflight {
        /// The step.
        step: String,
        /// What its check found.
        #[source]
        cause: anyhow::Error,
    },
    /// A name that would not stay inside the directory it is joined onto.
    #[error("{0}")]
    Name(String),
    /// A setting with a value yibuild does not understand.
    #[error("{place}: {why}")]
    Setting {
        /// The flag or file and key it came from.
        place: String,
        /// What is wrong with it.
        why: String,
    },
    /// Something that would remove or overwrite what yibuild must not touch.
    #[error("refusing to {action} {}: {why}", path.display())]
    Refused {
        /// What was asked (`clean`, …).
        action: String,
        /// The path it concerns.
        path: PathBuf,
        /// Why it is refused.
        why: String,
    },
    /// A command that cannot run with the configuration given.
    #[error("{0}")]
    Unusable(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cause_is_kept_as_the_source() {
        let cause = anyhow::anyhow!("models/base does not exist");
        let err = anyhow::Error::from(InputError::Source {
            name: "base".to_owned(),
            cause,
        });
        assert_eq!(
            format!("{err:#}"),
            "source `base`: models/base does not exist"
        );
        let input = err.downcast_ref::<InputError>().unwrap();
        let source = std::error::Error::source(input).unwrap();
        assert_eq!(source.to_string(), "models/base does not exist");
    }

    #[test]
    fn an_unknown_step_shows_its_hint() {
        let err = InputError::UnknownStep {
            recipe: PathBuf::from("r.yaml"),
            name: "mreged".to_owned(),
            hint: Some("did you mean `merged`?".to_owned()),
        };
        assert_eq!(
            err.to_string(),
            "recipe r.yaml has no step `mreged` (did you mean `merged`?)"
        );
    }
}
