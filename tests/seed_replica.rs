//! The seed recipe (`recipes/capybara-tess.yaml`) built end to end over
//! Yi-shaped replicas of its eight models: 60 layers, Yi's config keys and
//! GQA ratio, SentencePiece tokenizers, tiny widths.

mod common;

use common::Project;
use yibuild::fixtures::{write_yi_replicas, YI_SEED_SOURCES};

/// Enough text for perplexity at the replica's test context.
fn wiki_text() -> String {
    let words = [
        "the", "river", "valley", "north", "city", "was", "built", "in", "stone", "and", "its",
        "people", "traded", "salt", "grain",
    ];
    let mut rng = yibuild::fixtures::SplitMix(7);
    let mut out = String::new();
    for i in 0..1200 {
        out.push_str(words[(rng.next_u64() % words.len() as u64) as usize]);
        out.push(if i % 13 == 12 { '\n' } else { ' ' });
    }
    out
}

/// The exl2 step's converter call in the seed recipe.
const EXL2_COMMAND: &str = r#": "${EXLLAMAV2:?names a clone of exllamav2}" &&
        work=$(mktemp -d) && trap 'rm -rf "$work"' EXIT &&
        python "$EXLLAMAV2/convert.py" -i "$YIBUILD_IN_FINAL" -o "$work"
        -cf "$YIBUILD_OUT" -b 4.65 -hb 6"#;

/// What exllamav2's `convert.py -cf OUT` leaves in OUT: the input's
/// non-weight files, `output.safetensors`, and `config.json` with its
/// `quantization_config` signature.
const EXL2_STAND_IN: &str = r#"cp "$YIBUILD_IN_FINAL"/tokenizer* "$YIBUILD_OUT"/ &&
        printf '{"model_type": "llama", "quantization_config": {"quant_method": "exl2", "version": "0.2.8", "bits": 4.65, "head_bits": 6}}'
        > "$YIBUILD_OUT/config.json" && head -c 4096 /dev/zero > "$YIBUILD_OUT/output.safetensors""#;

#[test]
fn seed_recipe_builds_end_to_end_over_yi_replicas() {
    let p = Project::new();
    write_yi_replicas(&p.path("recipes/replicas")).unwrap();
    p.write("recipes/data/wiki.test.raw", &wiki_text());
    let mut recipe = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/recipes/capybara-tess.yaml"
    ))
    .unwrap();
    for (name, hub) in YI_SEED_SOURCES {
        let from = format!("hf://{hub}");
        assert!(recipe.contains(&from), "the seed recipe names {from}");
        recipe = recipe.replace(&from, &format!("./replicas/{name}"));
    }
    // Tiny widths, tiny contexts, and a shell stand-in for exllamav2's
    // converter (it needs a CUDA GPU) that writes the folder layout it
    // writes: everything else is the seed recipe as written.
    recipe = recipe.replace("context: 4096", "context: 64").replace(
        "lengths: [4096, 16384, 32768], trials: 10",
        "lengths: [256], trials: 2",
    );
    assert!(
        recipe.contains(EXL2_COMMAND),
        "the seed recipe converts with exllamav2"
    );
    recipe = recipe.replace(EXL2_COMMAND, EXL2_STAND_IN);
    p.write("recipes/capybara-tess.yaml", &recipe);

    let (code, events, err) = p.build_json(&["recipes/capybara-tess.yaml"]);
    assert_eq!(code, 0, "{err}\n{events:#?}");
    let built = common::with_status(&events, "built");
    for step in [
        "merged", "patched", "final", "q4km", "q6k", "exl2", "ppl", "ppl-q4km", "release",
    ] {
        assert!(built.contains(&step.to_owned()), "{step} built: {built:?}");
    }
    let release = p.path("build/CapyTessBorosYi-34B-200K-DARE-Ties/release");
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(release.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["num_hidden_layers"], 60);
    assert_eq!(config["max_position_embeddings"], 32768);
    assert_eq!(config["torch_dtype"], "bfloat16");
    let generation: serde_json::Value =
        serde_json::from_slice(&std::fs::read(release.join("generation_config.json")).unwrap())
            .unwrap();
    // `</s>` is the replicas' eos already; as an extra stop string it is
    // listed in the sidecar the card reads, never as `stop_strings` in
    // generation_config.json (transformers' generate() would then demand a
    // tokenizer argument).
    assert!(generation.get("stop_strings").is_none(), "{generation}");
    let stops: serde_json::Value =
        serde_json::from_slice(&std::fs::read(release.join("stop_strings.json")).unwrap()).unwrap();
    assert_eq!(stops["stop_strings"], serde_json::json!(["</s>"]));
    for f in [
        "CapyTessBorosYi-34B-200K-DARE-Ties-Q4_K_M.gguf",
        "CapyTessBorosYi-34B-200K-DARE-Ties-Q6_K.gguf",
        "README.md",
        "SHA256SUMS",
    ] {
        assert!(release.join(f).is_file(), "{f} in the release");
    }
    let readme = std::fs::read_to_string(release.join("README.md")).unwrap();
    assert!(readme.contains("license_name: yi-license"), "{readme}");
    assert!(readme.contains("# CapyTessBorosYi-34B-200K-DARE-Ties"));
    // The exl2 folder is a subfolder of the release, listed with its bits.
    let exl2 = release.join("exl2-4.65bpw");
    assert!(exl2.join("output.safetensors").is_file());
    assert!(exl2.join("tokenizer.json").is_file());
    assert!(
        readme.contains("| `exl2-4.65bpw/` | exl2 (head 6 bits) | "),
        "{readme}"
    );
    assert!(readme.contains(" | 4.65 | "), "{readme}");
    // The release carries the recipe as written and a mergekit config with
    // the paths the models were merged from.
    assert_eq!(
        std::fs::read_to_string(release.join("capybara-tess.yaml")).unwrap(),
        recipe
    );
    let mergekit = std::fs::read_to_string(release.join("mergekit_config.yml")).unwrap();
    assert!(
        mergekit.contains("- model: ./replicas/tess\n"),
        "{mergekit}"
    );
    assert!(
        mergekit.contains("base_model: ./replicas/yi-llama\n"),
        "{mergekit}"
    );
}

/// `plan` of the seed recipe as it is committed, offline, for the Slurm
/// executor: the exl2 step asks for a GPU, the GGUF steps for none.
#[test]
fn seed_recipe_plans_the_exl2_step_as_a_gpu_job() {
    let p = Project::new();
    let recipe = concat!(env!("CARGO_MANIFEST_DIR"), "/recipes/capybara-tess.yaml");
    let out = p
        .cmd(&[
            "plan",
            recipe,
            "--executor",
            "slurm",
            "--offline",
            "--device",
            "cpu",
        ])
        .env_remove("SLURM_CONF")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let job = |step: &str| -> String {
        let line = stdout
            .lines()
            .position(|l| l.trim_start().starts_with(&format!("build {step} (")))
            .unwrap_or_else(|| panic!("{step} is planned: {stdout}"));
        stdout.lines().nth(line + 1).unwrap().trim().to_owned()
    };
    assert!(job("exl2").starts_with("slurm job: cpus=1 "), "{stdout}");
    assert!(job("exl2").contains(" gpus=1 "), "{stdout}");
    assert!(job("q4km").contains(" gpus=0 "), "{stdout}");
    assert!(job("release").contains(" gpus=0 "), "{stdout}");
}
