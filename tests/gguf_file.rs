//! The GGUF container: writer/reader round trip, and one test per reader
//! error on hostile or damaged files (each must name what is wrong).

use yibuild::gguf::file::{GgufError, GgufFile, GgufWriter, TensorDesc, Value, ValueType};
use yibuild::gguf::quants::quantize_rows;
use yibuild::gguf::GgmlType;

fn sample(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("m.gguf");
    let meta = vec![
        (
            "general.architecture".to_owned(),
            Value::String("llama".into()),
        ),
        ("x.count".to_owned(), Value::U32(7)),
        (
            "x.list".to_owned(),
            Value::Array(ValueType::I32, vec![Value::I32(-1), Value::I32(2)]),
        ),
        ("x.flag".to_owned(), Value::Bool(true)),
    ];
    let tensors = vec![
        TensorDesc {
            name: "a".into(),
            ty: GgmlType::F32,
            ne: vec![3],
        },
        TensorDesc {
            name: "b".into(),
            ty: GgmlType::Q8_0,
            ne: vec![64, 2],
        },
    ];
    let mut w = GgufWriter::create(&path, &meta, &tensors).unwrap();
    let mut a = Vec::new();
    quantize_rows(GgmlType::F32, &[1.0, 2.0, 3.0], 3, None, &mut a).unwrap();
    w.write_data(&a).unwrap();
    let x: Vec<f32> = (0..128).map(|i| i as f32 / 10.0).collect();
    let mut b = Vec::new();
    quantize_rows(GgmlType::Q8_0, &x, 64, None, &mut b).unwrap();
    w.write_data(&b[..50]).unwrap();
    w.write_data(&b[50..]).unwrap();
    w.finish().unwrap();
    path
}

#[test]
fn written_file_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = sample(dir.path());
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.version, 3);
    assert_eq!(f.get("x.count"), Some(&Value::U32(7)));
    assert_eq!(f.get("x.flag"), Some(&Value::Bool(true)));
    assert_eq!(
        f.get("x.list"),
        Some(&Value::Array(
            ValueType::I32,
            vec![Value::I32(-1), Value::I32(2)]
        ))
    );
    let a = f.tensor("a").unwrap();
    assert_eq!(f.dequantize(a), vec![1.0, 2.0, 3.0]);
    let b = f.tensor("b").unwrap();
    assert_eq!(b.offset - f.data_offset, 32, "12 bytes of `a` padded to 32");
    assert_eq!(b.n_bytes, 2 * 2 * 34);
    let y = f.dequantize(b);
    assert!((y[127] - 12.7).abs() < 0.05);
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        f.data_offset + 32 + 160
    );
    assert!(!dir.path().join("m.gguf.partial").exists());
}

#[test]
fn abandoned_writer_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.gguf");
    let t = vec![TensorDesc {
        name: "a".into(),
        ty: GgmlType::F32,
        ne: vec![4],
    }];
    let mut w = GgufWriter::create(&path, &[], &t).unwrap();
    w.write_data(&[0u8; 8]).unwrap();
    let err = w.write_data(&[0u8; 16]).unwrap_err();
    assert!(
        err.to_string()
            .contains("tensor `a` is 16 bytes but 24 were written"),
        "{err}"
    );
    drop(w);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    let w = GgufWriter::create(&path, &[], &t).unwrap();
    let err = w.finish().unwrap_err();
    assert!(
        err.to_string().contains("before tensor `a` was complete"),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn writer_refuses_shapes_the_type_cannot_hold() {
    let dir = tempfile::tempdir().unwrap();
    let t = vec![TensorDesc {
        name: "w".into(),
        ty: GgmlType::Q4_K,
        ne: vec![100, 4],
    }];
    let err = GgufWriter::create(&dir.path().join("x.gguf"), &[], &t).unwrap_err();
    assert!(matches!(err, GgufError::BadShape { .. }));
    assert_eq!(
        err.to_string(),
        "tensor `w`: shape [100, 4] cannot hold type Q4_K"
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

fn reopen_with(bytes: &[u8]) -> GgufError {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.gguf");
    std::fs::write(&path, bytes).unwrap();
    GgufFile::open(&path).unwrap_err()
}

#[test]
fn bad_magic() {
    let err = reopen_with(b"GGML\x03\0\0\0");
    assert!(matches!(err, GgufError::BadMagic(_)), "{err}");
}

#[test]
fn unsupported_version() {
    let err = reopen_with(b"GGUF\x01\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0");
    assert_eq!(
        err.to_string(),
        "unsupported GGUF version 1 (yibuild reads 2 and 3)"
    );
}

#[test]
fn truncated_tensor_data() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(sample(dir.path())).unwrap();
    let err = reopen_with(&bytes[..bytes.len() - 30]);
    assert!(
        err.to_string()
            .starts_with("truncated: data of tensor `b` needs 136 bytes"),
        "{err}"
    );
}

#[test]
fn truncated_header() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(sample(dir.path())).unwrap();
    let err = reopen_with(&bytes[..60]);
    assert!(matches!(err, GgufError::Truncated { .. }), "{err}");
}

#[test]
fn huge_counts_are_refused_before_allocating() {
    let mut b = b"GGUF\x03\0\0\0".to_vec();
    b.extend_from_slice(&u64::MAX.to_le_bytes());
    b.extend_from_slice(&1u64.to_le_bytes());
    let err = reopen_with(&b);
    assert!(err.to_string().contains("tensor infos"), "{err}");
}

#[test]
fn array_longer_than_the_file_is_refused_before_allocating() {
    // One metadata entry: an array of 2^28 u32 in a 50-byte file.
    let mut b = b"GGUF\x03\0\0\0".to_vec();
    b.extend_from_slice(&0u64.to_le_bytes());
    b.extend_from_slice(&1u64.to_le_bytes());
    b.extend_from_slice(&1u64.to_le_bytes());
    b.push(b'a');
    b.extend_from_slice(&9u32.to_le_bytes()); // array
    b.extend_from_slice(&4u32.to_le_bytes()); // of u32
    b.extend_from_slice(&(1u64 << 28).to_le_bytes());
    b.extend_from_slice(&[0; 8]);
    let err = reopen_with(&b);
    assert_eq!(
        err.to_string(),
        "truncated: 268435456 array items of `a` needs 1073741824 bytes at offset 49, only 8 remain"
    );
}

#[test]
fn out_of_order_offset() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = std::fs::read(sample(dir.path())).unwrap();
    // The offset of tensor `b` is the last u64 of the header before padding.
    let f = GgufFile::open(&dir.path().join("m.gguf")).unwrap();
    let needle = 32u64.to_le_bytes();
    let end = f.data_offset as usize;
    let at = bytes[..end].windows(8).rposition(|w| w == needle).unwrap();
    bytes[at..at + 8].copy_from_slice(&64u64.to_le_bytes());
    let err = reopen_with(&bytes);
    assert_eq!(err.to_string(), "tensor `b`: data offset 64 (expected 32)");
}

#[test]
fn unknown_tensor_type() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = std::fs::read(sample(dir.path())).unwrap();
    let f = GgufFile::open(&dir.path().join("m.gguf")).unwrap();
    // Q8_0's id (8) right before `b`'s offset (32).
    let mut needle = 8u32.to_le_bytes().to_vec();
    needle.extend_from_slice(&32u64.to_le_bytes());
    let end = f.data_offset as usize;
    let at = bytes[..end]
        .windows(12)
        .rposition(|w| w == needle.as_slice())
        .unwrap();
    bytes[at..at + 4].copy_from_slice(&9u32.to_le_bytes());
    let err = reopen_with(&bytes);
    assert_eq!(err.to_string(), "tensor `b` has unsupported ggml type id 9");
}
