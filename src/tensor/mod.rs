//! Tensor storage: safetensors shards read through mmap, written by streaming,
//! and the element types they hold.

mod dtype;
mod reader;

pub use dtype::DType;
pub use reader::{shard_files, ModelTensors, TensorInfo};
