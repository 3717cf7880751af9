//! Tokenizers: reading and checking vocabularies against model weights,
//! resizing embeddings, union vocabularies for merges, chat templates, and
//! the `inspect` report.
//!
//! This module owns everything a tokenizer swap needs; the `tokenizer` step
//! (`steps/tokenizer.rs`) only wires it to a recipe.

pub mod convert;
pub mod inspect;
pub mod resize;
pub mod spm;
pub mod templates;
pub mod union;
pub mod vocab;

use std::path::Path;

use anyhow::{anyhow, bail, Result};

/// The sidecar file listing every `extra_eos` string, for the model card
/// (and any runtime that matches stop text): `{"stop_strings": [...]}`.
/// Not `generation_config.json`'s `stop_strings`, with which transformers'
/// `generate()` and `pipeline` refuse to run without a tokenizer argument.
pub const STOP_STRINGS_FILE: &str = "stop_strings.json";

/// The text [`prove_loads`] round-trips: letters, punctuation, digits and
/// spaces, which byte-level and byte-fallback tokenizers both cover.
pub const SAMPLE_TEXT: &str = "Hello, world! The merge of 7 models: 2+2 = 4.";

/// Loads `dir/tokenizer.json` with the `tokenizers` crate (what transformers'
/// fast tokenizers run) and checks that [`SAMPLE_TEXT`] encodes and decodes
/// back to itself. A tokenizer that fails this would fail its users.
pub fn prove_loads(dir: &Path) -> Result<()> {
    let path = dir.join("tokenizer.json");
    let tok = tokenizers::Tokenizer::from_file(&path)
        .map_err(|e| anyhow!("{} does not load: {e}", path.display()))?;
    let ids = tok
        .encode(SAMPLE_TEXT, false)
        .map_err(|e| anyhow!("{}: cannot encode a sample: {e}", path.display()))?;
    let back = tok
        .decode(ids.get_ids(), true)
        .map_err(|e| anyhow!("{}: cannot decode a sample: {e}", path.display()))?;
    if back != SAMPLE_TEXT {
        bail!(
            "{}: the sample text does not round-trip:\n  encoded {:?}\n  decoded {back:?}",
            path.display(),
            SAMPLE_TEXT
        );
    }
    Ok(())
}
