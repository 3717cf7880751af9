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
    // Tiny widths, tiny contexts: everything else is the seed recipe as written.
    recipe = recipe.replace("context: 4096", "context: 64").replace(
        "lengths: [4096, 16384, 32768], trials: 10",
        "lengths: [256], trials: 2",
    );
    p.write("recipes/capybara-tess.yaml", &recipe);

    let (code, events, err) = p.build_json(&["recipes/capybara-tess.yaml"]);
    assert_eq!(code, 0, "{err}\n{events:#?}");
    let built = common::with_status(&events, "built");
    for step in [
        "merged", "patched", "final", "q4km", "q6k", "ppl", "ppl-q4km", "release",
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
}
