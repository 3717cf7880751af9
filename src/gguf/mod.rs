//! HF → GGUF conversion and quantization, byte-compatible with llama.cpp.
//!
//! * [`types`]: ggml type ids and block geometry.
//! * [`quants`]: quantizers/dequantizers, byte-exact with ggml's reference code.

pub mod quants;
pub mod types;

pub use quants::dequantize;
pub use types::GgmlType;
