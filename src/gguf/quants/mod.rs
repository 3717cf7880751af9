//! Quantizers and dequantizers for every [`GgmlType`] yibuild writes, byte-exact
//! with ggml's reference code (`ggml_quantize_chunk` as llama-quantize calls it).
//!
//! * [`search`]: the shared scale searches (`make_qx_quants`, `make_qkx2/3_quants`, ...).
//! * [`legacy`]: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 (32-element blocks).
//! * [`kquants`]: Q2_K ... Q6_K (256-element super-blocks).
//! * [`iq4`]: IQ4_NL (32-element blocks) and IQ4_XS (256-element super-blocks).
//!
//! The unit of work is a row: the imatrix-weighted legacy quantizers need the
//! row's mean square, and an importance matrix has one weight per column.
//! Rows are independent, so callers may quantize them in any order on any
//! number of threads and get the same bytes.

pub mod iq4;
pub mod kquants;
pub mod legacy;
pub mod search;

pub use super::types::GgmlType;

/// Why a row cannot be quantized to a type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantError {
    /// The row length is not a multiple of the type's block size.
    #[error("row length {row_len} is not a multiple of {block} (the block size of {ty})")]
    RowNotDivisible {
        /// The requested type.
        ty: GgmlType,
        /// Elements per row.
        row_len: usize,
        /// The type's block size.
        block: usize,
    },
    /// The importance vector does not have one weight per column.
    #[error("importance vector has {got} values but rows have {row_len} columns")]
    ImatrixLength {
        /// Values in the importance vector.
        got: usize,
        /// Elements per row.
        row_len: usize,
    },
}

/// Bytes of one row of `row_len` elements, checking that blocks divide it.
pub fn row_bytes(ty: GgmlType, row_len: usize) -> Result<usize, QuantError> {
    ty.bytes_for(row_len).ok_or(QuantError::RowNotDivisible {
        ty,
        row_len,
        block: ty.block_size(),
    })
}

/// Quantizes `rows` (a whole number of rows of `row_len` values) to `ty`,
/// appending the bytes to `out`. `imatrix`, when given, holds one importance
/// weight per column; Q8_0 and the float types ignore it, as in ggml.
pub fn quantize_rows(
    ty: GgmlType,
    rows: &[f32],
    row_len: usize,
    imatrix: Option<&[f32]>,
    out: &mut Vec<u8>,
) -> Result<(), QuantError> {
    let rb = row_bytes(ty, row_len)?;
    if let Some(w) = imatrix {
        if w.len() != row_len {
            return Err(QuantError::ImatrixLength {
                got: w.len(),
                row_len,
            });
        }
    }
    assert_eq!(
        rows.len() % row_len.max(1),
        0,
        "partial row passed to quantize_rows"
    );
    let start = out.len();
    out.resize(start + rows.len() / row_len.max(1) * rb, 0);
    for (x, dst) in rows
        .chunks_exact(row_len.max(1))
        .zip(out[start..].chunks_exact_mut(rb.max(1)))
    {
        quantize_row(ty, x, imatrix, dst);
    }
    Ok(())
}

/// Quantizes one row into `dst` (exactly `row_bytes(ty, x.len())` bytes).
fn quantize_row(ty: GgmlType, x: &[f32], imatrix: Option<&[f32]>, dst: &mut [u8]) {
    use GgmlType as T;
    match ty {
        T::F32 => {
            for (o, v) in dst.chunks_exact_mut(4).zip(x) {
                o.copy_from_slice(&v.to_le_bytes());
            }
        }
        T::F16 => {
            for (o, v) in dst.chunks_exact_mut(2).zip(x) {
                o.copy_from_slice(&search::f16_bits(*v).to_le_bytes());
            }
        }
        T::BF16 => {
            for (o, v) in dst.chunks_exact_mut(2).zip(x) {
                o.copy_from_slice(&half::bf16::from_f32(*v).to_bits().to_le_bytes());
            }
        }
        T::Q8_0 => {
            for (xb, ob) in x.chunks_exact(32).zip(dst.chunks_exact_mut(34)) {
                legacy::quantize_q8_0(xb, ob);
            }
        }
        T::Q4_0 | T::Q4_1 | T::Q5_0 | T::Q5_1 => {
            let f = match ty {
                T::Q4_0 => legacy::quantize_q4_0,
                T::Q4_1 => legacy::quantize_q4_1,
                T::Q5_0 => legacy::quantize_q5_0,
                _ => legacy::quantize_q5_1,
            };
            let sigma2 = imatrix.map(|_| legacy::row_sigma2(x));
            let size = ty.type_size();
            for (b, (xb, ob)) in x
                .chunks_exact(32)
                .zip(dst.chunks_exact_mut(size))
                .enumerate()
            {
                let w = imatrix
                    .zip(sigma2)
                    .map(|(w, s)| (&w[32 * b..32 * b + 32], s));
                f(xb, w, ob);
            }
        }
        T::Q2_K | T::Q3_K | T::Q4_K | T::Q5_K | T::Q6_K | T::IQ4_NL | T::IQ4_XS => {
            let f: BlockQuantizer = match ty {
                T::Q2_K => kquants::quantize_q2_k,
                T::Q3_K => kquants::quantize_q3_k,
                T::Q4_K => kquants::quantize_q4_k,
                T::Q5_K => kquants::quantize_q5_k,
                T::Q6_K => kquants::quantize_q6_k,
                T::IQ4_NL => iq4::quantize_iq4_nl,
                _ => iq4::quantize_iq4_xs,
            };
            let (block, size) = (ty.block_size(), ty.type_size());
            for (b, (xb, ob)) in x
                .chunks_exact(block)
                .zip(dst.chunks_exact_mut(size))
                .enumerate()
            {
                f(xb, imatrix.map(|w| &w[block * b..block * (b + 1)]), ob);
            }
        }
    }
}

/// Quantizes one block (its values and, optionally, their importance weights)
/// into its bytes.
type BlockQuantizer = fn(&[f32], Option<&[f32]>, &mut [u8]);

/// Decodes `n` elements of type `ty` from `bytes` (which must hold exactly
/// their blocks). Used by the tests, `yibuild inspect` and the evaluator's
/// GGUF loader.
///
/// # Panics
/// When `n` is not a whole number of blocks or `bytes` has the wrong length;
/// the GGUF reader checks both before handing out tensor data.
pub fn dequantize(ty: GgmlType, bytes: &[u8], n: usize) -> Vec<f32> {
    let expected = ty.bytes_for(n).expect("n must be a whole number of blocks");
    assert_eq!(
        bytes.len(),
        expected,
        "{ty}: wrong byte count for {n} elements"
    );
    let mut y = vec![0.0f32; n];
    use GgmlType as T;
    match ty {
        T::F32 => {
            for (o, c) in y.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        T::F16 => {
            for (o, c) in y.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = search::f16_value(u16::from_le_bytes([c[0], c[1]]));
            }
        }
        T::BF16 => {
            for (o, c) in y.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = half::bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
            }
        }
        T::Q4_0 | T::Q4_1 | T::Q5_0 | T::Q5_1 | T::Q8_0 => {
            for (b, o) in bytes
                .chunks_exact(ty.type_size())
                .zip(y.chunks_exact_mut(32))
            {
                legacy::dequantize_block(ty, b, o);
            }
        }
        T::Q2_K | T::Q3_K | T::Q4_K | T::Q5_K | T::Q6_K => {
            for (b, o) in bytes
                .chunks_exact(ty.type_size())
                .zip(y.chunks_exact_mut(256))
            {
                kquants::dequantize_block(ty, b, o);
            }
        }
        T::IQ4_NL | T::IQ4_XS => {
            let f = match ty {
                T::IQ4_NL => iq4::dequantize_iq4_nl,
                _ => iq4::dequantize_iq4_xs,
            };
            for (b, o) in bytes
                .chunks_exact(ty.type_size())
                .zip(y.chunks_exact_mut(ty.block_size()))
            {
                f(b, o);
            }
        }
    }
    y
}
