//! yibuild: a declarative build system for language models.
//!
//! A recipe names input models and the steps that turn them into release
//! artifacts (merge, config patch, tokenizer swap, quantize, evaluate, package).
//! Each step's output is cached under a content hash of everything that
//! determines it, so a rebuild after a tweak reruns only what the tweak changes.

#![warn(missing_docs)]

pub mod build;
pub mod cache;
pub mod card;
pub mod cli;
pub mod eval;
pub mod fixtures;
pub mod fs;
pub mod gguf;
pub mod hf;
pub mod hub;
pub mod merge;
pub mod recipe;
mod simd;
pub mod steps;
pub mod sweep;
pub mod syntax;
pub mod tensor;
pub mod tokenizer;
