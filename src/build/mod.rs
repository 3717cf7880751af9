//! The build layer: from a recipe to built, cached and materialized outputs.
//!
//! [`plan::Plan`] (recipe → graph → targets → order) is computed once per
//! command; [`keys`] derives each step's key from the part of each input it
//! reads; [`freshness`] says, without building, which steps are fresh and why
//! the others are stale ([`freshness::StaleReason`]); [`sources`] and
//! [`hub_sources`] make a plan's sources available; [`exec`] schedules the
//! plan (`--jobs`, `--mem-budget`, the remote cache), running steps here
//! ([`local`]) or as Slurm jobs ([`slurm`]); [`outputs`] materializes them;
//! [`events`] is how the layer reports, to a [`events::Reporter`] the CLI
//! supplies. Nothing here prints.
//!
//! This layer may import every layer below it (steps, the work modules,
//! recipe, cache, tensor, hf, syntax, fs) and nothing above (the CLI).

pub mod error;
pub mod events;
pub mod exec;
pub mod freshness;
pub mod hub_sources;
pub mod keys;
pub mod local;
pub mod options;
pub mod outputs;
pub mod plan;
pub mod project;
mod remote;
pub mod slurm;
pub mod sources;
