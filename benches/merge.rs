//! Merge benchmark: dare_ties of a base and three fine-tunes, Llama-shaped,
//! ~0.5 B parameters each in bf16, with yibuild and (when installed) mergekit
//! on the same inputs in the same run, plus the page-cache read and plain
//! write floors.
//!
//! ```text
//! cargo bench --bench merge                       # yibuild only
//! MERGEKIT=/tmp/mk-venv/bin/mergekit-yaml cargo bench --bench merge
//! ```
//!
//! Models are generated once under `$YIBUILD_BENCH_DIR` (default
//! `/tmp/yibuild-merge-bench`, about 4 GB). Wall time and peak RSS of each
//! merge come from `/usr/bin/time` around a child process, so both tools are
//! measured the same way, each after a `sync`. `YIBUILD_BENCH_THREADS` sets yibuild's threads.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use rayon::prelude::*;
use yibuild::fixtures::{write_byte_level_tokenizer, TinyLlama};
use yibuild::fs::files::write_json;
use yibuild::merge::rng::MaskStream;
use yibuild::merge::{merge_config_file, MergeOptions};
use yibuild::tensor::{DType, PlannedTensor, ShardedWriter};

/// Llama-shaped, 26 layers of width 1024 with a 4096 MLP and a 32000-token
/// vocabulary: 502 M parameters.
fn shape() -> TinyLlama {
    TinyLlama {
        hidden: 1024,
        layers: 26,
        heads: 16,
        kv_heads: 16,
        intermediate: 4096,
        vocab: 32000,
        tokenizer_vocab: 300,
        ..Default::default()
    }
}

/// A value in [-1, 1) from a counter-based hash: fast to generate in parallel.
fn noise(stream: MaskStream, i: u64) -> f32 {
    (stream.uniform(i) * 2.0 - 1.0) as f32
}

/// Writes one model: the base (`finetune: None`) or a fine-tune with its own
/// noise added, streamed tensor by tensor.
fn write_model(dir: &Path, finetune: Option<u64>) {
    let m = shape();
    std::fs::create_dir_all(dir).unwrap();
    let shapes = m.tensor_shapes();
    let plan = shapes
        .iter()
        .map(|(name, shape)| PlannedTensor {
            name: name.clone(),
            dtype: DType::BF16,
            shape: shape.clone(),
        })
        .collect();
    let mut writer = ShardedWriter::create(dir, plan, 5_000_000_000).unwrap();
    for (name, shape) in &shapes {
        let n: usize = shape.iter().product();
        let scale = 1.0 / (*shape.last().unwrap() as f32).sqrt();
        let base = MaskStream::new(0, name, "base", 0);
        let tune = finetune.map(|s| MaskStream::new(s, name, "tune", 0));
        let norm = name.ends_with("norm.weight");
        let mut bytes = vec![0u8; n * 2];
        bytes
            .par_chunks_mut(1 << 17)
            .enumerate()
            .for_each(|(c, out)| {
                let first = (c << 16) as u64;
                let values: Vec<f32> = (0..out.len() as u64 / 2)
                    .map(|j| {
                        let i = first + j;
                        let b = if norm {
                            1.0 + 0.05 * noise(base, i)
                        } else {
                            scale * noise(base, i)
                        };
                        b + tune.map_or(0.0, |t| 0.05 * scale * noise(t, i))
                    })
                    .collect();
                DType::BF16.encode_to_slice(&values, out);
            });
        writer.write(&bytes).unwrap();
    }
    writer.finish().unwrap();
    write_json(&dir.join("config.json"), &m.config()).unwrap();
    write_byte_level_tokenizer(dir, m.tokenizer_vocab).unwrap();
}

fn config(root: &Path) -> String {
    let mut text = format!(
        "merge_method: dare_ties\nbase_model: {0}/base\nparameters: {{int8_mask: true}}\ndtype: bfloat16\nmodels:\n",
        root.display()
    );
    for (i, name) in ["ft1", "ft2", "ft3"].iter().enumerate() {
        text.push_str(&format!(
            "  - model: {}/{name}\n    parameters: {{weight: {}, density: 0.5}}\n",
            root.display(),
            0.2 + 0.1 * i as f64
        ));
    }
    text
}

/// Runs `cmd` under `/usr/bin/time`, returning (wall seconds, peak RSS MiB).
fn timed(cmd: Command) -> (f64, f64) {
    // Start each tool from the same state: no dirty pages of the previous
    // run's output still being written back.
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    let mut full = Command::new("/usr/bin/time");
    full.arg("-f")
        .arg("TIME %e %M")
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            full.env(k, v);
        }
    }
    let out = full.output().expect("cannot run /usr/bin/time");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "command failed:\n{stderr}");
    let line = stderr
        .lines()
        .rev()
        .find(|l| l.starts_with("TIME "))
        .expect("no timing");
    let mut parts = line.split_whitespace().skip(1);
    let wall: f64 = parts.next().unwrap().parse().unwrap();
    let kib: f64 = parts.next().unwrap().parse().unwrap();
    (wall, kib / 1024.0)
}

fn read_floor(root: &Path) -> f64 {
    let start = Instant::now();
    let mut total = 0u64;
    for m in ["base", "ft1", "ft2", "ft3"] {
        let bytes = std::fs::read(root.join(m).join("model.safetensors")).unwrap();
        total += bytes
            .iter()
            .step_by(4096)
            .map(|b| u64::from(*b))
            .sum::<u64>();
    }
    std::hint::black_box(total);
    start.elapsed().as_secs_f64()
}

fn write_floor(root: &Path) -> f64 {
    let data = vec![7u8; 1 << 26];
    let path = root.join("write-floor.bin");
    let start = Instant::now();
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    let size = std::fs::metadata(root.join("base/model.safetensors"))
        .unwrap()
        .len();
    let mut left = size as usize;
    while left > 0 {
        let n = left.min(data.len());
        f.write_all(&data[..n]).unwrap();
        left -= n;
    }
    f.flush().unwrap();
    drop(f);
    let secs = start.elapsed().as_secs_f64();
    std::fs::remove_file(path).unwrap();
    secs
}

fn main() {
    if let Ok(out) = std::env::var("YIBUILD_BENCH_CHILD") {
        let root = PathBuf::from(std::env::var("YIBUILD_BENCH_DIR_CHILD").unwrap());
        let threads = std::env::var("YIBUILD_BENCH_THREADS")
            .ok()
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| MergeOptions::default().threads);
        let opts = MergeOptions {
            seed: 1,
            threads,
            mem_budget: 1 << 30,
            ..MergeOptions::default()
        };
        merge_config_file(&root.join("merge.yml"), Path::new(&out), &opts, &|_| {}).unwrap();
        return;
    }
    let root = PathBuf::from(
        std::env::var("YIBUILD_BENCH_DIR").unwrap_or_else(|_| "/tmp/yibuild-merge-bench".into()),
    );
    for (name, tune) in [
        ("base", None),
        ("ft1", Some(1)),
        ("ft2", Some(2)),
        ("ft3", Some(3)),
    ] {
        let dir = root.join(name);
        if !dir.join("config.json").is_file() {
            let t = Instant::now();
            write_model(&dir, tune);
            eprintln!("generated {name} in {:.1} s", t.elapsed().as_secs_f64());
        }
    }
    std::fs::write(root.join("merge.yml"), config(&root)).unwrap();
    read_floor(&root); // warm the page cache
    let read = read_floor(&root);
    let write = write_floor(&root);
    println!("floor: read 4 inputs from page cache {read:.2} s, write 1 output {write:.2} s, sum {:.2} s", read + write);

    let out = root.join("out-yibuild");
    let _ = std::fs::remove_dir_all(&out);
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.env("YIBUILD_BENCH_CHILD", &out)
        .env("YIBUILD_BENCH_DIR_CHILD", &root);
    let (wall, rss) = timed(cmd);
    println!("yibuild dare_ties: {wall:.2} s wall, {rss:.0} MiB peak RSS (--mem-budget 1 GiB)");

    if let Ok(mergekit) = std::env::var("MERGEKIT") {
        let out_mk = root.join("out-mergekit");
        let _ = std::fs::remove_dir_all(&out_mk);
        let mut cmd = Command::new(mergekit);
        cmd.arg(root.join("merge.yml"))
            .arg(&out_mk)
            .arg("--random-seed")
            .arg("1");
        let (mk_wall, mk_rss) = timed(cmd);
        println!("mergekit dare_ties: {mk_wall:.2} s wall, {mk_rss:.0} MiB peak RSS");
        println!(
            "speed-up {:.1}x; yibuild / (read + write floor) = {:.2}",
            mk_wall / wall,
            wall / (read + write)
        );
    }
}
