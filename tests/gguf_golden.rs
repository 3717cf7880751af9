//! Golden vectors: yibuild's quantizers must reproduce, byte for byte, what
//! ggml's `ggml_quantize_chunk` wrote for the same inputs (see
//! tests/golden/gguf/gen_golden.sh), with and without an importance matrix.

use yibuild::gguf::quants::quantize_rows;
use yibuild::gguf::{dequantize, GgmlType};

const ROWS: usize = 8;
const COLS: usize = 512;

fn floats(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn golden(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/golden/gguf/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Compares block by block so a failure names the first differing block.
fn assert_same_blocks(ty: GgmlType, what: &str, ours: &[u8], theirs: &[u8]) {
    assert_eq!(ours.len(), theirs.len(), "{what}: length");
    let size = ty.type_size() * if ty.is_quantized() { 1 } else { 32 };
    let per_row = ours.len() / ROWS / size;
    let differing: Vec<(usize, usize)> = ours
        .chunks(size)
        .zip(theirs.chunks(size))
        .enumerate()
        .filter(|(_, (a, b))| a != b)
        .map(|(i, _)| (i / per_row, i % per_row))
        .collect();
    assert!(
        differing.is_empty(),
        "{what}: {} of {} blocks differ from ggml; first (row, block): {:?}",
        differing.len(),
        ours.len() / size,
        &differing[..differing.len().min(8)]
    );
}

#[test]
fn every_type_matches_ggml_reference_bytes() {
    let input = floats(&golden("input.f32"));
    assert_eq!(input.len(), ROWS * COLS);
    let types = GgmlType::ALL.into_iter().filter(|t| *t != GgmlType::F32);
    for ty in types {
        let mut ours = Vec::new();
        quantize_rows(ty, &input, COLS, None, &mut ours).unwrap();
        assert_same_blocks(ty, ty.name(), &ours, &golden(&format!("{ty}.bin")));
    }
}

#[test]
fn every_type_matches_ggml_with_an_importance_matrix() {
    let input = floats(&golden("input.f32"));
    let imatrix = floats(&golden("imatrix.f32"));
    for ty in GgmlType::ALL.into_iter().filter(|t| t.is_quantized()) {
        let mut ours = Vec::new();
        quantize_rows(ty, &input, COLS, Some(&imatrix), &mut ours).unwrap();
        let what = format!("{ty} with imatrix");
        assert_same_blocks(ty, &what, &ours, &golden(&format!("{ty}-imatrix.bin")));
    }
}

#[test]
fn dequantized_golden_bytes_stay_close_to_the_input() {
    // Relative RMSE bounds per type on the "weights" rows (0, 7); generous
    // multiples of what ggml's own reference reaches on Gaussian data.
    let input = floats(&golden("input.f32"));
    let bounds = [
        (GgmlType::F16, 1e-3),
        (GgmlType::BF16, 5e-3),
        (GgmlType::Q8_0, 0.01),
        (GgmlType::Q6_K, 0.03),
        (GgmlType::Q5_K, 0.05),
        (GgmlType::Q5_1, 0.06),
        (GgmlType::Q5_0, 0.07),
        (GgmlType::Q4_K, 0.1),
        (GgmlType::IQ4_XS, 0.12),
        (GgmlType::IQ4_NL, 0.12),
        (GgmlType::Q4_1, 0.12),
        (GgmlType::Q4_0, 0.15),
        (GgmlType::Q3_K, 0.22),
        (GgmlType::Q2_K, 0.45),
    ];
    for (ty, bound) in bounds {
        let bytes = golden(&format!("{ty}.bin"));
        let values = dequantize(ty, &bytes, ROWS * COLS);
        for row in [0, 7] {
            let x = &input[row * COLS..(row + 1) * COLS];
            let y = &values[row * COLS..(row + 1) * COLS];
            let err: f64 = x.iter().zip(y).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
            let norm: f64 = x.iter().map(|a| (*a as f64).powi(2)).sum();
            let rel = (err / norm).sqrt();
            assert!(
                rel < bound,
                "{ty} row {row}: relative RMSE {rel:.4} ≥ {bound}"
            );
        }
    }
}

#[test]
fn iquants_dequantize_to_ggml_values_bit_for_bit() {
    // <TYPE>-imatrix.f32 is ggml's own dequantization of <TYPE>-imatrix.bin;
    // since our quantizer reproduces those bytes, this also checks
    // dequantize(quantize(x)) against ggml.
    let iquants: Vec<GgmlType> = GgmlType::ALL
        .into_iter()
        .filter(|t| t.name().starts_with("IQ"))
        .collect();
    assert!(!iquants.is_empty());
    for ty in iquants {
        let ours = dequantize(ty, &golden(&format!("{ty}-imatrix.bin")), ROWS * COLS);
        let theirs = floats(&golden(&format!("{ty}-imatrix.f32")));
        let differing = ours
            .iter()
            .zip(&theirs)
            .position(|(a, b)| a.to_bits() != b.to_bits());
        assert_eq!(differing, None, "{ty}: first differing value");
    }
}

#[test]
fn bits_per_weight_match_ggml_type_sizes() {
    // ggml's published sizes: IQ4_NL 4.5 bpw, IQ4_XS 4.25, Q4_K 4.5, Q6_K 6.5625.
    let bpw = |t: GgmlType| t.type_size() as f64 * 8.0 / t.block_size() as f64;
    assert_eq!(bpw(GgmlType::IQ4_NL), 4.5);
    assert_eq!(bpw(GgmlType::IQ4_XS), 4.25);
    assert_eq!(bpw(GgmlType::Q4_K), 4.5);
    assert_eq!(bpw(GgmlType::Q6_K), 6.5625);
}
