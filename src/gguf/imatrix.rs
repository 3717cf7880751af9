//! Importance matrices from llama.cpp's `llama-imatrix`: per weight matrix,
//! the mean square of each input column over a calibration text. Both file
//! formats are read and normalised the way llama-quantize does:
//!
//! * legacy `.dat`: `i32 n_entries`, then per entry `i32 name_len`, name,
//!   `i32 ncall`, `i32 nval`, `f32[nval]` (sums × ncall); values are divided by `ncall`.
//! * GGUF (`general.type = imatrix`): tensors `<name>.in_sum2` and
//!   `<name>.counts`; values are `in_sum2 / count` (1 where the count is 0).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};

use super::file::GgufFile;

/// Importance vectors by GGUF tensor name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Imatrix {
    /// Tensor name → one weight per column (× experts for MoE tensors).
    pub entries: BTreeMap<String, Vec<f32>>,
    /// Calibration chunks it was computed on, when recorded.
    pub chunks: Option<u64>,
    /// Calibration data set names, when recorded.
    pub datasets: Vec<String>,
}

impl Imatrix {
    /// Reads an imatrix file in either format (GGUF is recognised by its magic).
    pub fn load(path: &Path) -> Result<Imatrix> {
        let head = {
            use std::io::Read;
            let mut f = std::fs::File::open(path)
                .with_context(|| format!("cannot open imatrix {}", path.display()))?;
            let mut b = [0u8; 4];
            f.read_exact(&mut b)
                .with_context(|| format!("{}: too short to be an imatrix", path.display()))?;
            b
        };
        if &head == b"GGUF" {
            Self::load_gguf(path)
        } else {
            let bytes =
                std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
            Self::parse_legacy(&bytes)
                .with_context(|| format!("{}: invalid legacy imatrix", path.display()))
        }
    }

    /// Parses the legacy `.dat` format.
    pub fn parse_legacy(bytes: &[u8]) -> Result<Imatrix> {
        let mut r = LeReader { bytes, at: 0 };
        let n = r.i32("entry count")?;
        if n <= 0 {
            bail!("entry count {n}");
        }
        let mut entries = BTreeMap::new();
        for i in 0..n {
            let len = r.i32("name length")?;
            if !(1..=4096).contains(&len) {
                bail!("entry {i}: name length {len}");
            }
            let name = std::str::from_utf8(r.take(len as usize, "name")?)
                .with_context(|| format!("entry {i}: name is not UTF-8"))?
                .to_owned();
            let ncall = r.i32("ncall")?;
            let nval = r.i32("nval")?;
            if nval <= 0 {
                bail!("`{name}`: {nval} values");
            }
            let raw = r
                .take(4 * nval as usize, "values")
                .with_context(|| format!("`{name}`: {nval} values do not fit in the file"))?;
            let values = raw
                .chunks_exact(4)
                .map(|c| {
                    let v = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                    if ncall > 0 {
                        v / ncall as f32
                    } else {
                        v
                    }
                })
                .collect();
            entries.insert(name, values);
        }
        // Optional trailer: last chunk count and the data set name.
        let chunks = r.i32("chunk count").ok();
        let datasets = r
            .i32("data set name length")
            .ok()
            .and_then(|len| r.take(len.max(0) as usize, "data set name").ok())
            .and_then(|b| std::str::from_utf8(b).ok())
            .map(|s| vec![s.to_owned()])
            .unwrap_or_default();
        Ok(Imatrix {
            entries,
            chunks: chunks.and_then(|c| u64::try_from(c).ok()),
            datasets,
        })
    }

    fn load_gguf(path: &Path) -> Result<Imatrix> {
        let file = GgufFile::open(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let mut entries = BTreeMap::new();
        for t in &file.tensors {
            let Some(name) = t.desc.name.strip_suffix(".in_sum2") else {
                continue;
            };
            let counts_name = format!("{name}.counts");
            let counts = file.tensor(&counts_name).with_context(|| {
                format!(
                    "{}: `{}` has no `{counts_name}`",
                    path.display(),
                    t.desc.name
                )
            })?;
            let sums = file.dequantize(t);
            let counts = file.dequantize(counts);
            if counts.is_empty() || sums.len() % counts.len() != 0 {
                bail!(
                    "{}: `{name}`: {} sums for {} counts",
                    path.display(),
                    sums.len(),
                    counts.len()
                );
            }
            let ne0 = sums.len() / counts.len();
            let mut values = vec![1.0f32; sums.len()];
            for (j, &count) in counts.iter().enumerate() {
                if count > 0.0 {
                    for i in 0..ne0 {
                        values[j * ne0 + i] = sums[j * ne0 + i] / count;
                    }
                }
            }
            entries.insert(name.to_owned(), values);
        }
        if entries.is_empty() {
            bail!(
                "{}: a GGUF file without `*.in_sum2` tensors is not an imatrix",
                path.display()
            );
        }
        let chunks = file.get("imatrix.chunk_count").and_then(|v| v.as_u64());
        let datasets = match file.get("imatrix.datasets") {
            Some(super::file::Value::Array(_, items)) => items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        };
        Ok(Imatrix {
            entries,
            chunks,
            datasets,
        })
    }

    /// Writes the legacy `.dat` format (used by tests and for interchange).
    pub fn to_legacy_bytes(&self, ncall: i32) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&(self.entries.len() as i32).to_le_bytes());
        for (name, values) in &self.entries {
            out.extend_from_slice(&(name.len() as i32).to_le_bytes());
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(&ncall.to_le_bytes());
            out.extend_from_slice(&(values.len() as i32).to_le_bytes());
            for v in values {
                out.extend_from_slice(&(v * ncall as f32).to_le_bytes());
            }
        }
        out
    }
}

/// Little-endian reads with "truncated at" errors.
struct LeReader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> LeReader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let b = self
            .bytes
            .get(self.at..self.at.saturating_add(n))
            .with_context(|| format!("truncated at byte {} reading {what}", self.at))?;
        self.at += n;
        Ok(b)
    }

    fn i32(&mut self, what: &str) -> Result<i32> {
        let b = self.take(4, what)?;
        Ok(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}
