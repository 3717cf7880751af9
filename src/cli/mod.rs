//! The command layer: one function per subcommand, each taking parsed
//! arguments, calling the build layer and returning what `main.rs` prints.
//! Nothing below this layer prints.

pub mod commands;
pub mod merge;
pub mod reporters;
pub mod term;
