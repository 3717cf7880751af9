//! yibuild: a declarative build system for language models.
//!
//! A recipe names input models and the steps that turn them into release
//! artifacts (merge, config patch, tokenizer swap, quantize, evaluate, package).
//! Each step's output is cached under a content hash of everything that
//! determines it, so a rebuild after a tweak reruns only what the tweak changes.

#![warn(missing_docs)]

pub mod cache;
pub mod card;
pub mod commands;
pub mod eval;
pub mod exec;
pub mod fixtures;
pub mod freshness;
pub mod gguf;
pub mod graph;
pub mod hf;
pub mod hub;
pub mod merge;
pub mod mergekit_yaml;
pub mod names;
pub mod project;
pub mod recipe;
pub mod report;
mod simd;
pub mod slurm;
pub mod steps;
pub mod sweep;
pub mod tensor;
pub mod term;
pub mod tokenizer;
