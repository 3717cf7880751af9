//! The eval step over fixture models: perplexity against a naive f64
//! reference forward pass, passkey retrieval, determinism and bad input.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Mutex;

use serde_json::Value as Json;
use yibuild::fixtures::{SplitMix, TinyLlama};
use yibuild::steps::{self, Artifact, Device, ParseContext, Step, StepContext};
use yibuild::syntax::diag::Diag;
use yibuild::syntax::yaml::parse_documents;
use yibuild::tensor::ModelTensors;

fn parse_eval(yaml: &str) -> Result<Box<dyn Step>, String> {
    let diag = Diag::new(Path::new("recipe.yaml"), yaml);
    let node = parse_documents(yaml).unwrap().remove(0);
    let cx = ParseContext {
        diag: &diag,
        step: "ppl",
        seed: None,
        device: Device::Auto,
    };
    steps::parse("eval", &node, &cx).map_err(|e| e.to_string())
}

struct Run {
    results: Json,
    parsed: yibuild::eval::results::EvalResults,
    log: Vec<String>,
}

fn run_eval(
    step: &dyn Step,
    inputs: &[(&str, &Path)],
    threads: usize,
    device: Device,
) -> anyhow::Result<Run> {
    let inputs: BTreeMap<String, Artifact> = inputs
        .iter()
        .map(|(n, p)| {
            (
                n.to_string(),
                Artifact {
                    path: p.to_path_buf(),
                    digest: format!("digest-of-{n}"),
                    ..Default::default()
                },
            )
        })
        .collect();
    let out = tempfile::tempdir()?;
    let log = Mutex::new(Vec::new());
    let logger = |l: &str| log.lock().unwrap().push(l.to_owned());
    let ctx = StepContext {
        name: "ppl",
        recipe_name: "test",
        inputs: &inputs,
        out_dir: out.path(),
        threads,
        mem_budget: 1 << 30,
        device,
        log: &logger,
    };
    step.run(&ctx)?;
    let path = out.path().join("results.json");
    Ok(Run {
        results: serde_json::from_str(&std::fs::read_to_string(&path)?)?,
        parsed: yibuild::eval::results::read_results(&path)?,
        log: log.into_inner().unwrap(),
    })
}

/// Deterministic English-like text.
fn write_text(path: &Path, words: usize) {
    let vocab = [
        "the", "cat", "sat", "on", "a", "mat", "and", "then", "it", "ran", "far", "away", "from",
        "green", "hills", "where", "birds", "sing", "every", "morning.",
    ];
    let mut rng = SplitMix(7);
    let text: Vec<&str> = (0..words)
        .map(|_| vocab[(rng.next_u64() % vocab.len() as u64) as usize])
        .collect();
    std::fs::write(path, text.join(" ")).unwrap();
}

/// A straightforward f64 Llama forward: full attention matrices, no blocking,
/// every weight read whole. Returns log-softmax rows for every position.
struct Reference {
    cfg: Json,
    w: HashMap<String, Vec<f64>>,
}

impl Reference {
    fn open(dir: &Path) -> Reference {
        let cfg: Json =
            serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap())
                .unwrap();
        let t = ModelTensors::open(dir).unwrap();
        let w = t
            .names()
            .iter()
            .map(|n| {
                let v = t.read_f32(n).unwrap().into_iter().map(f64::from).collect();
                (n.clone(), v)
            })
            .collect();
        Reference { cfg, w }
    }

    fn u(&self, k: &str) -> usize {
        self.cfg[k].as_u64().unwrap() as usize
    }

    fn linear(&self, x: &[f64], name: &str, out_dim: usize) -> Vec<f64> {
        let w = &self.w[name];
        let k = x.len();
        (0..out_dim)
            .map(|o| (0..k).map(|i| w[o * k + i] * x[i]).sum())
            .collect()
    }

    fn norm(&self, x: &[f64], name: &str) -> Vec<f64> {
        let eps = self.cfg["rms_norm_eps"].as_f64().unwrap();
        let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
        let s = 1.0 / (ms + eps).sqrt();
        x.iter()
            .zip(&self.w[name])
            .map(|(v, w)| v * s * w)
            .collect()
    }

    fn log_softmax_rows(&self, tokens: &[u32]) -> Vec<Vec<f64>> {
        let (h, nh, nkv, layers, ff, vocab) = (
            self.u("hidden_size"),
            self.u("num_attention_heads"),
            self.u("num_key_value_heads"),
            self.u("num_hidden_layers"),
            self.u("intermediate_size"),
            self.u("vocab_size"),
        );
        let hd = h / nh;
        let theta = self.cfg["rope_theta"].as_f64().unwrap();
        // Linear position interpolation, when configured.
        let factor = self.cfg["rope_scaling"]["factor"].as_f64().unwrap_or(1.0);
        let rope = |v: &mut [f64], pos: usize| {
            for head in v.chunks_mut(hd) {
                for i in 0..hd / 2 {
                    let a = pos as f64 / factor / theta.powf(2.0 * i as f64 / hd as f64);
                    let (x, y) = (head[i], head[i + hd / 2]);
                    head[i] = x * a.cos() - y * a.sin();
                    head[i + hd / 2] = y * a.cos() + x * a.sin();
                }
            }
        };
        let emb = &self.w["model.embed_tokens.weight"];
        let mut xs: Vec<Vec<f64>> = tokens
            .iter()
            .map(|&t| emb[t as usize * h..(t as usize + 1) * h].to_vec())
            .collect();
        for l in 0..layers {
            let p = format!("model.layers.{l}");
            let mut qs = Vec::new();
            let mut ks = Vec::new();
            let mut vs = Vec::new();
            for (pos, x) in xs.iter().enumerate() {
                let n = self.norm(x, &format!("{p}.input_layernorm.weight"));
                let mut q = self.linear(&n, &format!("{p}.self_attn.q_proj.weight"), nh * hd);
                let mut k = self.linear(&n, &format!("{p}.self_attn.k_proj.weight"), nkv * hd);
                rope(&mut q, pos);
                rope(&mut k, pos);
                qs.push(q);
                ks.push(k);
                vs.push(self.linear(&n, &format!("{p}.self_attn.v_proj.weight"), nkv * hd));
            }
            for i in 0..xs.len() {
                let mut attn = vec![0.0; nh * hd];
                for head in 0..nh {
                    let g = head / (nh / nkv);
                    let scores: Vec<f64> = (0..=i)
                        .map(|j| {
                            (0..hd)
                                .map(|d| qs[i][head * hd + d] * ks[j][g * hd + d])
                                .sum::<f64>()
                                / (hd as f64).sqrt()
                        })
                        .collect();
                    let m = scores.iter().cloned().fold(f64::MIN, f64::max);
                    let z: f64 = scores.iter().map(|s| (s - m).exp()).sum();
                    for (j, s) in scores.iter().enumerate() {
                        for d in 0..hd {
                            attn[head * hd + d] += (s - m).exp() / z * vs[j][g * hd + d];
                        }
                    }
                }
                let o = self.linear(&attn, &format!("{p}.self_attn.o_proj.weight"), h);
                xs[i].iter_mut().zip(o).for_each(|(x, o)| *x += o);
                let n = self.norm(&xs[i], &format!("{p}.post_attention_layernorm.weight"));
                let g = self.linear(&n, &format!("{p}.mlp.gate_proj.weight"), ff);
                let u = self.linear(&n, &format!("{p}.mlp.up_proj.weight"), ff);
                let a: Vec<f64> = g
                    .iter()
                    .zip(&u)
                    .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
                    .collect();
                let d = self.linear(&a, &format!("{p}.mlp.down_proj.weight"), h);
                xs[i].iter_mut().zip(d).for_each(|(x, d)| *x += d);
            }
        }
        let head = if self.w.contains_key("lm_head.weight") {
            "lm_head.weight"
        } else {
            "model.embed_tokens.weight"
        };
        xs.iter()
            .map(|x| {
                let logits = self.linear(&self.norm(x, "model.norm.weight"), head, vocab);
                let m = logits.iter().cloned().fold(f64::MIN, f64::max);
                let lse = m + logits.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
                logits.iter().map(|v| v - lse).collect()
            })
            .collect()
    }

    /// llama-perplexity: whole chunks, BOS over the first token, second half scored.
    fn llama_cpp_ppl(&self, tokens: &[u32], ctx: usize, bos: u32) -> (f64, usize) {
        let (mut nll, mut count) = (0.0, 0);
        for c in 0..tokens.len() / ctx {
            let mut w = tokens[c * ctx..(c + 1) * ctx].to_vec();
            w[0] = bos;
            let lp = self.log_softmax_rows(&w);
            for j in ctx / 2..ctx - 1 {
                nll -= lp[j][w[j + 1] as usize];
                count += 1;
            }
        }
        ((nll / count as f64).exp(), count)
    }

    /// The transformers guide's loop, with exact token counts.
    fn strided_ppl(&self, tokens: &[u32], ctx: usize, stride: usize) -> (f64, usize) {
        let (mut nll, mut count, mut prev_end) = (0.0, 0, 0);
        let mut begin = 0;
        loop {
            let end = (begin + ctx).min(tokens.len());
            let trg_len = end - prev_end;
            let input = &tokens[begin..end];
            let lp = self.log_softmax_rows(input);
            for label in (input.len() - trg_len).max(1)..input.len() {
                nll -= lp[label - 1][input[label] as usize];
                count += 1;
            }
            prev_end = end;
            if end == tokens.len() {
                break;
            }
            begin += stride;
        }
        ((nll / count as f64).exp(), count)
    }
}

fn encode(dir: &Path, text_file: &Path) -> Vec<u32> {
    let tok = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    let text = std::fs::read_to_string(text_file).unwrap();
    tok.encode(text, true).unwrap().get_ids().to_vec()
}

fn assert_rel(a: f64, b: f64, tol: f64, what: &str) {
    assert!(((a - b) / b).abs() < tol, "{what}: {a} vs reference {b}");
}

#[test]
fn cpu_perplexity_matches_naive_f64_reference_for_both_protocols() {
    let tmp = tempfile::tempdir().unwrap();
    let text = tmp.path().join("wiki.txt");
    write_text(&text, 90);
    let variants = [
        ("gqa-untied", 2, false, None),
        ("mha-tied", 4, true, None),
        ("gqa-tied-linear-rope", 1, true, Some(2.5)),
    ];
    for (name, kv_heads, tie, linear_rope) in variants {
        let dir = tmp.path().join(name);
        let fixture = TinyLlama {
            kv_heads,
            tie_embeddings: tie,
            seed: kv_heads as u64,
            ..Default::default()
        };
        fixture.write(&dir).unwrap();
        if let Some(factor) = linear_rope {
            let mut cfg = fixture.config();
            cfg["rope_scaling"] = serde_json::json!({"type": "linear", "factor": factor});
            std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
        }
        let reference = Reference::open(&dir);
        let tokens = encode(&dir, &text);
        assert!(tokens.len() > 130, "{} tokens", tokens.len());

        let step = parse_eval(
            "{model: m, device: cpu, perplexity: {text: wiki, context: 32, protocol: llama.cpp}}",
        )
        .unwrap();
        let run = run_eval(
            step.as_ref(),
            &[("m", &dir), ("wiki", &text)],
            2,
            Device::Auto,
        )
        .unwrap();
        let p = &run.results["perplexity"];
        let (want, count) = reference.llama_cpp_ppl(&tokens, 32, 1);
        assert_eq!(p["scored_tokens"], count);
        assert_eq!(p["bos_token_id"], 1);
        assert_eq!(p["tokens_in_text"], tokens.len());
        assert_rel(p["perplexity"].as_f64().unwrap(), want, 1e-4, name);

        let step = parse_eval(
            "{model: m, perplexity: {text: wiki, context: 40, stride: 16, protocol: strided}}",
        )
        .unwrap();
        let run = run_eval(
            step.as_ref(),
            &[("m", &dir), ("wiki", &text)],
            1,
            Device::Cpu,
        )
        .unwrap();
        let p = &run.results["perplexity"];
        let (want, count) = reference.strided_ppl(&tokens, 40, 16);
        assert_eq!(count, tokens.len() - 1);
        assert_eq!(p["scored_tokens"], count);
        assert_rel(p["perplexity"].as_f64().unwrap(), want, 1e-4, name);
    }
}

#[test]
fn results_are_identical_across_thread_counts_except_timing() {
    let tmp = tempfile::tempdir().unwrap();
    let text = tmp.path().join("wiki.txt");
    write_text(&text, 200);
    let dir = tmp.path().join("m");
    TinyLlama::default().write(&dir).unwrap();
    let step = parse_eval(
        "{model: m, device: cpu, perplexity: {text: wiki, context: 96}, passkey: {lengths: [300], trials: 2, seed: 3}}",
    )
    .unwrap();
    let mut a = run_eval(
        step.as_ref(),
        &[("m", &dir), ("wiki", &text)],
        1,
        Device::Cpu,
    )
    .unwrap();
    let mut b = run_eval(
        step.as_ref(),
        &[("m", &dir), ("wiki", &text)],
        3,
        Device::Cpu,
    )
    .unwrap();
    assert!(
        a.results["timing"]["perplexity_tokens_per_second"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    // The summary table printed after a build is rebuilt from results.json.
    let table = yibuild::eval::results::format_summary(std::slice::from_ref(&a.parsed));
    let ppl = a.parsed.perplexity.as_ref().unwrap().result.perplexity;
    assert!(table.contains(&format!("{ppl:.3}")), "{table}");
    a.results.as_object_mut().unwrap().remove("timing");
    b.results.as_object_mut().unwrap().remove("timing");
    assert_eq!(a.results, b.results);
    assert_eq!(a.results["device"], "cpu");
    assert_eq!(a.results["model"]["digest"], "digest-of-m");
    assert_eq!(a.results["model"]["storage"], "bfloat16");
    assert!(
        table.contains("| ppl wiki |") && table.contains("passkey@300"),
        "{table}"
    );
}

#[test]
fn passkey_scores_the_true_key_against_distractors() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    TinyLlama::default().write(&dir).unwrap();
    let step = parse_eval("{model: m, device: cpu, passkey: {lengths: [300, 450], trials: 3, seed: 11, distractors: 3}}").unwrap();
    let run = run_eval(step.as_ref(), &[("m", &dir)], 2, Device::Cpu).unwrap();
    let pk = &run.results["passkey"];
    assert_eq!(pk["candidates"], 4);
    let lengths = pk["lengths"].as_array().unwrap();
    assert_eq!(lengths.len(), 2);
    for (l, want) in lengths.iter().zip([300.0, 450.0]) {
        assert_eq!(l["length"].as_f64().unwrap(), want);
        assert_eq!(l["trials"], 3);
        let prompt = l["mean_prompt_tokens"].as_f64().unwrap();
        assert!(
            prompt <= want - 6.0 && prompt > want - 30.0,
            "{prompt} for {want}"
        );
        // Five digits, each at least one token, each with probability < 1.
        assert!(l["mean_key_log_prob"].as_f64().unwrap() < -1.0);
        let acc = l["accuracy"].as_f64().unwrap();
        assert_eq!(acc, l["correct"].as_f64().unwrap() / 3.0);
    }
}

#[test]
fn bad_input_gets_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let short = tmp.path().join("short.txt");
    write_text(&short, 20);
    let dir = tmp.path().join("m");
    TinyLlama {
        max_positions: 128,
        ..Default::default()
    }
    .write(&dir)
    .unwrap();

    let step =
        parse_eval("{model: m, device: cpu, perplexity: {text: wiki, context: 64}}").unwrap();
    let err = run_eval(
        step.as_ref(),
        &[("m", &dir), ("wiki", &short)],
        1,
        Device::Cpu,
    )
    .err()
    .unwrap();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("needs at least 2 × context = 128 tokens"),
        "{msg}"
    );

    let step =
        parse_eval("{model: m, device: cpu, perplexity: {text: wiki, context: 256}}").unwrap();
    let err = run_eval(
        step.as_ref(),
        &[("m", &dir), ("wiki", &short)],
        1,
        Device::Cpu,
    )
    .err()
    .unwrap();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("exceeds the model's max_position_embeddings (128)"),
        "{msg}"
    );
    assert!(msg.contains("allow_long_context: true"), "{msg}");
    let sources = BTreeMap::from([("m".to_owned(), dir.clone())]);
    assert!(step.preflight(&sources).is_err());

    let long = tmp.path().join("long.txt");
    write_text(&long, 400);
    let step = parse_eval(
        "{model: m, device: cpu, allow_long_context: true, perplexity: {text: wiki, context: 256, protocol: strided}}",
    )
    .unwrap();
    run_eval(
        step.as_ref(),
        &[("m", &dir), ("wiki", &long)],
        1,
        Device::Cpu,
    )
    .unwrap();

    let gpt2 = tmp.path().join("gpt2");
    TinyLlama {
        architecture: ("GPT2LMHeadModel", "gpt2"),
        ..Default::default()
    }
    .write(&gpt2)
    .unwrap();
    let step = parse_eval("{model: m, perplexity: {text: wiki}}").unwrap();
    let err = run_eval(
        step.as_ref(),
        &[("m", &gpt2), ("wiki", &long)],
        1,
        Device::Cpu,
    )
    .err()
    .unwrap();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("unsupported architecture `GPT2LMHeadModel`"),
        "{msg}"
    );

    let err = parse_eval("{model: m, perplexity: {text: wiki, protocol: hf}}").unwrap_err();
    assert!(err.contains("unknown perplexity protocol `hf`"), "{err}");
    let err = parse_eval("{model: m, perplexity: {text: wiki, stride: 4}}").unwrap_err();
    assert!(
        err.contains("`stride` applies to the `strided` protocol only"),
        "{err}"
    );
    let err = parse_eval("{model: m, perplexty: {text: wiki}}").unwrap_err();
    assert!(err.contains("did you mean `perplexity`"), "{err}");
    let err = parse_eval("{model: m}").unwrap_err();
    assert!(err.contains("measures nothing"), "{err}");
}

#[test]
fn device_auto_falls_back_to_cpu_and_cuda_without_gpu_is_an_error() {
    if yibuild::eval::cuda::probe().is_ok() {
        eprintln!("skipped: a GPU is present");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let text = tmp.path().join("wiki.txt");
    write_text(&text, 60);
    let dir = tmp.path().join("m");
    TinyLlama::default().write(&dir).unwrap();
    let step = parse_eval("{model: m, perplexity: {text: wiki, context: 16}}").unwrap();
    let run = run_eval(
        step.as_ref(),
        &[("m", &dir), ("wiki", &text)],
        1,
        Device::Auto,
    )
    .unwrap();
    let notes: Vec<&String> = run
        .log
        .iter()
        .filter(|l| l.contains("running on the CPU"))
        .collect();
    assert_eq!(notes.len(), 1, "{:?}", run.log);
    assert_eq!(run.results["device"], "cpu");

    let step =
        parse_eval("{model: m, device: cuda, perplexity: {text: wiki, context: 16}}").unwrap();
    let err = run_eval(
        step.as_ref(),
        &[("m", &dir), ("wiki", &text)],
        1,
        Device::Auto,
    )
    .err()
    .unwrap();
    assert!(
        err.to_string()
            .contains("device `cuda` requested but no GPU is usable"),
        "{err}"
    );
}

#[test]
fn branches_score_like_separate_windows() {
    use yibuild::eval::model::{ModelConfig, WeightSource};
    use yibuild::eval::{cpu::CpuModel, Backend, Batch};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    TinyLlama::default().write(&dir).unwrap();
    let cfg = ModelConfig::from_dir(&dir).unwrap();
    let tensors = ModelTensors::open(&dir).unwrap();
    let weights: &dyn WeightSource = &tensors;
    let model = CpuModel::new(cfg, weights, 2).unwrap();
    let trunk: Vec<u32> = (0..150).map(|i| (i * 7 % 300) as u32 + 3).collect();
    let continuations = [vec![10u32, 11, 12], vec![40, 41], vec![77, 78, 79, 80]];
    let branches: Vec<Vec<u32>> = continuations
        .iter()
        .map(|c| c[..c.len() - 1].to_vec())
        .collect();
    let batch = Batch::with_branches(trunk.clone(), branches);
    let mut targets = Vec::new();
    for (b, c) in continuations.iter().enumerate() {
        targets.push((trunk.len() - 1, c[0]));
        for (j, &token) in c.iter().enumerate().skip(1) {
            targets.push((batch.branch_row(b, j - 1), token));
        }
    }
    let together = model.log_probs(&batch, &targets).unwrap();
    let mut at = 0;
    for c in &continuations {
        let mut window = trunk.clone();
        window.extend_from_slice(&c[..c.len() - 1]);
        let t: Vec<(usize, u32)> = (0..c.len()).map(|j| (trunk.len() - 1 + j, c[j])).collect();
        let alone = model.log_probs(&Batch::window(window), &t).unwrap();
        for (a, b) in alone.iter().zip(&together[at..at + c.len()]) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        at += c.len();
    }
}

#[test]
fn cuda_matches_cpu_on_a_fixture_when_a_gpu_is_present() {
    use yibuild::eval::model::{check_weights, ModelConfig, WeightSource};
    use yibuild::eval::{cpu::CpuModel, cuda, Backend, Batch};
    if let Err(why) = cuda::probe() {
        eprintln!("skipped: no usable GPU ({why})");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    TinyLlama {
        hidden: 256,
        heads: 4,
        kv_heads: 2,
        intermediate: 512,
        ..Default::default()
    }
    .write(&dir)
    .unwrap();
    let cfg = ModelConfig::from_dir(&dir).unwrap();
    let tensors = ModelTensors::open(&dir).unwrap();
    let weights: &dyn WeightSource = &tensors;
    check_weights(&cfg, weights).unwrap();
    let cpu = CpuModel::new(cfg.clone(), weights, 2).unwrap();
    let gpu = cuda::CudaModel::new(cfg, weights).unwrap();
    let trunk: Vec<u32> = (0..300).map(|i| (i * 13 % 310) as u32 + 3).collect();
    let batch = Batch::with_branches(trunk, vec![vec![5, 6], vec![7]]);
    let targets: Vec<(usize, u32)> = (0..batch.rows())
        .map(|r| (r, (r * 7 % 300) as u32))
        .collect();
    let a = cpu.log_probs(&batch, &targets).unwrap();
    let b = gpu.log_probs(&batch, &targets).unwrap();
    let mean_a = a.iter().sum::<f64>() / a.len() as f64;
    let mean_b = b.iter().sum::<f64>() / b.len() as f64;
    // bf16 activations on the GPU: per-token differences of a few hundredths,
    // mean log-probability within 1%.
    assert!(
        ((mean_a - mean_b) / mean_a).abs() < 0.01,
        "{mean_a} vs {mean_b}"
    );
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() < 0.1, "{x} vs {y}");
    }
}

fn write_gguf(model: &Path, out: &Path, preset: yibuild::gguf::mixture::Preset) {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    yibuild::gguf::pipeline::Conversion::open(model, "m")
        .unwrap()
        .write(out, preset, None, &pool, &|_| {})
        .unwrap();
}

#[test]
fn gguf_input_matches_its_source_model() {
    use yibuild::gguf::mixture::Preset;
    let tmp = tempfile::tempdir().unwrap();
    let text = tmp.path().join("wiki.txt");
    write_text(&text, 150);
    let step =
        parse_eval("{model: q, tokenizer: m, device: cpu, perplexity: {text: wiki, context: 48}}")
            .unwrap();
    let bf16 =
        parse_eval("{model: m, device: cpu, perplexity: {text: wiki, context: 48}}").unwrap();
    for (tie, preset, tolerance) in [(false, Preset::F32, 1e-9), (true, Preset::Q8_0, 0.01)] {
        let dir = tmp.path().join(format!("m-{tie}"));
        TinyLlama {
            tie_embeddings: tie,
            ..Default::default()
        }
        .write(&dir)
        .unwrap();
        let quant_dir = tmp.path().join(format!("q-{tie}"));
        std::fs::create_dir(&quant_dir).unwrap();
        write_gguf(&dir, &quant_dir.join("m.gguf"), preset);
        let inputs = [("m", dir.as_path()), ("wiki", text.as_path())];
        let want = run_eval(bf16.as_ref(), &inputs, 2, Device::Cpu)
            .unwrap()
            .results;
        let inputs = [
            ("q", quant_dir.as_path()),
            ("m", dir.as_path()),
            ("wiki", text.as_path()),
        ];
        let got = run_eval(step.as_ref(), &inputs, 2, Device::Cpu)
            .unwrap()
            .results;
        assert_eq!(got["model"]["format"], "gguf");
        let (a, b) = (
            got["perplexity"]["perplexity"].as_f64().unwrap(),
            want["perplexity"]["perplexity"].as_f64().unwrap(),
        );
        assert_eq!(
            got["perplexity"]["scored_tokens"],
            want["perplexity"]["scored_tokens"]
        );
        assert_rel(a, b, tolerance, &format!("{preset:?} vs bf16"));
        if preset == Preset::Q8_0 {
            assert!(a != b, "Q8_0 should differ from bf16 at all");
            assert!(got["model"]["storage"].as_str().unwrap().contains("Q8_0"));
        }
    }
    let err = run_eval(
        parse_eval("{model: q, device: cpu, perplexity: {text: wiki, context: 48}}")
            .unwrap()
            .as_ref(),
        &[("q", &tmp.path().join("q-true")), ("wiki", &text)],
        1,
        Device::Cpu,
    )
    .err()
    .unwrap();
    assert!(
        format!("{err:#}").contains("give the eval step `tokenizer:"),
        "{err:#}"
    );
}

/// Perplexity (HF folder and its F32 GGUF) and the GGUF's `llama.*` metadata
/// of a fixture written in `layout`.
struct LayoutRun {
    ppl: f64,
    gguf_ppl: f64,
    metadata: Vec<(String, yibuild::gguf::file::Value)>,
}

fn run_layout(
    root: &Path,
    text: &Path,
    fixture: &TinyLlama,
    name: &str,
) -> anyhow::Result<LayoutRun> {
    use yibuild::gguf::file::GgufFile;
    use yibuild::gguf::mixture::Preset;
    let dir = root.join(name);
    fixture.write(&dir)?;
    let quant = root.join(format!("{name}-gguf"));
    std::fs::create_dir(&quant)?;
    write_gguf(&dir, &quant.join("m.gguf"), Preset::F32);
    let hf = parse_eval("{model: m, device: cpu, perplexity: {text: wiki, context: 64}}").unwrap();
    let q =
        parse_eval("{model: q, tokenizer: m, device: cpu, perplexity: {text: wiki, context: 64}}")
            .unwrap();
    let ppl = |r: Run| r.parsed.perplexity.unwrap().result.perplexity;
    let inputs = [("m", dir.as_path()), ("q", quant.as_path()), ("wiki", text)];
    let file = GgufFile::open(&quant.join("m.gguf"))?;
    let metadata = file
        .metadata
        .iter()
        .filter(|(k, _)| k.starts_with("llama."))
        .cloned()
        .collect();
    Ok(LayoutRun {
        ppl: ppl(run_eval(hf.as_ref(), &inputs, 2, Device::Cpu)?),
        gguf_ppl: ppl(run_eval(q.as_ref(), &inputs, 2, Device::Cpu)?),
        metadata,
    })
}

#[test]
fn transformers_4_and_5_configs_give_the_same_forward_pass_and_gguf() {
    use yibuild::gguf::file::Value;
    use yibuild::hf::Layout;
    let tmp = tempfile::tempdir().unwrap();
    let text = tmp.path().join("wiki.txt");
    write_text(&text, 160);
    let yarn = serde_json::json!({"rope_type": "yarn", "factor": 4.0,
        "original_max_position_embeddings": 512, "beta_fast": 16.0});
    for (case, scaling) in [("plain", None), ("yarn", Some(yarn))] {
        let fixture = |layout| TinyLlama {
            rope_theta: 5e6,
            rope_scaling: scaling.clone(),
            layout,
            ..Default::default()
        };
        let v4 = run_layout(
            tmp.path(),
            &text,
            &fixture(Layout::Transformers4),
            &format!("{case}-4"),
        )
        .unwrap();
        let v5 = run_layout(
            tmp.path(),
            &text,
            &fixture(Layout::Transformers5),
            &format!("{case}-5"),
        )
        .unwrap();
        // Same weights, same meaning: the numbers are identical, and the GGUF
        // evaluates like its source.
        assert_eq!(v4.ppl, v5.ppl, "{case}");
        assert_rel(v4.gguf_ppl, v4.ppl, 1e-9, case);
        assert_rel(v5.gguf_ppl, v5.ppl, 1e-9, case);
        assert_eq!(v4.metadata, v5.metadata, "{case}");
        let meta = |k: &str| {
            v5.metadata
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| panic!("{case}: no {k}"))
        };
        assert_eq!(meta("llama.rope.freq_base"), Value::F32(5e6));
        assert_eq!(meta("llama.context_length"), Value::U32(2048));
        assert_eq!(meta("llama.attention.key_length"), Value::U32(16));
        assert_eq!(
            meta("llama.attention.layer_norm_rms_epsilon"),
            Value::F32(1e-5)
        );
        if case == "yarn" {
            assert_eq!(
                meta("llama.rope.scaling.type"),
                Value::String("yarn".into())
            );
            assert_eq!(meta("llama.rope.scaling.factor"), Value::F32(4.0));
            assert_eq!(
                meta("llama.rope.scaling.original_context_length"),
                Value::U32(512)
            );
            assert_eq!(meta("llama.rope.scaling.yarn_beta_fast"), Value::F32(16.0));
            assert!(!v5
                .metadata
                .iter()
                .any(|(k, _)| k == "llama.rope.scaling.yarn_beta_slow"));
        } else {
            assert!(!v5.metadata.iter().any(|(k, _)| k.contains("scaling")));
        }
    }
    // The base matters: the same weights with transformers' default base
    // measure differently, so the layouts above agree on 5e6, not by accident.
    let default_theta = run_layout(tmp.path(), &text, &TinyLlama::default(), "theta-1e4").unwrap();
    let v5 = run_layout(
        tmp.path(),
        &text,
        &TinyLlama {
            rope_theta: 5e6,
            layout: Layout::Transformers5,
            ..Default::default()
        },
        "theta-5e6",
    )
    .unwrap();
    assert!(
        (default_theta.ppl - v5.ppl).abs() > 1e-6 * v5.ppl,
        "{} vs {}",
        default_theta.ppl,
        v5.ppl
    );
}

#[test]
fn a_non_finite_perplexity_fails_the_step_and_stores_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let text = tmp.path().join("wiki.txt");
    write_text(&text, 60);
    let dir = tmp.path().join("m");
    let fixture = TinyLlama::default();
    let mut tensors = fixture.tensor_values();
    for (name, _, values) in &mut tensors {
        if name == "model.norm.weight" {
            values[3] = f32::NAN;
        }
    }
    yibuild::fixtures::write_model_files(&dir, &fixture.config(), &tensors, fixture.dtype, 1)
        .unwrap();
    yibuild::fixtures::write_byte_level_tokenizer(&dir, fixture.tokenizer_vocab).unwrap();
    let step =
        parse_eval("{model: m, device: cpu, perplexity: {text: wiki, context: 16}}").unwrap();
    let inputs: BTreeMap<String, Artifact> = [("m", &dir), ("wiki", &text)]
        .iter()
        .map(|(n, p)| {
            let artifact = Artifact {
                path: p.to_path_buf(),
                digest: "0".into(),
                ..Default::default()
            };
            (n.to_string(), artifact)
        })
        .collect();
    let out = tempfile::tempdir().unwrap();
    let ctx = StepContext {
        name: "ppl",
        recipe_name: "test",
        inputs: &inputs,
        out_dir: out.path(),
        threads: 1,
        mem_budget: 1 << 30,
        device: Device::Cpu,
        log: &|_| {},
    };
    let err = format!("{:#}", step.run(&ctx).unwrap_err());
    assert!(
        err.contains("the perplexity on `wiki` of `m` is NaN") && err.contains("nothing is stored"),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0);
}

/// Writes the F32 GGUF of the default fixture with `key` set to `value`.
fn gguf_with(root: &Path, key: &str, value: u32) -> std::path::PathBuf {
    use yibuild::gguf::file::Value;
    use yibuild::gguf::mixture::Preset;
    let dir = root.join("m");
    if !dir.exists() {
        TinyLlama::default().write(&dir).unwrap();
    }
    let mut conv = yibuild::gguf::pipeline::Conversion::open(&dir, "m").unwrap();
    let entry = conv.metadata.iter_mut().find(|(k, _)| k == key).unwrap();
    entry.1 = Value::U32(value);
    let path = root.join(format!("{key}-{value}.gguf"));
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    conv.write(&path, Preset::F32, None, &pool, &|_| {})
        .unwrap();
    path
}

#[test]
fn impossible_gguf_shapes_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let text = tmp.path().join("wiki.txt");
    write_text(&text, 60);
    let step =
        parse_eval("{model: q, tokenizer: m, device: cpu, perplexity: {text: wiki, context: 16}}")
            .unwrap();
    for (key, value, want) in [
        (
            "llama.block_count",
            0,
            "metadata `llama.block_count` is 0; it must be at least 1",
        ),
        (
            "llama.attention.head_count",
            0,
            "metadata `llama.attention.head_count` is 0",
        ),
        (
            "llama.attention.head_count_kv",
            0,
            "metadata `llama.attention.head_count_kv` is 0",
        ),
        (
            "llama.attention.head_count_kv",
            3,
            "(4) is not a multiple of `llama.attention.head_count_kv` (3)",
        ),
        (
            "llama.block_count",
            1_000_000_000,
            "`llama.block_count` is 1000000000 but the file holds 2 blocks",
        ),
    ] {
        let gguf = gguf_with(tmp.path(), key, value);
        let inputs = [
            ("q", gguf.as_path()),
            ("m", &tmp.path().join("m")),
            ("wiki", &text),
        ];
        let err = format!(
            "{:#}",
            run_eval(step.as_ref(), &inputs, 1, Device::Cpu)
                .err()
                .unwrap()
        );
        assert!(err.contains(want), "{key}={value}: {err}");
    }
}

#[test]
fn absurd_layer_counts_fail_before_anything_is_allocated() {
    let tmp = tempfile::tempdir().unwrap();
    let text = tmp.path().join("wiki.txt");
    write_text(&text, 60);
    let dir = tmp.path().join("m");
    TinyLlama::default().write(&dir).unwrap();
    let config_path = dir.join("config.json");
    let original: Json =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    let step =
        parse_eval("{model: m, device: cpu, perplexity: {text: wiki, context: 16}}").unwrap();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    for (layers, eval_err, gguf_err) in [
        (
            serde_json::json!(1_000_000_000u64),
            "the config declares 1000000000 layers but the weights hold 2",
            "config.json declares 1000000000 layers; expected token_embd and 1000000000 attn_v (or attn_qkv) tensors, found 2",
        ),
        (
            serde_json::json!(100_000_000_000u64),
            "`num_hidden_layers` is 100000000000, more than any model can have",
            "`num_hidden_layers` is 100000000000, more than any model can have",
        ),
        (
            serde_json::json!(1),
            "the config declares 1 layers but the weights hold more",
            "names layer `1` but config.json declares 1 layers",
        ),
    ] {
        let mut config = original.clone();
        config["num_hidden_layers"] = layers.clone();
        std::fs::write(&config_path, config.to_string()).unwrap();
        let started = std::time::Instant::now();
        let inputs = [("m", dir.as_path()), ("wiki", text.as_path())];
        let err = format!("{:#}", run_eval(step.as_ref(), &inputs, 1, Device::Cpu).err().unwrap());
        assert!(err.contains(eval_err), "{layers}: {err}");
        let err = yibuild::gguf::pipeline::Conversion::open(&dir, "m")
            .and_then(|c| c.write(&tmp.path().join("x.gguf"), yibuild::gguf::mixture::Preset::F32, None, &pool, &|_| {}))
            .err()
            .unwrap();
        assert!(format!("{err:#}").contains(gguf_err), "{layers}: {err:#}");
        assert!(started.elapsed().as_secs() < 5, "{layers}: took {:?}", started.elapsed());
    }
}
