//! CPU perplexity throughput: a llama.cpp-protocol pass at context 512 over a
//! ~0.46 B-parameter bf16 Llama (random weights, Llama-2-like shapes scaled
//! down: hidden 1024, 24 layers, 16 heads, MLP 4096, vocabulary 32000).
//!
//! `cargo bench --bench eval_cpu -- [DIR]` writes the model and a text into
//! DIR (default `target/bench-eval`) on first use, then prints tokens/s.
//! `YIBUILD_BENCH_THREADS` (default: all cores) and `YIBUILD_BENCH_CHUNKS`
//! (default 4) set the thread count and the number of 512-token chunks.
//! `benches/eval_vs_llama_cpp.sh` runs llama-perplexity on the same model.

use std::path::PathBuf;
use std::time::Instant;

use yibuild::eval::cpu::CpuModel;
use yibuild::eval::model::{check_weights, ModelConfig};
use yibuild::eval::perplexity::{perplexity, PerplexitySpec, Protocol};
use yibuild::fixtures::{SplitMix, TinyLlama};
use yibuild::tensor::{DType, ModelTensors};

fn env_usize(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// CPU seconds (user + system) this process has used: throughput per CPU
/// second is comparable on a machine shared with other work, wall time is not.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let usage = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        u
    };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 * 1e-6;
    t(usage.ru_utime) + t(usage.ru_stime)
}

fn main() -> anyhow::Result<()> {
    let dir = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/bench-eval"));
    let model = dir.join("model-0.5b");
    if !model.join("config.json").is_file() {
        eprintln!("writing {} ...", model.display());
        TinyLlama {
            hidden: 1024,
            layers: 24,
            heads: 16,
            kv_heads: 16,
            intermediate: 4096,
            vocab: 32000,
            tokenizer_vocab: 320,
            dtype: DType::BF16,
            shards: 4,
            max_positions: 4096,
            ..Default::default()
        }
        .write(&model)?;
    }
    let text = dir.join("text.txt");
    if !text.is_file() {
        let words = [
            "the", "cat", "sat", "on", "a", "mat", "and", "then", "it", "ran", "far", "away",
            "from", "green", "hills", "where", "birds", "sing", "every", "morning.",
        ];
        let mut rng = SplitMix(1);
        let body: Vec<&str> = (0..20_000)
            .map(|_| words[(rng.next_u64() % words.len() as u64) as usize])
            .collect();
        std::fs::write(&text, body.join(" "))?;
    }
    let threads = env_usize(
        "YIBUILD_BENCH_THREADS",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
    );
    let chunks = env_usize("YIBUILD_BENCH_CHUNKS", 4);
    let cfg = ModelConfig::from_dir(&model)?;
    let tensors = ModelTensors::open(&model)?;
    check_weights(&cfg, &tensors)?;
    let tok = tokenizers::Tokenizer::from_file(model.join("tokenizer.json"))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let tokens = tok
        .encode(std::fs::read_to_string(&text)?, true)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .get_ids()
        .to_vec();
    let backend = CpuModel::new(cfg, &tensors, threads)?;
    let spec = PerplexitySpec {
        protocol: Protocol::LlamaCpp,
        context: 512,
        stride: None,
        max_tokens: Some(chunks.max(2) * 512),
    };
    let (start, cpu_start) = (Instant::now(), cpu_seconds());
    let r = perplexity(&backend, &tokens, Some(1), &spec, &|l| eprintln!("{l}"))?;
    let (secs, cpu) = (start.elapsed().as_secs_f64(), cpu_seconds() - cpu_start);
    let n = r.tokens_processed as f64;
    println!(
        "yibuild cpu: {} chunks x 512 tokens, {threads} threads: {secs:.2} s wall, {cpu:.2} s CPU; \
         {:.1} tokens/s, {:.1} tokens per CPU-second (ppl {:.2})",
        r.windows,
        n / secs,
        n / cpu,
        r.perplexity
    );
    Ok(())
}
