//! Tensor storage: safetensors shards read through mmap, written by streaming,
//! and the element types they hold.

mod dtype;
mod error;
mod reader;
mod writer;

pub use dtype::DType;
pub use error::{Result, TensorError};
pub use reader::{shard_files, ModelTensors, TensorInfo};
pub use writer::{PlannedTensor, ShardedWriter, DEFAULT_MAX_SHARD_SIZE};
