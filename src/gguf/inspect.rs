//! `yibuild inspect FILE.gguf`: a plain-text listing of a GGUF file's
//! metadata and tensors (name, type, shape in ggml order, bytes).

use std::fmt::Write;
use std::path::Path;

use anyhow::Result;

use super::file::GgufFile;

/// Lists the metadata and tensors of the GGUF file at `path`.
pub fn inspect_gguf(path: &Path) -> Result<String> {
    let file = GgufFile::open(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let mut out = String::new();
    let size = std::fs::metadata(path)?.len();
    writeln!(
        out,
        "{}: GGUF v{}, {} metadata keys, {} tensors, {size} bytes (data at {}, alignment {})",
        path.display(),
        file.version,
        file.metadata.len(),
        file.tensors.len(),
        file.data_offset,
        file.alignment
    )?;
    writeln!(out, "\nmetadata:")?;
    for (k, v) in &file.metadata {
        writeln!(out, "  {k:<44} {v}")?;
    }
    writeln!(out, "\ntensors:")?;
    writeln!(
        out,
        "  {:<36} {:>6} {:>24} {:>12}",
        "name", "type", "shape (ne)", "bytes"
    )?;
    for t in &file.tensors {
        let shape = t
            .desc
            .ne
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(" x ");
        writeln!(
            out,
            "  {:<36} {:>6} {:>24} {:>12}",
            t.desc.name,
            t.desc.ty.name(),
            shape,
            t.n_bytes
        )?;
    }
    let params: u64 = file.tensors.iter().map(|t| t.desc.numel()).sum();
    let data: u64 = file.tensors.iter().map(|t| t.n_bytes).sum();
    writeln!(
        out,
        "\n{params} parameters, {data} bytes of tensor data ({:.3} bits per weight)",
        data as f64 * 8.0 / params.max(1) as f64
    )?;
    Ok(out)
}
