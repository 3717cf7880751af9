//! Where step outputs appear: `build/<recipe>/<step>/`, materialized from the
//! cache, and the build record that says what each was built from.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::cache::{BuildRecord, Cache, CacheError, KeyInputs, Manifest};
use crate::fs::error::{IoContext, IoError};
use crate::recipe::{Recipe, StepDef};

/// The file that marks `build/<recipe>/` as made by yibuild: `clean`
/// removes only folders that hold it.
pub const BUILD_MARKER: &str = ".yibuild-output";

/// Creates the recipe's build folder with its [`BUILD_MARKER`], unless it
/// already has one (a no-op rebuild writes nothing).
pub(crate) fn mark_build_dir(dir: &Path) -> Result<(), IoError> {
    let marker = dir.join(BUILD_MARKER);
    if !marker.is_file() {
        std::fs::create_dir_all(dir).at("create", dir)?;
        std::fs::write(
            &marker,
            "Made by yibuild: `yibuild clean` removes this folder; the cache keeps its contents.\n",
        )
        .at("write", &marker)?;
    }
    Ok(())
}

/// Where a step's output is materialized.
pub fn output_dir(opts_build_dir: &Path, recipe: &Recipe, step: &str) -> PathBuf {
    opts_build_dir.join(&recipe.name).join(step)
}

/// Materializes a finished step and records what it was built from.
#[allow(clippy::too_many_arguments)]
pub(crate) fn publish(
    cache: &Cache,
    recipe: &Recipe,
    step: &StepDef,
    dest: &Path,
    key: &str,
    inputs: KeyInputs,
    files: BTreeMap<String, BTreeMap<String, String>>,
    manifest: &Manifest,
) -> Result<(), CacheError> {
    let materialized = cache.materialize(manifest, dest)?;
    cache.write_record(
        &recipe.name,
        &step.name,
        &BuildRecord {
            key: key.to_owned(),
            inputs,
            files,
            output: manifest.digest(),
            materialized: Some(materialized),
        },
    )?;
    Ok(())
}

/// Removes staging folders a killed build left in `build/<recipe>/`.
pub(crate) fn remove_staging_debris(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') && (name.contains(".tmp-") || name.contains(".old-")) {
            std::fs::remove_dir_all(e.path())
                .or_else(|_| std::fs::remove_file(e.path()))
                .ok();
        }
    }
}
