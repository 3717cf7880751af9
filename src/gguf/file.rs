//! The GGUF container: typed metadata values, a streaming writer and a
//! validating reader (<https://github.com/ggml-org/ggml/blob/master/docs/gguf.md>).
//!
//! Layout (little-endian): magic `GGUF`, version 3, tensor count, KV count;
//! the KV pairs; one info per tensor (name, dims in ggml order — row length
//! first —, type id, offset into the data section); zero padding to the
//! alignment; the tensor data, each tensor padded to the alignment. llama.cpp
//! requires tensor offsets to follow declaration order with no gaps.
//!
//! The writer computes every tensor's size up front, writes the header, then
//! accepts tensor bytes in declaration order, so a model is never held in
//! memory. It writes to `<name>.partial` and renames on [`GgufWriter::finish`];
//! a writer dropped before that deletes its partial file.
//!
//! The reader is one gate: every count, length and offset is checked against
//! named limits and the bytes actually present before anything is allocated.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::types::GgmlType;

/// `GGUF` as a little-endian u32.
pub const MAGIC: u32 = 0x4655_4747;
/// The version written.
pub const VERSION: u32 = 3;
/// The default (and yibuild's) data alignment.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Longest string accepted by the reader (llama.cpp's `gguf.cpp` has no lower cap; this
/// bounds allocation on hostile files).
pub const MAX_STRING_LEN: u64 = 1 << 30;
/// Most elements in one metadata array.
pub const MAX_ARRAY_LEN: u64 = 1 << 28;
/// Most dimensions of a tensor (`GGML_MAX_DIMS`).
pub const MAX_DIMS: u32 = 4;

/// A metadata value type id (`gguf_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueType {
    /// 0
    U8,
    /// 1
    I8,
    /// 2
    U16,
    /// 3
    I16,
    /// 4
    U32,
    /// 5
    I32,
    /// 6
    F32,
    /// 7
    Bool,
    /// 8
    String,
    /// 9
    Array,
    /// 10
    U64,
    /// 11
    I64,
    /// 12
    F64,
}

impl ValueType {
    /// The id written in the file.
    pub fn id(self) -> u32 {
        self as u32
    }

    /// The fewest bytes one value of this type takes in a file (a string or
    /// array: its length field), which bounds how many a file can hold.
    pub fn min_file_size(self) -> u64 {
        use ValueType::*;
        match self {
            U8 | I8 | Bool => 1,
            U16 | I16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 | String => 8,
            Array => 12,
        }
    }

    /// The type with id `id`.
    pub fn from_id(id: u32) -> Option<ValueType> {
        use ValueType::*;
        [
            U8, I8, U16, I16, U32, I32, F32, Bool, String, Array, U64, I64, F64,
        ]
        .get(id as usize)
        .copied()
    }
}

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// u8
    U8(u8),
    /// i8
    I8(i8),
    /// u16
    U16(u16),
    /// i16
    I16(i16),
    /// u32
    U32(u32),
    /// i32
    I32(i32),
    /// f32
    F32(f32),
    /// bool (one byte)
    Bool(bool),
    /// UTF-8 string
    String(String),
    /// Homogeneous array of the given element type.
    Array(ValueType, Vec<Value>),
    /// u64
    U64(u64),
    /// i64
    I64(i64),
    /// f64
    F64(f64),
}

impl Value {
    /// The value's type id.
    pub fn value_type(&self) -> ValueType {
        match self {
            Value::U8(_) => ValueType::U8,
            Value::I8(_) => ValueType::I8,
            Value::U16(_) => ValueType::U16,
            Value::I16(_) => ValueType::I16,
            Value::U32(_) => ValueType::U32,
            Value::I32(_) => ValueType::I32,
            Value::F32(_) => ValueType::F32,
            Value::Bool(_) => ValueType::Bool,
            Value::String(_) => ValueType::String,
            Value::Array(..) => ValueType::Array,
            Value::U64(_) => ValueType::U64,
            Value::I64(_) => ValueType::I64,
            Value::F64(_) => ValueType::F64,
        }
    }

    /// An array of strings.
    pub fn strings<S: Into<String>>(items: impl IntoIterator<Item = S>) -> Value {
        Value::Array(
            ValueType::String,
            items.into_iter().map(|s| Value::String(s.into())).collect(),
        )
    }

    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// Any unsigned or non-negative integer as u64.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// A float value as f64.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Value::U8(v) => out.push(*v),
            Value::I8(v) => out.push(*v as u8),
            Value::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::Bool(v) => out.push(u8::from(*v)),
            Value::String(s) => encode_str(s, out),
            Value::Array(ty, items) => {
                out.extend_from_slice(&ty.id().to_le_bytes());
                out.extend_from_slice(&(items.len() as u64).to_le_bytes());
                for item in items {
                    item.encode(out);
                }
            }
            Value::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
        }
    }
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::String(s) if s.chars().count() > 60 => {
                let head: String = s.chars().take(60).collect();
                write!(f, "{head:?}… ({} bytes)", s.len())
            }
            Value::String(s) => write!(f, "{s:?}"),
            Value::Array(ty, items) => {
                write!(f, "[{ty:?}; {}]", items.len())?;
                let shown: Vec<String> = items.iter().take(4).map(|v| v.to_string()).collect();
                if !shown.is_empty() {
                    write!(f, " {}", shown.join(", "))?;
                    if items.len() > 4 {
                        f.write_str(", …")?;
                    }
                }
                Ok(())
            }
            Value::U8(v) => write!(f, "{v}"),
            Value::I8(v) => write!(f, "{v}"),
            Value::U16(v) => write!(f, "{v}"),
            Value::I16(v) => write!(f, "{v}"),
            Value::U32(v) => write!(f, "{v}"),
            Value::I32(v) => write!(f, "{v}"),
            Value::U64(v) => write!(f, "{v}"),
            Value::I64(v) => write!(f, "{v}"),
            Value::F32(v) => write!(f, "{v}"),
            Value::F64(v) => write!(f, "{v}"),
            Value::Bool(v) => write!(f, "{v}"),
        }
    }
}

fn encode_str(s: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// A tensor as declared in the header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorDesc {
    /// GGUF tensor name (`blk.0.attn_q.weight`).
    pub name: String,
    /// Element type.
    pub ty: GgmlType,
    /// Dimensions in ggml order: `ne[0]` is the row length (the reverse of the
    /// PyTorch shape).
    pub ne: Vec<u64>,
}

impl TensorDesc {
    /// Elements in the tensor.
    pub fn numel(&self) -> u64 {
        self.ne.iter().product()
    }

    /// Bytes of tensor data, or `None` when rows are not whole blocks.
    pub fn n_bytes(&self) -> Option<u64> {
        let row = *self.ne.first().unwrap_or(&1);
        let rows = self.numel() / row.max(1);
        let row_bytes = self.ty.bytes_for(row as usize)? as u64;
        Some(row_bytes * rows)
    }
}

/// Errors of the GGUF reader and writer.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// An I/O error.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The file does not start with `GGUF`.
    #[error("not a GGUF file (magic {0:#010x})")]
    BadMagic(u32),
    /// Version 1 or newer than 3.
    #[error("unsupported GGUF version {0} (yibuild reads 2 and 3)")]
    UnsupportedVersion(u32),
    /// A read went past the end of the file.
    #[error("truncated: {what} needs {need} bytes at offset {at}, only {have} remain")]
    Truncated {
        /// What was being read.
        what: String,
        /// Bytes needed.
        need: u64,
        /// Where.
        at: u64,
        /// Bytes left.
        have: u64,
    },
    /// A count or length above the reader's limits.
    #[error("{what} is {value}, above the limit of {max}")]
    Limit {
        /// What was read.
        what: String,
        /// Its value.
        value: u64,
        /// The limit.
        max: u64,
    },
    /// An unknown metadata type id.
    #[error("key `{key}` has unknown value type {id}")]
    UnknownValueType {
        /// The key.
        key: String,
        /// The id found.
        id: u32,
    },
    /// A tensor type yibuild does not know.
    #[error("tensor `{name}` has unsupported ggml type id {id}")]
    UnknownTensorType {
        /// The tensor.
        name: String,
        /// The id found.
        id: u32,
    },
    /// A string that is not UTF-8.
    #[error("{what} is not valid UTF-8")]
    BadUtf8 {
        /// What was read.
        what: String,
    },
    /// A repeated key or tensor name.
    #[error("duplicate {what} `{name}`")]
    Duplicate {
        /// `key` or `tensor`.
        what: &'static str,
        /// The name.
        name: String,
    },
    /// A tensor whose row is not a whole number of blocks, or zero-sized dims.
    #[error("tensor `{name}`: shape {ne:?} cannot hold type {ty}")]
    BadShape {
        /// The tensor.
        name: String,
        /// Its dims.
        ne: Vec<u64>,
        /// Its type.
        ty: GgmlType,
    },
    /// Offsets not in declaration order, misaligned, or past the end.
    #[error("tensor `{name}`: data offset {got} (expected {expected})")]
    BadOffset {
        /// The tensor.
        name: String,
        /// Offset in the file.
        got: u64,
        /// The offset declaration order requires.
        expected: u64,
    },
    /// `general.alignment` is not a power of two u32.
    #[error("general.alignment must be a power-of-two u32, got {0}")]
    BadAlignment(String),
    /// Writer misuse or a size mismatch while streaming.
    #[error("{0}")]
    Write(String),
}

/// Streams a GGUF file: header first, then tensor data in declaration order.
pub struct GgufWriter {
    out: Option<BufWriter<File>>,
    partial: PathBuf,
    path: PathBuf,
    tensors: Vec<(String, u64)>,
    current: usize,
    written: u64,
    alignment: u64,
}

impl std::fmt::Debug for GgufWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufWriter")
            .field("path", &self.path)
            .finish()
    }
}

fn padding(len: u64, alignment: u64) -> u64 {
    (alignment - len % alignment) % alignment
}

impl GgufWriter {
    /// Creates `path` (through `path.partial`) and writes the header: metadata
    /// in the given order and the tensor infos with their offsets.
    pub fn create(
        path: &Path,
        metadata: &[(String, Value)],
        tensors: &[TensorDesc],
    ) -> Result<GgufWriter, GgufError> {
        let alignment = DEFAULT_ALIGNMENT;
        let mut header = Vec::new();
        header.extend_from_slice(&MAGIC.to_le_bytes());
        header.extend_from_slice(&VERSION.to_le_bytes());
        header.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
        header.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
        let mut keys = std::collections::HashSet::new();
        for (key, value) in metadata {
            if !keys.insert(key.as_str()) {
                return Err(GgufError::Duplicate {
                    what: "key",
                    name: key.clone(),
                });
            }
            encode_str(key, &mut header);
            header.extend_from_slice(&value.value_type().id().to_le_bytes());
            value.encode(&mut header);
        }
        let mut offset = 0u64;
        let mut sizes = Vec::with_capacity(tensors.len());
        let mut names = std::collections::HashSet::new();
        for t in tensors {
            if !names.insert(t.name.as_str()) {
                return Err(GgufError::Duplicate {
                    what: "tensor",
                    name: t.name.clone(),
                });
            }
            let bad_shape = || GgufError::BadShape {
                name: t.name.clone(),
                ne: t.ne.clone(),
                ty: t.ty,
            };
            if t.ne.is_empty() || t.ne.len() > MAX_DIMS as usize || t.ne.contains(&0) {
                return Err(bad_shape());
            }
            let n_bytes = t.n_bytes().ok_or_else(bad_shape)?;
            encode_str(&t.name, &mut header);
            header.extend_from_slice(&(t.ne.len() as u32).to_le_bytes());
            for d in &t.ne {
                header.extend_from_slice(&d.to_le_bytes());
            }
            header.extend_from_slice(&t.ty.id().to_le_bytes());
            header.extend_from_slice(&offset.to_le_bytes());
            offset += n_bytes + padding(n_bytes, alignment);
            sizes.push((t.name.clone(), n_bytes));
        }
        header.resize(
            header.len() + padding(header.len() as u64, alignment) as usize,
            0,
        );
        let mut partial = path.as_os_str().to_owned();
        partial.push(".partial");
        let partial = PathBuf::from(partial);
        let mut out = BufWriter::with_capacity(4 << 20, File::create(&partial)?);
        out.write_all(&header)?;
        let mut writer = GgufWriter {
            out: Some(out),
            partial,
            path: path.to_path_buf(),
            tensors: sizes,
            current: 0,
            written: 0,
            alignment,
        };
        writer.skip_empty();
        Ok(writer)
    }

    fn skip_empty(&mut self) {
        while self.current < self.tensors.len() && self.tensors[self.current].1 == 0 {
            self.current += 1;
        }
    }

    /// Appends bytes of the current tensor; when they complete it, writes its
    /// padding and moves to the next tensor. A tensor may arrive in any number
    /// of pieces.
    pub fn write_data(&mut self, bytes: &[u8]) -> Result<(), GgufError> {
        let Some((name, size)) = self.tensors.get(self.current).cloned() else {
            return Err(GgufError::Write(format!(
                "{} bytes written after the last tensor",
                bytes.len()
            )));
        };
        let after = self.written + bytes.len() as u64;
        if after > size {
            return Err(GgufError::Write(format!(
                "tensor `{name}` is {size} bytes but {after} were written"
            )));
        }
        let out = self.out.as_mut().expect("writer used after finish");
        out.write_all(bytes)?;
        self.written = after;
        if after == size {
            let pad = padding(size, self.alignment) as usize;
            out.write_all(&[0u8; 64][..pad])?;
            self.current += 1;
            self.written = 0;
            self.skip_empty();
        }
        Ok(())
    }

    /// The name of the tensor whose bytes are expected next.
    pub fn next_tensor(&self) -> Option<&str> {
        self.tensors.get(self.current).map(|(n, _)| n.as_str())
    }

    /// Checks that every tensor was written, syncs and renames the file into place.
    pub fn finish(mut self) -> Result<PathBuf, GgufError> {
        if let Some(name) = self.next_tensor() {
            return Err(GgufError::Write(format!(
                "finished before tensor `{name}` was complete"
            )));
        }
        let out = self.out.take().expect("finish called once");
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        std::fs::rename(&self.partial, &self.path)?;
        Ok(self.path.clone())
    }
}

impl Drop for GgufWriter {
    fn drop(&mut self) {
        if self.out.take().is_some() {
            let _ = std::fs::remove_file(&self.partial);
        }
    }
}

/// A tensor found in a GGUF file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorEntry {
    /// Name, type and dims.
    pub desc: TensorDesc,
    /// Absolute offset of its data in the file.
    pub offset: u64,
    /// Bytes of data.
    pub n_bytes: u64,
}

/// A GGUF file opened for reading (memory-mapped).
pub struct GgufFile {
    /// Format version (2 or 3).
    pub version: u32,
    /// Metadata in file order.
    pub metadata: Vec<(String, Value)>,
    /// Tensors in declaration order.
    pub tensors: Vec<TensorEntry>,
    /// Data alignment.
    pub alignment: u64,
    /// Absolute offset of the data section.
    pub data_offset: u64,
    map: Mmap,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<&'a [u8], GgufError> {
        let have = (self.bytes.len() - self.at) as u64;
        if n > have {
            return Err(GgufError::Truncated {
                what: what(),
                need: n,
                at: self.at as u64,
                have,
            });
        }
        let s = &self.bytes[self.at..self.at + n as usize];
        self.at += n as usize;
        Ok(s)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32, GgufError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes(b.try_into().expect("4 bytes")))
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64, GgufError> {
        let b = self.take(8, what)?;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }

    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String, GgufError> {
        let len = self.u64(what)?;
        if len > MAX_STRING_LEN {
            return Err(GgufError::Limit {
                what: format!("length of {}", what()),
                value: len,
                max: MAX_STRING_LEN,
            });
        }
        let b = self.take(len, what)?;
        String::from_utf8(b.to_vec()).map_err(|_| GgufError::BadUtf8 { what: what() })
    }

    fn value(&mut self, ty: ValueType, key: &str, depth: u32) -> Result<Value, GgufError> {
        let what = || format!("value of `{key}`");
        Ok(match ty {
            ValueType::U8 => Value::U8(self.take(1, &what)?[0]),
            ValueType::I8 => Value::I8(self.take(1, &what)?[0] as i8),
            ValueType::Bool => Value::Bool(self.take(1, &what)?[0] != 0),
            ValueType::U16 => Value::U16(u16::from_le_bytes(
                self.take(2, &what)?.try_into().expect("2"),
            )),
            ValueType::I16 => Value::I16(i16::from_le_bytes(
                self.take(2, &what)?.try_into().expect("2"),
            )),
            ValueType::U32 => Value::U32(self.u32(&what)?),
            ValueType::I32 => Value::I32(self.u32(&what)? as i32),
            ValueType::F32 => Value::F32(f32::from_bits(self.u32(&what)?)),
            ValueType::U64 => Value::U64(self.u64(&what)?),
            ValueType::I64 => Value::I64(self.u64(&what)? as i64),
            ValueType::F64 => Value::F64(f64::from_bits(self.u64(&what)?)),
            ValueType::String => Value::String(self.string(&what)?),
            ValueType::Array => {
                let id = self.u32(&what)?;
                let elem = ValueType::from_id(id).ok_or_else(|| GgufError::UnknownValueType {
                    key: key.to_owned(),
                    id,
                })?;
                if elem == ValueType::Array && depth > 0 {
                    return Err(GgufError::Limit {
                        what: format!("array nesting of `{key}`"),
                        value: 2,
                        max: 1,
                    });
                }
                let n = self.u64(&what)?;
                if n > MAX_ARRAY_LEN {
                    return Err(GgufError::Limit {
                        what: format!("array length of `{key}`"),
                        value: n,
                        max: MAX_ARRAY_LEN,
                    });
                }
                // Checked against the bytes left before allocating: a
                // claimed length the file cannot hold is a truncated file.
                let have = (self.bytes.len() - self.at) as u64;
                let need = n.saturating_mul(elem.min_file_size());
                if need > have {
                    return Err(GgufError::Truncated {
                        what: format!("{n} array items of `{key}`"),
                        need,
                        at: self.at as u64,
                        have,
                    });
                }
                let mut items = Vec::new();
                items.try_reserve_exact(n as usize).map_err(|e| {
                    std::io::Error::new(
                        std::io::ErrorKind::OutOfMemory,
                        format!("cannot allocate {n} array items of `{key}`: {e}"),
                    )
                })?;
                for _ in 0..n {
                    items.push(self.value(elem, key, depth + 1)?);
                }
                Value::Array(elem, items)
            }
        })
    }
}

impl GgufFile {
    /// Opens and validates a GGUF file.
    pub fn open(path: &Path) -> Result<GgufFile, GgufError> {
        let file = File::open(path)?;
        // SAFETY: read-only mapping of a file yibuild does not modify while reading.
        let map = unsafe { Mmap::map(&file)? };
        let mut c = Cursor { bytes: &map, at: 0 };
        let s = |t: &'static str| move || t.to_owned();
        let magic = c.u32(&s("magic"))?;
        if magic != MAGIC {
            return Err(GgufError::BadMagic(magic));
        }
        let version = c.u32(&s("version"))?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::UnsupportedVersion(version));
        }
        let n_tensors = c.u64(&s("tensor count"))?;
        let n_kv = c.u64(&s("metadata count"))?;
        // Each KV needs at least 12 bytes and each tensor info at least 28.
        let left = (map.len() - c.at) as u64;
        if n_kv.saturating_mul(12) > left || n_tensors.saturating_mul(28) > left {
            return Err(GgufError::Truncated {
                what: format!("{n_kv} metadata entries and {n_tensors} tensor infos"),
                need: n_kv
                    .saturating_mul(12)
                    .saturating_add(n_tensors.saturating_mul(28)),
                at: c.at as u64,
                have: left,
            });
        }
        let mut metadata = Vec::with_capacity(n_kv as usize);
        let mut keys = std::collections::HashSet::new();
        for i in 0..n_kv {
            let key = c.string(&|| format!("key of metadata entry {i}"))?;
            let id = c.u32(&|| format!("type of `{key}`"))?;
            let ty = ValueType::from_id(id).ok_or_else(|| GgufError::UnknownValueType {
                key: key.clone(),
                id,
            })?;
            let value = c.value(ty, &key, 0)?;
            if !keys.insert(key.clone()) {
                return Err(GgufError::Duplicate {
                    what: "key",
                    name: key,
                });
            }
            metadata.push((key, value));
        }
        let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some((_, Value::U32(a))) if a.is_power_of_two() => u64::from(*a),
            Some((_, v)) => return Err(GgufError::BadAlignment(v.to_string())),
        };
        let mut descs = Vec::with_capacity(n_tensors as usize);
        let mut names = std::collections::HashSet::new();
        for i in 0..n_tensors {
            let name = c.string(&|| format!("name of tensor {i}"))?;
            let n_dims = c.u32(&|| format!("dims of `{name}`"))?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(GgufError::Limit {
                    what: format!("dimension count of `{name}`"),
                    value: n_dims.into(),
                    max: MAX_DIMS.into(),
                });
            }
            let mut ne = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                ne.push(c.u64(&|| format!("dims of `{name}`"))?);
            }
            let id = c.u32(&|| format!("type of `{name}`"))?;
            let ty = GgmlType::from_id(id).ok_or_else(|| GgufError::UnknownTensorType {
                name: name.clone(),
                id,
            })?;
            let offset = c.u64(&|| format!("offset of `{name}`"))?;
            if !names.insert(name.clone()) {
                return Err(GgufError::Duplicate {
                    what: "tensor",
                    name,
                });
            }
            descs.push((TensorDesc { name, ty, ne }, offset));
        }
        let data_offset = c.at as u64 + padding(c.at as u64, alignment);
        let mut tensors = Vec::with_capacity(descs.len());
        let mut expected = 0u64;
        for (desc, offset) in descs {
            let numel = desc
                .ne
                .iter()
                .try_fold(1u64, |a, &d| a.checked_mul(d))
                .filter(|&n| n > 0 && n < (1 << 48));
            let n_bytes =
                numel
                    .and_then(|_| desc.n_bytes())
                    .ok_or_else(|| GgufError::BadShape {
                        name: desc.name.clone(),
                        ne: desc.ne.clone(),
                        ty: desc.ty,
                    })?;
            if offset != expected {
                return Err(GgufError::BadOffset {
                    name: desc.name,
                    got: offset,
                    expected,
                });
            }
            let start = data_offset + offset;
            let have = (map.len() as u64).saturating_sub(start);
            if n_bytes > have {
                return Err(GgufError::Truncated {
                    what: format!("data of tensor `{}`", desc.name),
                    need: n_bytes,
                    at: start,
                    have,
                });
            }
            expected = offset + n_bytes + padding(n_bytes, alignment);
            tensors.push(TensorEntry {
                desc,
                offset: start,
                n_bytes,
            });
        }
        Ok(GgufFile {
            version,
            metadata,
            tensors,
            alignment,
            data_offset,
            map,
        })
    }

    /// The metadata value of `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The tensor called `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorEntry> {
        self.tensors.iter().find(|t| t.desc.name == name)
    }

    /// The raw bytes of a tensor.
    pub fn tensor_bytes(&self, t: &TensorEntry) -> &[u8] {
        &self.map[t.offset as usize..(t.offset + t.n_bytes) as usize]
    }

    /// A tensor decoded to f32 (row-major, `ne[0]` contiguous).
    pub fn dequantize(&self, t: &TensorEntry) -> Vec<f32> {
        super::quants::dequantize(t.desc.ty, self.tensor_bytes(t), t.desc.numel() as usize)
    }
}
