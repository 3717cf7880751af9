//! The package step: release folder, card front matter, checksums and
//! byte-reproducible archives.

mod common;

use common::{tree_bytes, Project};
use serde_json::{json, Value as Json};
use yibuild::eval::results::read_results;
use yibuild::fixtures::{write_finetune, SplitMix, TinyLlama};
use yibuild::syntax::yaml::parse_documents;

const RECIPE: &str = r#"
yibuild: 1
name: tiny-release
card:
  license: other
  license_name: yi-license
  license_link: https://huggingface.co/01-ai/Yi-34B/blob/main/LICENSE
  language: [en]
  notes: "Use `</s>` as an extra stop string."
sources:
  base: ./models/base
steps:
  patched:
    patch_config: {model: base, set: {max_position_embeddings: 4096}}
  release:
    package: {model: patched, archive: tar}
"#;

fn front_matter(readme: &str) -> &str {
    let rest = readme.strip_prefix("---\n").expect("front matter first");
    &rest[..rest.find("\n---\n").expect("front matter closed")]
}

#[test]
fn release_is_reproducible_across_caches_and_jobs() {
    let a = Project::with_base();
    a.write("recipe.yaml", RECIPE);
    let b = Project::with_base();
    b.write("recipe.yaml", RECIPE);
    assert_eq!(a.build_json(&["-j1", "--threads", "1", "recipe.yaml"]).0, 0);
    assert_eq!(b.build_json(&["-j2", "--threads", "2", "recipe.yaml"]).0, 0);
    let (ra, rb) = (
        a.path("build/tiny-release/release"),
        b.path("build/tiny-release/release"),
    );
    assert_eq!(tree_bytes(&ra), tree_bytes(&rb));
    let sums = std::fs::read_to_string(ra.join("SHA256SUMS")).unwrap();
    for f in [
        "README.md",
        "build-report.json",
        "config.json",
        "model.safetensors",
        "tokenizer.json",
    ] {
        assert!(
            sums.lines()
                .any(|l| l.ends_with(&format!("  {f}")) && l.len() == 64 + 2 + f.len()),
            "{f} in {sums}"
        );
    }
    let tar = std::fs::read(ra.join("tiny-release.tar")).unwrap();
    assert_eq!(&tar[257..262], b"ustar", "a real tar archive");
}

#[test]
fn card_front_matter_for_local_sources() {
    let p = Project::with_base();
    p.write("recipe.yaml", RECIPE);
    assert_eq!(p.build_json(&["recipe.yaml"]).0, 0);
    let readme = std::fs::read_to_string(p.path("build/tiny-release/release/README.md")).unwrap();
    let fm = front_matter(&readme);
    assert!(fm.contains("license: other\n"), "{fm}");
    assert!(fm.contains("license_name: yi-license\n"), "{fm}");
    assert!(
        fm.contains("license_link: \"https://huggingface.co/01-ai/Yi-34B/blob/main/LICENSE\"\n"),
        "{fm}"
    );
    assert!(fm.contains("language:\n- en\n"), "{fm}");
    assert!(
        !fm.contains("base_model"),
        "no empty base_model for local-only recipes: {fm}"
    );
    assert!(readme.contains("# tiny-release\n"));
    assert!(readme.contains("```mermaid\nflowchart LR\n"));
    assert!(readme.contains("Use `</s>` as an extra stop string."));
}

const GOLDEN: &str = r#"
yibuild: 1
name: tiny-golden
card:
  license: apache-2.0
  language: [en]
  prompt_template: chatml
  stop_strings: ["<|im_end|>"]
  running: "Run with a context of at most 128 tokens."
sources:
  base: ./models/base
  ft-a: ./models/ft-a
  ft-b: ./models/ft-b
  wiki: ./data/wiki.txt
steps:
  merged:
    seed: 7
    merge:
      merge_method: dare_ties
      base_model: base
      models:
        - model: base
        - model: ft-a
          parameters: {weight: 0.6, density: 0.5}
        - model: ft-b
          parameters: {weight: 0.4, density: 0.7}
  q8:
    quantize: {model: merged, format: gguf, type: Q8_0}
  ppl:
    eval: {model: merged, device: cpu, perplexity: {text: wiki, context: 64}}
  ppl-q8:
    eval: {model: q8, tokenizer: merged, device: cpu, perplexity: {text: wiki, context: 64}}
  release:
    package:
      model: merged
      quantized: [q8]
      evals: [ppl, ppl-q8]
      archive: tar
"#;

/// A project with a base, two fine-tunes of it and a small text.
fn golden_project() -> Project {
    let p = Project::with_base();
    let base = TinyLlama::default();
    write_finetune(&base, &p.path("models/ft-a"), 11, 0.2).unwrap();
    write_finetune(&base, &p.path("models/ft-b"), 12, 0.2).unwrap();
    let words = [
        "the", "cat", "sat", "on", "a", "mat", "and", "ran", "far", "away.",
    ];
    let mut rng = SplitMix(3);
    let text: Vec<&str> = (0..300)
        .map(|_| words[(rng.next_u64() % words.len() as u64) as usize])
        .collect();
    p.write("data/wiki.txt", &text.join(" "));
    p.write("recipe.yaml", GOLDEN);
    p
}

/// The README's front matter parsed back by a YAML parser.
fn parsed_front_matter(readme: &str) -> Json {
    parse_documents(front_matter(readme)).unwrap()[0].to_json()
}

fn perplexity_of(p: &Project, step: &str) -> f64 {
    let results = p.path(&format!("build/tiny-golden/{step}/results.json"));
    let r = read_results(&results).unwrap();
    r.perplexity.unwrap().result.perplexity
}

#[test]
fn golden_card_of_a_merged_quantized_evaluated_release() {
    let p = golden_project();
    let (code, _, stderr) = p.build_json(&["recipe.yaml", "ppl", "ppl-q8", "release"]);
    assert_eq!(code, 0, "{stderr}");
    let release = p.path("build/tiny-golden/release");
    let readme = std::fs::read_to_string(release.join("README.md")).unwrap();
    let fm = parsed_front_matter(&readme);
    let (ppl, ppl_q8) = (perplexity_of(&p, "ppl"), perplexity_of(&p, "ppl-q8"));
    let round4 = |x: f64| (x * 1e4).round() / 1e4;
    assert_eq!(
        fm,
        json!({
            "license": "apache-2.0",
            "language": ["en"],
            "library_name": "transformers",
            "tags": ["yibuild", "merge", "mergekit", "dare_ties", "gguf"],
            "pipeline_tag": "text-generation",
            "model-index": [{
                "name": "tiny-golden",
                "results": [{
                    "task": {"type": "text-generation"},
                    "dataset": {"type": "wiki", "name": "wiki"},
                    "metrics": [{
                        "type": "perplexity",
                        "value": round4(ppl),
                        "name": "Perplexity (context 64, llama.cpp)",
                    }],
                }],
            }],
        }),
        "{readme}"
    );
    for section in [
        "## Merge details (`merged`)",
        "- Method: `dare_ties` ([DARE](https://arxiv.org/abs/2311.03099))",
        "- Base model: `base`",
        "- Seed: 7",
        "| `ft-a` | 0.6 | 0.5 |",
        "| `ft-b` | 0.4 | 0.7 |",
        "## Lineage\n\n```mermaid\nflowchart LR\n",
        "## Prompt template\n\n```text\n<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n",
        "Stop strings: `<|im_end|>`",
        "## Running advice\n\nRun with a context of at most 128 tokens.\n",
        "## Recipe\n\n```yaml\nyibuild: 1\nname: tiny-golden\ncard:\n",
        "## Checksums (sha256)",
    ] {
        assert!(readme.contains(section), "{section:?} missing in\n{readme}");
    }
    let ppl_row = format!("| `merged` | perplexity | `wiki` | llama.cpp | 64 | {ppl:.4} ± ");
    assert!(readme.contains(&ppl_row), "{ppl_row} in\n{readme}");
    let delta = format!("{:+.4}", ppl_q8 - ppl);
    let q8_row = format!("| `q8` | perplexity | `wiki` | llama.cpp | 64 | {ppl_q8:.4} ± ");
    let q8_line = readme
        .lines()
        .find(|l| l.starts_with(&q8_row))
        .expect("q8 eval row");
    assert!(q8_line.ends_with(&format!("| {delta} |")), "{q8_line}");
    let gguf = "tiny-golden-Q8_0.gguf";
    let size = std::fs::metadata(release.join(gguf)).unwrap().len();
    let params = yibuild::card::parameter_count(&release).unwrap();
    let quant_row = format!(
        "| `{gguf}` | Q8_0 | {:.2} MiB | {:.2} | {delta} |",
        size as f64 / (1 << 20) as f64,
        size as f64 * 8.0 / params as f64
    );
    assert!(readme.contains(&quant_row), "{quant_row} in\n{readme}");
    let sums = std::fs::read_to_string(release.join("SHA256SUMS")).unwrap();
    let gguf_sum = sums.lines().find(|l| l.ends_with(gguf)).unwrap();
    assert!(readme.contains(gguf_sum), "card lists {gguf_sum}");
    let report: Json =
        serde_json::from_slice(&std::fs::read(release.join("build-report.json")).unwrap()).unwrap();
    assert_eq!(report["eval_devices"], json!(["cpu"]));
    assert_eq!(report["steps"][0]["params"]["seed"], json!(7));
    assert!(
        report.to_string().find("seconds").is_none(),
        "no timings: {report}"
    );
}

#[test]
fn golden_release_is_identical_with_other_jobs_and_cache() {
    let (a, b) = (golden_project(), golden_project());
    let (ca, _, ea) = a.build_json(&["-j1", "--threads", "1", "recipe.yaml", "release"]);
    let (cb, _, eb) = b.build_json(&["-j3", "--threads", "2", "recipe.yaml", "release"]);
    assert_eq!((ca, cb), (0, 0), "{ea}\n{eb}");
    let (ra, rb) = (
        a.path("build/tiny-golden/release"),
        b.path("build/tiny-golden/release"),
    );
    let read = |d: &std::path::Path, f: &str| std::fs::read(d.join(f)).unwrap();
    assert_eq!(read(&ra, "SHA256SUMS"), read(&rb, "SHA256SUMS"));
    assert_eq!(read(&ra, "tiny-golden.tar"), read(&rb, "tiny-golden.tar"));
}

#[test]
fn card_for_an_existing_folder() {
    let p = golden_project();
    let dir = p.path("models/merged");
    std::fs::create_dir_all(&dir).unwrap();
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        std::fs::copy(p.path(&format!("models/base/{f}")), dir.join(f)).unwrap();
    }
    p.write(
        "models/merged/mergekit_config.yml",
        "merge_method: ties\nbase_model: 01-ai/Yi-34B-200K\nmodels:\n  - model: migtissera/Tess-34B-v1.4\n    parameters: {weight: 0.5, density: 0.6}\n  - model: ./local/ft\n",
    );
    let out = p.run(&["card", "models/merged"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let card = String::from_utf8(out.stdout).unwrap();
    let fm = parsed_front_matter(&card);
    assert_eq!(
        fm["base_model"],
        json!(["01-ai/Yi-34B-200K", "migtissera/Tess-34B-v1.4"])
    );
    assert_eq!(fm["base_model_relation"], json!("merge"));
    assert_eq!(fm["tags"], json!(["yibuild", "merge", "mergekit", "ties"]));
    assert!(
        card.contains("([TIES-Merging](https://arxiv.org/abs/2306.01708))"),
        "{card}"
    );
    assert!(
        card.contains("| `migtissera/Tess-34B-v1.4` | 0.5 | 0.6 |"),
        "{card}"
    );
    assert!(!dir.join("README.md").exists());
    assert!(p
        .run(&["card", "--write", "models/merged"])
        .status
        .success());
    assert_eq!(
        std::fs::read_to_string(dir.join("README.md")).unwrap(),
        card
    );
    let err = p.run(&["card", "data"]);
    assert_eq!(err.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&err.stderr).contains("has no config.json"));
}

/// A merge, two quantized folders made by `run` steps (shell stand-ins for
/// exllamav2's and a GPTQ converter, writing their layouts), and a sweep
/// the lineage collapses.
const RUN_OUTPUTS: &str = r#"# The card shows this comment: it is the recipe as written.
yibuild: 1
name: tiny-exl2
sources:
  base: ./models/base
  ft-a: ./models/ft-a
steps:
  merged:
    merge:
      merge_method: linear
      models:
        - model: base
          parameters: {weight: 0.5}
        - model: ft-a
          parameters: {weight: 0.5}
  exl2:
    run:
      command: >-
        cp "$YIBUILD_IN_MERGED/tokenizer.json" "$YIBUILD_OUT/" &&
        printf '{"model_type": "llama", "quantization_config": {"quant_method": "exl2", "version": "0.2.8", "bits": 4.65, "head_bits": 6}}'
        > "$YIBUILD_OUT/config.json" &&
        head -c 3000 /dev/zero > "$YIBUILD_OUT/output.safetensors"
      inputs: [merged]
      outputs: [config.json, output.safetensors]
  gptq:
    run:
      command: >-
        printf '{"quantization_config": {"quant_method": "gptq", "bits": 4}}' > config.json &&
        head -c 2000 /dev/zero > model.safetensors
      inputs: [merged]
      outputs: [config.json]
  score:
    matrix: {n: [1, 2, 3]}
    run:
      command: "echo ${{ matrix.n }} > \"$YIBUILD_OUT/x\""
      inputs: [merged]
      outputs: [x]
  release:
    package:
      model: merged
      quantized: [exl2, {step: gptq, path: gptq-4bit}]
"#;

fn run_outputs_project() -> Project {
    let p = Project::with_base();
    write_finetune(&TinyLlama::default(), &p.path("models/ft-a"), 11, 0.2).unwrap();
    p.write("recipe.yaml", RUN_OUTPUTS);
    p
}

/// Total size of the files under `dir`.
fn folder_size(dir: &std::path::Path) -> u64 {
    tree_bytes(dir).iter().map(|(_, b)| b.len() as u64).sum()
}

#[test]
fn run_outputs_are_subfolders_listed_with_their_format() {
    let p = run_outputs_project();
    let (code, _, stderr) = p.build_json(&["recipe.yaml"]);
    assert_eq!(code, 0, "{stderr}");
    let release = p.path("build/tiny-exl2/release");
    // The exl2 folder keeps its own config.json beside the model's.
    assert_eq!(
        std::fs::read(release.join("exl2/config.json")).unwrap(),
        std::fs::read(p.path("build/tiny-exl2/exl2/config.json")).unwrap()
    );
    let model_config: Json =
        serde_json::from_slice(&std::fs::read(release.join("config.json")).unwrap()).unwrap();
    assert!(model_config.get("quantization_config").is_none());
    assert_eq!(
        std::fs::metadata(release.join("exl2/output.safetensors"))
            .unwrap()
            .len(),
        3000
    );
    assert!(release.join("exl2/tokenizer.json").is_file());
    assert!(release.join("gptq-4bit/model.safetensors").is_file());
    assert!(
        !release.join("output.safetensors").exists(),
        "nothing flattened"
    );

    let readme = std::fs::read_to_string(release.join("README.md")).unwrap();
    let mib = |b: u64| format!("{:.2} MiB", b as f64 / (1 << 20) as f64);
    let exl2_row = format!(
        "| `exl2/` | exl2 (head 6 bits) | {} | 4.65 | – |",
        mib(folder_size(&release.join("exl2")))
    );
    assert!(readme.contains(&exl2_row), "{exl2_row} in\n{readme}");
    let gptq_row = format!(
        "| `gptq-4bit/` | gptq | {} | 4.00 | – |",
        mib(folder_size(&release.join("gptq-4bit")))
    );
    assert!(readme.contains(&gptq_row), "{gptq_row} in\n{readme}");
    let fm = parsed_front_matter(&readme);
    let tags = fm["tags"].as_array().unwrap();
    assert!(
        tags.contains(&json!("exl2")) && tags.contains(&json!("gptq")),
        "{fm}"
    );
    assert!(!tags.contains(&json!("gguf")), "{fm}");
    let sums = std::fs::read_to_string(release.join("SHA256SUMS")).unwrap();
    for f in [
        "exl2/config.json",
        "exl2/output.safetensors",
        "gptq-4bit/config.json",
    ] {
        assert!(
            sums.lines().any(|l| l.ends_with(&format!("  {f}"))),
            "{f} in {sums}"
        );
    }
}

#[test]
fn card_shows_the_recipe_as_written_and_the_release_can_reproduce_it() {
    let p = run_outputs_project();
    let (code, _, stderr) = p.build_json(&["recipe.yaml"]);
    assert_eq!(code, 0, "{stderr}");
    let release = p.path("build/tiny-exl2/release");
    let readme = std::fs::read_to_string(release.join("README.md")).unwrap();
    let recipe_section = format!("## Recipe\n\n```yaml\n{}```\n", RUN_OUTPUTS);
    assert!(readme.contains(&recipe_section), "{readme}");
    // The recipe file travels with the release, and Reproduce runs it.
    assert_eq!(
        std::fs::read_to_string(release.join("recipe.yaml")).unwrap(),
        RUN_OUTPUTS
    );
    assert!(
        readme.contains("as `recipe.yaml`:\n\n```sh\nyibuild recipe.yaml\n```"),
        "{readme}"
    );
    assert!(
        readme.contains("Its local sources (`./models/base`, `./models/ft-a`)"),
        "{readme}"
    );
    // The lineage has one node for the sweep of three instances.
    assert!(readme.contains("  score[\"score ×3 (run)\"]\n"), "{readme}");
    assert!(readme.contains("  merged --> score\n"), "{readme}");
    assert!(!readme.contains("score_n_"), "no instance nodes: {readme}");
}

#[test]
fn released_mergekit_config_names_the_models_mergekit_loads() {
    let p = run_outputs_project();
    let (code, _, stderr) = p.build_json(&["recipe.yaml", "release"]);
    assert_eq!(code, 0, "{stderr}");
    let models = |path: &str| -> Vec<Json> {
        let text = std::fs::read_to_string(p.path(path)).unwrap();
        let config = parse_documents(&text).unwrap()[0].to_json();
        assert_eq!(config["merge_method"], "linear", "{text}");
        config["models"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["model"].clone())
            .collect()
    };
    // The release's copy runs with mergekit from the recipe's folder...
    assert_eq!(
        models("build/tiny-exl2/release/mergekit_config.yml"),
        [json!("./models/base"), json!("./models/ft-a")]
    );
    for m in ["models/base", "models/ft-a"] {
        assert!(p.path(m).join("config.json").is_file());
    }
    // ...while the merge step's own keeps the recipe's names, so renaming a
    // local path does not rerun the merge.
    assert_eq!(
        models("build/tiny-exl2/merged/mergekit_config.yml"),
        [json!("base"), json!("ft-a")]
    );
}

#[test]
fn a_quantized_path_must_be_one_folder_and_must_not_collide() {
    let p = run_outputs_project();
    p.write(
        "recipe.yaml",
        &RUN_OUTPUTS.replace("path: gptq-4bit", "path: ../gptq"),
    );
    let (code, _, stderr) = p.build_json(&["recipe.yaml"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("recipe.yaml:41:"), "{stderr}");
    assert!(
        stderr.contains("`path` `../gptq` cannot be used as a file name"),
        "{stderr}"
    );

    p.write(
        "recipe.yaml",
        &RUN_OUTPUTS.replace("path: gptq-4bit", "path: config.json"),
    );
    let (code, events, stderr) = p.build_json(&["recipe.yaml"]);
    assert_eq!(code, 1, "{stderr}");
    let release = events
        .iter()
        .find(|e| e["event"] == "step" && e["step"] == "release")
        .unwrap();
    assert_eq!(release["status"], "failed");
    let error = release["error"].as_str().unwrap();
    assert!(
        error.contains("the output of `gptq` goes to the folder `config.json/`, which collides"),
        "{error}"
    );
}
