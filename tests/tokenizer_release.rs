//! The tokenizer step through the binary: an incompatible swap is an error
//! unless allowed, its warnings show without `-v`, and a release with
//! `extra_eos` is what transformers 5 loads and generates with.

mod common;

use std::process::Command;

use common::{events, Project};
use serde_json::{json, Value as Json};
use yibuild::fixtures::{SpmTokenizer, TinyLlama};

fn read_json(p: &Project, rel: &str) -> Json {
    serde_json::from_slice(&std::fs::read(p.path(rel)).unwrap()).unwrap()
}

/// A SentencePiece-tokenized model `models/spm` and a byte-level BPE donor
/// `models/bpe` whose ids differ for most shared tokens.
fn mismatched() -> Project {
    let p = Project::new();
    TinyLlama::default().write(&p.path("models/spm")).unwrap();
    SpmTokenizer::default()
        .write(&p.path("models/spm"))
        .unwrap();
    TinyLlama::default().write(&p.path("models/bpe")).unwrap();
    p
}

fn swap_recipe(allow: bool) -> String {
    let allow = if allow {
        "\n      allow_vocab_mismatch: true"
    } else {
        ""
    };
    format!(
        "yibuild: 1\nname: t\nsources:\n  spm: ./models/spm\n  bpe: ./models/bpe\nsteps:\n  tok:\n    tokenizer:\n      model: spm\n      from: bpe{allow}\n"
    )
}

const DRIFT: &str =
    "38 of the 41 tokens the tokenizers of `spm` and `bpe` share have different ids";

#[test]
fn a_vocabulary_mismatch_fails_unless_allowed_and_its_warning_shows() {
    let p = mismatched();
    p.write("recipe.yaml", &swap_recipe(false));
    let out = p.run(&["recipe.yaml"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(DRIFT), "{err}");
    assert!(
        err.contains("\"a\" 300→100"),
        "the first tokens are named: {err}"
    );
    assert!(err.contains("allow_vocab_mismatch: true"), "{err}");
    assert!(!p.path("build/t/tok").exists());

    p.write("recipe.yaml", &swap_recipe(true));
    let out = p.run(&["recipe.yaml"]);
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{all}");
    assert!(
        all.contains(&format!("warning: tok: {DRIFT}")),
        "shown without -v:\n{all}"
    );

    // In --json, the same warning is a `warning` event of the step.
    let out = p.run(&[
        "--json",
        "--cache-dir",
        "cache2",
        "--build-dir",
        "build2",
        "recipe.yaml",
    ]);
    assert!(out.status.success());
    let warning = events(&out)
        .into_iter()
        .find(|e| e["event"] == "warning")
        .expect("a warning event");
    assert_eq!(warning["step"], "tok");
    assert!(
        warning["message"].as_str().unwrap().starts_with(DRIFT),
        "{warning}"
    );
}

const RELEASE: &str = "yibuild: 1
name: t
sources:
  base: ./models/base
steps:
  short:
    patch_config: {model: base, set: {max_position_embeddings: 1024}}
  tok:
    tokenizer:
      model: short
      chat_template: chatml
      extra_eos: [th, \"<|im_end|>\"]
  release:
    package: {model: tok}
";

/// The interpreter to try transformers with: `YIBUILD_TEST_PYTHON`, else `python3`.
fn python() -> String {
    std::env::var("YIBUILD_TEST_PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

#[test]
fn a_release_with_extra_eos_is_what_transformers_reads() {
    let p = Project::with_base();
    p.write("recipe.yaml", RELEASE);
    let out = p.run(&["recipe.yaml"]);
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{all}");
    assert!(
        all.contains("warning: tok: extra_eos `<|im_end|>` is not a single token"),
        "{all}"
    );

    // What transformers 5 requires of the files.
    let tokenizer: Json = read_json(&p, "build/t/release/tokenizer.json");
    let th = tokenizer["model"]["vocab"]["th"].as_u64().unwrap();
    let generation = read_json(&p, "build/t/release/generation_config.json");
    assert!(
        generation.get("stop_strings").is_none(),
        "generate() without a tokenizer raises on stop_strings: {generation}"
    );
    assert_eq!(generation["eos_token_id"], json!([2, th]));
    assert_eq!(generation["bos_token_id"], 1);
    assert_eq!(
        read_json(&p, "build/t/release/stop_strings.json"),
        json!({"stop_strings": ["th", "<|im_end|>"]})
    );
    let config = read_json(&p, "build/t/release/config.json");
    let tok_config = read_json(&p, "build/t/release/tokenizer_config.json");
    assert_eq!(config["max_position_embeddings"], 1024);
    assert_eq!(tok_config["model_max_length"], 1024);
    let card = std::fs::read_to_string(p.path("build/t/release/README.md")).unwrap();
    assert!(
        card.contains("<|im_end|>"),
        "the card lists the stop strings:\n{card}"
    );

    let python = python();
    let probe = Command::new(&python)
        .args(["-c", "import transformers, torch"])
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        println!("skipped the pipeline check: `{python} -c 'import transformers, torch'` fails");
        return;
    }
    let script = "import sys, transformers\n\
        pipe = transformers.pipeline('text-generation', model=sys.argv[1], device='cpu')\n\
        out = pipe('the cat sat', max_new_tokens=4, do_sample=False)\n\
        print(transformers.__version__, repr(out[0]['generated_text']))\n\
        model = transformers.AutoModelForCausalLM.from_pretrained(sys.argv[1])\n\
        ids = transformers.AutoTokenizer.from_pretrained(sys.argv[1])('the cat', return_tensors='pt').input_ids\n\
        print(model.generate(ids, max_new_tokens=3).shape)\n";
    let run = Command::new(&python)
        .args(["-c", script])
        .arg(p.path("build/t/release"))
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    println!("{}", String::from_utf8_lossy(&run.stdout));
}

#[test]
fn a_patched_context_length_caps_model_max_length_without_a_tokenizer_step() {
    let p = Project::with_base();
    // The fixture's tokenizer_config.json says model_max_length 2048.
    p.write(
        "recipe.yaml",
        "yibuild: 1\nname: t\nsources:\n  base: ./models/base\nsteps:\n  short:\n    patch_config:\n      model: base\n      set: {max_position_embeddings: 1024.0}\n  long:\n    patch_config:\n      model: base\n      set: {max_position_embeddings: 4096}\n",
    );
    let out = p.run(&["recipe.yaml", "short", "long"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let short = read_json(&p, "build/t/short/tokenizer_config.json");
    assert_eq!(short["model_max_length"], 1024);
    // Written as the integer the file had, whatever the recipe's spelling.
    let config = std::fs::read_to_string(p.path("build/t/short/config.json")).unwrap();
    assert!(
        config.contains("\"max_position_embeddings\": 1024,"),
        "{config}"
    );
    let long = read_json(&p, "build/t/long/tokenizer_config.json");
    assert_eq!(
        long["model_max_length"], 2048,
        "a longer context leaves it alone"
    );
    let source = read_json(&p, "models/base/tokenizer_config.json");
    assert_eq!(source["model_max_length"], 2048, "the source is untouched");
}
