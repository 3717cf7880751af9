//! GGUF quantization benchmark and llama.cpp comparison driver (run through
//! `benches/gguf_vs_llama_quantize.sh`, which documents the figures).
//!
//! ```text
//! cargo bench --bench gguf_quantize -- fixture DIR [tiny|bench]
//! cargo bench --bench gguf_quantize -- convert MODEL_DIR OUT.gguf PRESET [THREADS]
//! cargo bench --bench gguf_quantize -- compare A.gguf B.gguf
//! cargo bench --bench gguf_quantize -- speed [TYPE...]
//! ```
//!
//! * `fixture`: writes a Llama model folder: `tiny` (hidden 256, 2 layers) or
//!   `bench` (~0.49 B parameters: hidden 1024, 24 layers, 16/4 heads, ffn 4096,
//!   vocab 64000, bf16).
//! * `convert`: the quantize pipeline on one model folder; prints seconds.
//! * `speed`: single-thread quantization throughput per type (M elements/s)
//!   on 4096-wide Gaussian rows.
//! * `compare`: tensor-by-tensor comparison of two GGUF files (name, type,
//!   shape, bytes); exits 1 on any difference.

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use yibuild::fixtures::TinyLlama;
use yibuild::gguf::file::GgufFile;
use yibuild::gguf::mixture::Preset;
use yibuild::gguf::pipeline::Conversion;
use yibuild::gguf::quants::quantize_rows;
use yibuild::gguf::GgmlType;
use yibuild::tensor::DType;

fn fixture(dir: &Path, size: &str) -> Result<()> {
    let model = match size {
        "tiny" => TinyLlama {
            hidden: 256,
            intermediate: 512,
            layers: 2,
            heads: 4,
            kv_heads: 2,
            seed: 11,
            ..TinyLlama::default()
        },
        "bench" => TinyLlama {
            hidden: 1024,
            intermediate: 4096,
            layers: 24,
            heads: 16,
            kv_heads: 4,
            vocab: 64000,
            tokenizer_vocab: 320,
            dtype: DType::BF16,
            shards: 2,
            seed: 5,
            ..TinyLlama::default()
        },
        other => bail!("unknown fixture size `{other}` (tiny or bench)"),
    };
    std::fs::create_dir_all(dir)?;
    model.write(dir)
}

fn convert(model: &Path, out: &Path, preset: &str, threads: usize) -> Result<()> {
    let preset = Preset::parse(preset).with_context(|| format!("unknown preset `{preset}`"))?;
    let start = Instant::now();
    let name = model
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let conversion = Conversion::open(model, &name)?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()?;
    let written = conversion.write(out, preset, None, &pool, &|_| {})?;
    println!(
        "{}: {} bytes in {:.2} s with {threads} threads",
        out.display(),
        written.bytes,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn compare(a: &Path, b: &Path) -> Result<bool> {
    let (fa, fb) = (GgufFile::open(a)?, GgufFile::open(b)?);
    let mut same = 0;
    let mut differ = Vec::new();
    for ta in &fa.tensors {
        let Some(tb) = fb.tensor(&ta.desc.name) else {
            differ.push(format!("{}: missing in {}", ta.desc.name, b.display()));
            continue;
        };
        if ta.desc != tb.desc {
            differ.push(format!("{}: {:?} vs {:?}", ta.desc.name, ta.desc, tb.desc));
        } else if fa.tensor_bytes(ta) != fb.tensor_bytes(tb) {
            differ.push(format!("{} ({}): bytes differ", ta.desc.name, ta.desc.ty));
        } else {
            same += 1;
        }
    }
    println!(
        "{same} tensors identical (name, type, shape, bytes), {} different",
        differ.len()
    );
    for d in &differ {
        println!("  {d}");
    }
    Ok(differ.is_empty() && fa.tensors.len() == fb.tensors.len())
}

fn speed(types: &[String]) -> Result<()> {
    let mut rng = yibuild::fixtures::SplitMix(3);
    let x: Vec<f32> = (0..1 << 22).map(|_| 0.02 * rng.normal()).collect();
    let all: Vec<GgmlType> = GgmlType::ALL.to_vec();
    let chosen: Vec<GgmlType> = if types.is_empty() {
        all
    } else {
        all.into_iter()
            .filter(|t| types.iter().any(|n| n == t.name()))
            .collect()
    };
    for ty in chosen {
        let mut out = Vec::new();
        let start = Instant::now();
        quantize_rows(ty, &x, 4096, None, &mut out)?;
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{:>5}: {:8.1} M elements/s",
            ty.name(),
            x.len() as f64 / secs / 1e6
        );
    }
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["fixture", dir] => fixture(Path::new(dir), "tiny"),
        ["fixture", dir, size] => fixture(Path::new(dir), size),
        ["convert", model, out, preset] => convert(Path::new(model), Path::new(out), preset, 2),
        ["convert", model, out, preset, threads] => {
            convert(Path::new(model), Path::new(out), preset, threads.parse()?)
        }
        ["compare", a, b] => {
            if !compare(Path::new(a), Path::new(b))? {
                std::process::exit(1);
            }
            Ok(())
        }
        ["speed", types @ ..] => speed(&types.iter().map(|s| s.to_string()).collect::<Vec<_>>()),
        [] => {
            eprintln!("nothing to do; see benches/gguf_vs_llama_quantize.sh");
            Ok(())
        }
        other => bail!("usage: fixture DIR [tiny|bench] | convert MODEL OUT PRESET [THREADS] | compare A B (got {other:?})"),
    }
}
