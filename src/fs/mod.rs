//! The file-system layer: what every higher layer needs to touch files safely.
//! I/O errors that name their path ([`error`]), copies that share nothing with a user's file ([`copy`]), JSON and
//! model-folder helpers ([`files`]), the gate every name passes before it
//! becomes part of a path ([`names`]), and byte sizes ([`size`]).

pub mod copy;
pub mod error;
pub mod files;
pub mod names;
pub mod size;
