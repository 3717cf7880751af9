//! ggml tensor types (the `ggml_type` ids GGUF stores) and the block geometry
//! every reader and writer needs: elements per block, bytes per block.
//!
//! Ids follow `ggml/include/ggml.h`; only the types yibuild writes or reads are
//! listed, so an unknown id in a file is an error rather than a guess.

use std::fmt;

/// Elements per k-quant super-block (`QK_K` in ggml).
pub const QK_K: usize = 256;

/// A tensor element type as stored in a GGUF file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[allow(non_camel_case_types)]
pub enum GgmlType {
    /// IEEE single precision.
    F32,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    BF16,
    /// 4-bit, 32-element blocks, one f16 scale.
    Q4_0,
    /// 4-bit, 32-element blocks, f16 scale and minimum.
    Q4_1,
    /// 5-bit, 32-element blocks, one f16 scale.
    Q5_0,
    /// 5-bit, 32-element blocks, f16 scale and minimum.
    Q5_1,
    /// 8-bit, 32-element blocks, one f16 scale.
    Q8_0,
    /// 2-bit k-quant (256-element super-blocks of 16-element groups).
    Q2_K,
    /// 3-bit k-quant.
    Q3_K,
    /// 4-bit k-quant (super-blocks of 32-element groups with 6-bit scales and mins).
    Q4_K,
    /// 5-bit k-quant.
    Q5_K,
    /// 6-bit k-quant.
    Q6_K,
    /// 4.5-bit i-quant: 32-element blocks of non-linear 4-bit levels, one f16 scale.
    IQ4_NL,
    /// 4.25-bit i-quant: IQ4_NL's levels in 256-element super-blocks with 6-bit group scales.
    IQ4_XS,
}

impl GgmlType {
    /// Every supported type, in id order.
    pub const ALL: [GgmlType; 15] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::IQ4_NL,
        GgmlType::IQ4_XS,
        GgmlType::BF16,
    ];

    /// The `ggml_type` id written in GGUF tensor infos.
    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q5_0 => 6,
            GgmlType::Q5_1 => 7,
            GgmlType::Q8_0 => 8,
            GgmlType::Q2_K => 10,
            GgmlType::Q3_K => 11,
            GgmlType::Q4_K => 12,
            GgmlType::Q5_K => 13,
            GgmlType::Q6_K => 14,
            GgmlType::IQ4_NL => 20,
            GgmlType::IQ4_XS => 23,
            GgmlType::BF16 => 30,
        }
    }

    /// The type with `ggml_type` id `id`, if yibuild supports it.
    pub fn from_id(id: u32) -> Option<GgmlType> {
        GgmlType::ALL.into_iter().find(|t| t.id() == id)
    }

    /// The name llama.cpp prints (`q4_K`, `f16`), upper-cased as in file names (`Q4_K`).
    pub fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "F32",
            GgmlType::F16 => "F16",
            GgmlType::BF16 => "BF16",
            GgmlType::Q4_0 => "Q4_0",
            GgmlType::Q4_1 => "Q4_1",
            GgmlType::Q5_0 => "Q5_0",
            GgmlType::Q5_1 => "Q5_1",
            GgmlType::Q8_0 => "Q8_0",
            GgmlType::Q2_K => "Q2_K",
            GgmlType::Q3_K => "Q3_K",
            GgmlType::Q4_K => "Q4_K",
            GgmlType::Q5_K => "Q5_K",
            GgmlType::Q6_K => "Q6_K",
            GgmlType::IQ4_NL => "IQ4_NL",
            GgmlType::IQ4_XS => "IQ4_XS",
        }
    }

    /// Elements per block: 1 for float types, 32 for legacy quants and IQ4_NL,
    /// 256 for k-quants and the other i-quants.
    pub fn block_size(self) -> usize {
        match self {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => 1,
            GgmlType::Q4_0
            | GgmlType::Q4_1
            | GgmlType::Q5_0
            | GgmlType::Q5_1
            | GgmlType::Q8_0
            | GgmlType::IQ4_NL => 32,
            GgmlType::Q2_K
            | GgmlType::Q3_K
            | GgmlType::Q4_K
            | GgmlType::Q5_K
            | GgmlType::Q6_K
            | GgmlType::IQ4_XS => QK_K,
        }
    }

    /// Bytes per block (`ggml_type_size`).
    pub fn type_size(self) -> usize {
        match self {
            GgmlType::F32 => 4,
            GgmlType::F16 | GgmlType::BF16 => 2,
            GgmlType::Q4_0 => 18,
            GgmlType::Q4_1 => 20,
            GgmlType::Q5_0 => 22,
            GgmlType::Q5_1 => 24,
            GgmlType::Q8_0 => 34,
            GgmlType::Q2_K => 84,
            GgmlType::Q3_K => 110,
            GgmlType::Q4_K => 144,
            GgmlType::Q5_K => 176,
            GgmlType::Q6_K => 210,
            GgmlType::IQ4_NL => 18,
            GgmlType::IQ4_XS => 136,
        }
    }

    /// True for the block-quantized types (everything but F32/F16/BF16).
    pub fn is_quantized(self) -> bool {
        self.block_size() > 1
    }

    /// Bytes of `n` elements, or `None` when `n` is not a whole number of blocks.
    pub fn bytes_for(self, n: usize) -> Option<usize> {
        n.is_multiple_of(self.block_size())
            .then(|| n / self.block_size() * self.type_size())
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_sizes_match_ggml() {
        for t in GgmlType::ALL {
            assert_eq!(GgmlType::from_id(t.id()), Some(t));
        }
        assert_eq!(GgmlType::from_id(9), None, "Q8_1 is never a weight type");
        // bits per weight as listed in ggml: Q4_K 4.5, Q6_K 6.5625
        assert_eq!(GgmlType::Q4_K.type_size() * 8 * 10000 / QK_K, 45000);
        assert_eq!(GgmlType::Q6_K.type_size() * 8 * 10000 / QK_K, 65625);
        assert_eq!(GgmlType::Q4_K.bytes_for(4096), Some(16 * 144));
        assert_eq!(GgmlType::Q4_K.bytes_for(4000), None);
    }
}
