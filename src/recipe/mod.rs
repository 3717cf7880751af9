//! Recipes: the YAML files that describe a build, parsed with positions so every
//! error names its file, line and column.

pub mod diag;
pub mod fields;
pub mod yaml;
