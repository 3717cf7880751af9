//! A step's key from its definition and the part of each input it reads.
//! What enters the key, and what is left out and why, is the table in
//! [`crate::cache::key`].

use std::collections::BTreeMap;

use crate::cache::{KeyInputs, CACHE_FORMAT};
use crate::recipe::StepDef;
use crate::steps::{Artifact, Reads};

/// The key components of `step` given its inputs' artifacts.
pub fn key_inputs(step: &StepDef, artifacts: &BTreeMap<String, Artifact>) -> Option<KeyInputs> {
    let mut inputs = BTreeMap::new();
    for (name, part) in reads_by_input(step) {
        let digest = artifacts.get(&name)?.digest_of(part);
        inputs.insert(name, digest);
    }
    Some(KeyInputs {
        format: CACHE_FORMAT,
        kind: step.step.kind().to_owned(),
        version: step.step.version(),
        params: step.step.params(),
        inputs,
    })
}

/// The files of each input that `step` reads, with their content ids: kept in
/// the step's build record so that a later rebuild can name the files that
/// changed.
pub fn files_read(
    step: &StepDef,
    artifacts: &BTreeMap<String, Artifact>,
) -> BTreeMap<String, BTreeMap<String, String>> {
    reads_by_input(step)
        .into_iter()
        .filter_map(|(name, part)| Some((name.clone(), artifacts.get(&name)?.files_read(part))))
        .collect()
}

/// What the step reads of each input it names (an input named twice, e.g. as
/// model and as tokenizer, is read in full).
fn reads_by_input(step: &StepDef) -> BTreeMap<String, Reads> {
    let mut reads: BTreeMap<String, Reads> = BTreeMap::new();
    for i in step.step.inputs() {
        let both = reads.get(&i.name).map_or(i.reads, |r| r.union(i.reads));
        reads.insert(i.name, both);
    }
    reads
}
