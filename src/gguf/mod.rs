//! HF → GGUF conversion and quantization, byte-compatible with llama.cpp.
//!
//! * [`types`]: ggml type ids and block geometry.
//! * [`quants`]: quantizers and dequantizers, byte-exact with ggml's reference code.
//! * [`file`]: the GGUF container (streaming writer, validating reader).
//! * [`arch`]: the supported architectures and their tensor names.
//! * [`convert`]: config → metadata, HF → GGUF tensor names, byte transforms.
//! * [`tokenizer`]: the tokenizer as GGUF vocabulary metadata.
//! * [`mixture`]: llama-quantize's presets and per-tensor type rules.
//! * [`imatrix`]: importance matrices (legacy `.dat` and GGUF).
//! * [`pipeline`]: streaming, parallel conversion of a model folder.
//! * [`inspect`]: the `yibuild inspect` listing.

pub mod arch;
pub mod convert;
pub mod file;
pub mod imatrix;
pub mod inspect;
pub mod mixture;
pub mod pipeline;
pub mod quants;
pub mod tokenizer;
pub mod types;

pub use file::{GgufFile, TensorEntry};
pub use inspect::inspect_gguf;
pub use quants::dequantize;
pub use types::GgmlType;
