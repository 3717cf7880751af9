//! One recipe per architecture, over the transformers-5-layout fixtures of
//! `yibuild::fixtures::arch`: a base and a fine-tune merged with ties and
//! slerp, the config patched, the tokenizer swapped, Q8_0 and Q4_K_M GGUF
//! quantizations, perplexity of every model, and a packaged release.

mod common;

use std::path::{Path, PathBuf};

use common::Project;
use yibuild::eval::results::read_results;
use yibuild::fixtures::SplitMix;
use yibuild::fixtures::{write_fixture_pair, Architecture};
use yibuild::gguf::file::GgufFile;
use yibuild::tensor::ModelTensors;

/// The recipe of every architecture test: `ARCH` is the fixture name.
const RECIPE: &str = r#"yibuild: 1
name: ARCH-e2e
card:
  license: apache-2.0
  language: [en]
sources:
  base: ./models/ARCH-base
  ft: ./models/ARCH-ft
  text: ./data/text.txt
steps:
  ties:
    merge:
      merge_method: ties
      base_model: base
      models:
        - model: base
        - model: ft
          parameters: {weight: 0.7, density: 0.6}
      dtype: bfloat16
  slerp:
    merge:
      merge_method: slerp
      base_model: base
      models:
        - model: base
        - model: ft
      parameters: {t: 0.4}
      dtype: bfloat16
  patched:
    patch_config:
      model: ties
      set: {max_position_embeddings: 8192}
  final:
    tokenizer:
      model: patched
      from: ft
  q8:
    quantize: {model: final, format: gguf, type: Q8_0}
  q4km:
    quantize: {model: final, format: gguf, type: Q4_K_M}
  ppl-base:
    eval: {model: base, perplexity: {text: text, context: 64}}
  ppl-slerp:
    eval: {model: slerp, tokenizer: base, perplexity: {text: text, context: 64}}
  ppl-final:
    eval: {model: final, perplexity: {text: text, context: 64}}
  ppl-q8:
    eval: {model: q8, tokenizer: final, perplexity: {text: text, context: 64}}
  ppl-q4km:
    eval: {model: q4km, tokenizer: final, perplexity: {text: text, context: 64}}
  release:
    package:
      model: final
      quantized: [q8, q4km]
      evals: [ppl-base, ppl-final, ppl-q8, ppl-q4km]
default: [release, ppl-slerp]
"#;

/// Plain words the fixtures' tokenizers split into a few hundred tokens.
fn text() -> String {
    let words = [
        "the", "cat", "sat", "on", "a", "mat", "and", "ran", "far", "away.", "Then", "it", "slept",
        "under", "warm", "sun",
    ];
    let mut rng = SplitMix(5);
    (0..400)
        .map(|_| words[(rng.next_u64() % words.len() as u64) as usize])
        .collect::<Vec<_>>()
        .join(" ")
}

fn perplexity(p: &Project, name: &str, step: &str) -> f64 {
    let results = p.path(&format!("build/{name}-e2e/{step}/results.json"));
    let r = read_results(&results).unwrap_or_else(|e| panic!("{step}: {e:#}"));
    r.perplexity.unwrap().result.perplexity
}

/// The one `.gguf` file of a quantize step's output folder.
fn gguf_in(dir: &Path) -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "gguf"))
        .collect();
    assert_eq!(found.len(), 1, "{}: {found:?}", dir.display());
    found.pop().unwrap()
}

/// llama.cpp's `general.architecture` for each fixture.
fn gguf_arch(arch: Architecture) -> &'static str {
    match arch {
        Architecture::Llama | Architecture::Mistral => "llama",
        Architecture::Qwen2 => "qwen2",
        Architecture::Qwen3 => "qwen3",
        Architecture::Gemma2 => "gemma2",
        Architecture::Gemma3 => "gemma3",
        Architecture::Phi3 => "phi3",
    }
}

fn build_architecture(arch: Architecture) {
    let p = Project::new();
    let name = arch.name();
    write_fixture_pair(arch, 17, &p.path("models")).unwrap();
    p.write("data/text.txt", &text());
    p.write("recipe.yaml", &RECIPE.replace("ARCH", name));
    let (code, _, stderr) = p.build_json(&["recipe.yaml"]);
    assert_eq!(code, 0, "{name}: {stderr}");
    let out = |step: &str| p.path(&format!("build/{name}-e2e/{step}"));

    // The merged model keeps the architecture's layout: a tied model has no
    // separate output head, an untied one keeps it.
    let merged = ModelTensors::open(&out("final")).unwrap();
    assert_eq!(
        merged.info("lm_head.weight").is_some(),
        !arch.tied(),
        "{name}: lm_head.weight"
    );
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out("final").join("config.json")).unwrap()).unwrap();
    assert_eq!(config["architectures"][0], arch.hf_class(), "{name}");
    assert_eq!(config["max_position_embeddings"], 8192, "{name}");

    // Both quantizations are GGUF files of llama.cpp's architecture with the
    // requested file type (llama_ftype: Q8_0 = 7, Q4_K_M = 15).
    for (step, ftype) in [("q8", 7), ("q4km", 15)] {
        let file = GgufFile::open(&gguf_in(&out(step))).unwrap();
        let got = file.get("general.architecture").and_then(|v| v.as_str());
        assert_eq!(got, Some(gguf_arch(arch)), "{name} {step}");
        let got = file.get("general.file_type").and_then(|v| v.as_u64());
        assert_eq!(got, Some(ftype), "{name} {step}");
    }

    // Perplexities: finite; the quantizations stay close to the model they
    // quantize; the merge moved away from the base.
    let ppl = |step| perplexity(&p, name, step);
    let (base, slerp, merged, q8, q4) = (
        ppl("ppl-base"),
        ppl("ppl-slerp"),
        ppl("ppl-final"),
        ppl("ppl-q8"),
        ppl("ppl-q4km"),
    );
    for (what, v) in [
        ("base", base),
        ("slerp", slerp),
        ("final", merged),
        ("q8", q8),
        ("q4", q4),
    ] {
        assert!(v.is_finite() && v > 1.0, "{name} {what}: {v}");
    }
    let rel = |a: f64, b: f64| (a - b).abs() / b;
    // (Random 64-wide weights: Q8_0 moves these perplexities by up to 1 %,
    // Q4_K_M by up to 6 %. These bounds catch a broken pipeline; layouts are
    // checked exactly by tests/gguf_arch.rs and tests/eval_arch.rs.)
    assert!(rel(q8, merged) < 0.02, "{name}: Q8_0 {q8} vs {merged}");
    assert!(rel(q4, merged) < 0.10, "{name}: Q4_K_M {q4} vs {merged}");
    assert_ne!(base, merged, "{name}: the merge changed nothing");

    // The release: weights, tokenizer, both quantizations and a card naming
    // the architecture.
    let release = out("release");
    let card = std::fs::read_to_string(release.join("README.md")).unwrap();
    assert!(card.contains(arch.hf_class()), "{name}: card\n{card}");
    for f in ["config.json", "SHA256SUMS"] {
        assert!(release.join(f).is_file(), "{name}: {f}");
    }
    let ggufs = std::fs::read_dir(&release)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "gguf")
        })
        .count();
    assert_eq!(ggufs, 2, "{name}: release GGUF files");
}

macro_rules! architecture_tests {
    ($($test:ident => $arch:ident,)*) => {$(
        #[test]
        fn $test() {
            build_architecture(Architecture::$arch);
        }
    )*};
}

architecture_tests! {
    llama_recipe_builds_end_to_end => Llama,
    mistral_recipe_builds_end_to_end => Mistral,
    qwen2_recipe_builds_end_to_end => Qwen2,
    qwen3_recipe_builds_end_to_end => Qwen3,
    gemma2_recipe_builds_end_to_end => Gemma2,
    gemma3_recipe_builds_end_to_end => Gemma3,
    phi3_recipe_builds_end_to_end => Phi3,
}
