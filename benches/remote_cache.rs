//! Restoring a ~1 GB step output from the remote cache versus rebuilding it.
//!
//! `cargo bench --bench remote_cache`: three 250M-parameter bf16 fine-tunes
//! are DARE-TIES-merged onto their base (the seed recipe's shape, scaled
//! down) into a 1.0 GB float32 model. The bench times the merge built locally
//! with no remote, the same build uploading to an S3-compatible server on
//! loopback (s3s-fs, in this process), and a build on an empty cache that
//! restores the output from that server instead of merging.

#[path = "../tests/common/s3_server.rs"]
mod s3_server;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use yibuild::fixtures::{write_finetune, TinyLlama};

const RECIPE: &str = r#"
yibuild: 1
name: bench
sources:
  base: ./models/base
  ft1: ./models/ft1
  ft2: ./models/ft2
  ft3: ./models/ft3
steps:
  merged:
    merge:
      merge_method: dare_ties
      base_model: base
      models:
        - model: ft1
          parameters: {weight: 0.4, density: 0.5}
        - model: ft2
          parameters: {weight: 0.3, density: 0.5}
        - model: ft3
          parameters: {weight: 0.3, density: 0.5}
      dtype: float32
"#;

fn timed(dir: &Path, server: Option<&s3_server::S3Server>, side: &str) -> f64 {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_yibuild"));
    cmd.current_dir(dir).args([
        "-q",
        "--cache-dir",
        &format!("cache-{side}"),
        "--build-dir",
        &format!("build-{side}"),
    ]);
    if let Some(s) = server {
        cmd.args(["--remote-cache", &s.url("bench")]).envs(s.env());
    }
    let t = Instant::now();
    assert!(cmd.arg("recipe.yaml").status().unwrap().success());
    t.elapsed().as_secs_f64()
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let base = TinyLlama {
        hidden: 1024,
        layers: 16,
        heads: 16,
        kv_heads: 8,
        intermediate: 2816,
        vocab: 32000,
        tokenizer_vocab: 320,
        shards: 2,
        ..TinyLlama::default()
    };
    base.write(&dir.path().join("models/base")).unwrap();
    for i in 1..=3 {
        let ft = dir.path().join(format!("models/ft{i}"));
        write_finetune(&base, &ft, i, 0.02).unwrap();
    }
    std::fs::write(dir.path().join("recipe.yaml"), RECIPE).unwrap();
    let server = s3_server::S3Server::start();
    let rebuild = timed(dir.path(), None, "local");
    let upload = timed(dir.path(), Some(&server), "seed");
    let restore = timed(dir.path(), Some(&server), "restore");
    let bytes: u64 =
        yibuild::cache::memo::list_files(&dir.path().join("build-restore/bench/merged"))
            .unwrap()
            .iter()
            .map(|f| {
                std::fs::metadata(dir.path().join("build-restore/bench/merged").join(f))
                    .unwrap()
                    .len()
            })
            .sum();
    println!("step output: {:.2} GB", bytes as f64 / 1e9);
    println!("rebuild (merge, no remote):      {rebuild:6.2} s");
    println!("build + upload to the remote:    {upload:6.2} s");
    println!("restore from the remote:         {restore:6.2} s");
    println!(
        "restore is {:.1}x faster than rebuilding",
        rebuild / restore
    );
}
