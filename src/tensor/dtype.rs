//! Element types found in safetensors checkpoints and their conversion to `f32`.

use super::error::{Result, TensorError};
use half::{bf16, f16};

use crate::simd::with_widest_simd;

/// A floating-point element type a model tensor can be stored in.
///
/// Merge, quantize and evaluation math runs in `f32`; these are the storage types
/// on either side of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DType {
    /// IEEE half precision.
    F16,
    /// bfloat16, the usual storage type of modern checkpoints.
    BF16,
    /// IEEE single precision.
    F32,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F16 | DType::BF16 => 2,
            DType::F32 => 4,
        }
    }

    /// The safetensors header spelling (`"BF16"`).
    pub fn safetensors_name(self) -> &'static str {
        match self {
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::F32 => "F32",
        }
    }

    /// The `torch_dtype` spelling used in config.json (`"bfloat16"`).
    pub fn torch_name(self) -> &'static str {
        match self {
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
            DType::F32 => "float32",
        }
    }

    /// Parses the spellings users write in recipes and mergekit configs
    /// (`bfloat16`, `bf16`, `float16`, `fp16`, `half`, `float32`, `fp32`, `float`).
    pub fn parse(name: &str) -> Option<DType> {
        match name.to_ascii_lowercase().as_str() {
            "bfloat16" | "bf16" => Some(DType::BF16),
            "float16" | "fp16" | "f16" | "half" => Some(DType::F16),
            "float32" | "fp32" | "f32" | "float" => Some(DType::F32),
            _ => None,
        }
    }

    /// Maps a safetensors dtype; integer and 8-bit float tensors are refused
    /// because no step here knows how to merge or quantize them.
    pub fn from_safetensors(dtype: safetensors::Dtype) -> Result<DType> {
        Ok(match dtype {
            safetensors::Dtype::F16 => DType::F16,
            safetensors::Dtype::BF16 => DType::BF16,
            safetensors::Dtype::F32 => DType::F32,
            other => return Err(TensorError::UnsupportedDtype(format!("{other:?}"))),
        })
    }

    /// The safetensors dtype written for this type.
    pub fn to_safetensors(self) -> safetensors::Dtype {
        match self {
            DType::F16 => safetensors::Dtype::F16,
            DType::BF16 => safetensors::Dtype::BF16,
            DType::F32 => safetensors::Dtype::F32,
        }
    }

    /// Decodes little-endian `bytes` of this type into `out` (which must hold
    /// exactly `bytes.len() / self.size()` elements).
    pub fn decode_into(self, bytes: &[u8], out: &mut [f32]) {
        debug_assert_eq!(bytes.len(), out.len() * self.size());
        match self {
            // bf16 is the top half of an f32: a shift, which vectorizes when
            // the bytes are 2-aligned (safetensors data always is).
            DType::BF16 => match bytemuck::try_cast_slice::<u8, u16>(bytes) {
                Ok(halves) if cfg!(target_endian = "little") => with_widest_simd!({
                    for (o, h) in out.iter_mut().zip(halves) {
                        *o = f32::from_bits(u32::from(*h) << 16);
                    }
                }),
                _ => {
                    for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                        *o = bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
                    }
                }
            },
            DType::F16 => {
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
                }
            }
            DType::F32 => {
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                    *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
        }
    }

    /// Encodes `values` as little-endian bytes of this type, rounding to nearest even.
    pub fn encode_into(self, values: &[f32], out: &mut Vec<u8>) {
        out.reserve(values.len() * self.size());
        match self {
            DType::BF16 => {
                for v in values {
                    out.extend_from_slice(&bf16::from_f32(*v).to_bits().to_le_bytes());
                }
            }
            DType::F16 => {
                for v in values {
                    out.extend_from_slice(&f16::from_f32(*v).to_bits().to_le_bytes());
                }
            }
            DType::F32 => {
                for v in values {
                    out.extend_from_slice(&v.to_le_bytes());
                }
            }
        }
    }

    /// Encodes `values` into `out`, which must hold exactly
    /// `values.len() * self.size()` bytes (the form parallel writers need).
    pub fn encode_to_slice(self, values: &[f32], out: &mut [u8]) {
        debug_assert_eq!(out.len(), values.len() * self.size());
        match self {
            DType::BF16 => {
                for (o, v) in out.chunks_exact_mut(2).zip(values) {
                    o.copy_from_slice(&bf16::from_f32(*v).to_bits().to_le_bytes());
                }
            }
            DType::F16 => {
                for (o, v) in out.chunks_exact_mut(2).zip(values) {
                    o.copy_from_slice(&f16::from_f32(*v).to_bits().to_le_bytes());
                }
            }
            DType::F32 => {
                for (o, v) in out.chunks_exact_mut(4).zip(values) {
                    o.copy_from_slice(&v.to_le_bytes());
                }
            }
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.torch_name())
    }
}
