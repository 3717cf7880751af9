//! Hugging Face model-folder files read the one way every step agrees on.
//!
//! * [`config`]: `config.json` in its transformers 4 and transformers 5
//!   layouts, validated, with the rotary settings as a typed value.
//! * [`details`]: its architecture-specific facts worded for `inspect` and
//!   the model card.

pub mod config;
pub mod details;

pub use config::{AttentionKind, ConfigFile, DecoderConfig, LayerTypes, Layout, RopeScaling, Yarn};
