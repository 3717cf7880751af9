//! Throughput and peak memory of `resize: pad` on a Yi-shaped vocabulary:
//! embedding and lm_head of 64000 × H bf16 rows padded to a multiple of 128
//! after adding tokens (64000 → 64128 rows).
//!
//! Run: `cargo bench --bench tokenizer_resize [-- HIDDEN]` (default 2048;
//! Yi-34B's is 7168). The resize runs in a child process so its peak RSS is
//! measured alone.

use std::path::Path;
use std::time::Instant;

use yibuild::fixtures::SplitMix;
use yibuild::tensor::DType;
use yibuild::tokenizer::resize::resize_embeddings;

const ROWS: usize = 64000;
const NEW_ROWS: usize = 64128;

fn write_model(dir: &Path, hidden: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let config = serde_json::json!({"architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": hidden, "vocab_size": ROWS, "torch_dtype": "bfloat16"});
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let mut rng = SplitMix(7);
    let mut matrix = || {
        let values: Vec<f32> = (0..ROWS * hidden).map(|_| 0.02 * rng.normal()).collect();
        let mut bytes = Vec::new();
        DType::BF16.encode_into(&values, &mut bytes);
        bytes
    };
    let (embed, head) = (matrix(), matrix());
    let norm = [0x80u8, 0x3f].repeat(hidden);
    let tensors = vec![
        (
            "model.embed_tokens.weight",
            view(vec![ROWS, hidden], &embed),
        ),
        ("model.norm.weight", view(vec![hidden], &norm)),
        ("lm_head.weight", view(vec![ROWS, hidden], &head)),
    ];
    safetensors::serialize_to_file(tensors, None, &dir.join("model.safetensors")).unwrap();
}

fn view(shape: Vec<usize>, bytes: &[u8]) -> safetensors::tensor::TensorView<'_> {
    safetensors::tensor::TensorView::new(safetensors::Dtype::BF16, shape, bytes).unwrap()
}

fn peak_rss_mib() -> f64 {
    // SAFETY: getrusage only writes into the zeroed struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    usage.ru_maxrss as f64 / 1024.0
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("child") {
        let start = Instant::now();
        resize_embeddings(Path::new(&args[2]), Path::new(&args[3]), NEW_ROWS).unwrap();
        println!("{:.3} {:.0}", start.elapsed().as_secs_f64(), peak_rss_mib());
        return;
    }
    let hidden: usize = args
        .iter()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(2048);
    let root = tempfile::tempdir().unwrap();
    let (src, dst) = (root.path().join("src"), root.path().join("dst"));
    write_model(&src, hidden);
    std::fs::create_dir_all(&dst).unwrap();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["child", src.to_str().unwrap(), dst.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let mut parts = text.split_whitespace();
    let seconds: f64 = parts.next().unwrap().parse().unwrap();
    let rss: f64 = parts.next().unwrap().parse().unwrap();
    let bytes = 2.0 * (NEW_ROWS * hidden * 2) as f64;
    println!(
        "resize pad {ROWS}->{NEW_ROWS} rows x {hidden} (embed + lm_head, bf16): {seconds:.2} s, \
         {:.0} MB/s written, peak RSS {rss:.0} MiB (tensors {:.0} MiB)",
        bytes / seconds / 1e6,
        bytes / (1 << 20) as f64
    );
}
