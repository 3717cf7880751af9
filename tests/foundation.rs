//! The foundation: caching, rebuild precision, early cutoff, explain, crash
//! safety and concurrent builds, through the real binary.

mod common;

use common::{statuses, with_status, Project};

const RECIPE: &str = r#"
yibuild: 1
name: demo
sources:
  base: ./models/base
steps:
  patched:
    patch_config:
      model: base
      set: {max_position_embeddings: 32768}
  gen:
    patch_config:
      model: patched
      generation_config: {set: {max_new_tokens: 256}}
  summary:
    run:
      command: "grep -o '\"max_position_embeddings\": [0-9]*' \"$YIBUILD_IN_GEN/config.json\" > \"$YIBUILD_OUT/summary.txt\""
      inputs: [gen]
      outputs: [summary.txt]
  report:
    run:
      command: "wc -c < \"$YIBUILD_IN_SUMMARY/summary.txt\" > \"$YIBUILD_OUT/size.txt\""
      inputs: [summary]
default: [report]
"#;

#[test]
fn second_build_is_all_cached() {
    let p = Project::with_base();
    p.write("recipe.yaml", RECIPE);
    let (code, events, err) = p.build_json(&["recipe.yaml"]);
    assert_eq!(code, 0, "{err} {events:?}");
    assert_eq!(
        with_status(&events, "built"),
        ["gen", "patched", "report", "summary"]
    );
    let last = events.last().unwrap();
    assert_eq!(last["event"], "finished");
    assert_eq!(last["ok"], true);
    let summary = std::fs::read_to_string(p.path("build/demo/summary/summary.txt")).unwrap();
    assert_eq!(summary.trim(), "\"max_position_embeddings\": 32768");
    let gen: serde_json::Value = serde_json::from_slice(
        &std::fs::read(p.path("build/demo/gen/generation_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(gen["max_new_tokens"], 256);
    assert_eq!(gen["eos_token_id"], 2);

    let (code, events, _) = p.build_json(&["recipe.yaml"]);
    assert_eq!(code, 0);
    assert_eq!(with_status(&events, "cached").len(), 4);
    assert!(with_status(&events, "built").is_empty());
    for e in events.iter().filter(|e| e["event"] == "step") {
        assert_eq!(e["key"].as_str().unwrap().len(), 64);
    }
}

#[test]
fn weights_pass_through_as_hardlinks() {
    use std::os::unix::fs::MetadataExt;
    let p = Project::with_base();
    p.write("recipe.yaml", RECIPE);
    assert_eq!(p.build_json(&["recipe.yaml"]).0, 0);
    let a = std::fs::metadata(p.path("build/demo/patched/model.safetensors")).unwrap();
    let b = std::fs::metadata(p.path("build/demo/gen/model.safetensors")).unwrap();
    assert_eq!(
        a.ino(),
        b.ino(),
        "unchanged weights are one object, linked twice"
    );
    assert_eq!(
        std::fs::read(p.path("build/demo/gen/model.safetensors")).unwrap(),
        std::fs::read(p.path("models/base/model.safetensors")).unwrap()
    );
}

#[test]
fn changing_one_value_rebuilds_only_dependents_and_explain_names_it() {
    let p = Project::with_base();
    p.write("recipe.yaml", RECIPE);
    assert_eq!(p.build_json(&["recipe.yaml"]).0, 0);
    p.write(
        "recipe.yaml",
        &RECIPE.replace("max_new_tokens: 256", "max_new_tokens: 512"),
    );
    let explain = p.run(&["explain", "recipe.yaml", "gen"]);
    let text = String::from_utf8_lossy(&explain.stdout);
    assert!(
        text.contains(
            "parameter `files.generation_config.json.set.max_new_tokens` changed: 256 → 512"
        ),
        "{text}"
    );
    let status = String::from_utf8_lossy(&p.run(&["status", "recipe.yaml"]).stdout).into_owned();
    assert!(
        status.contains("   fresh patched") && status.contains("   stale gen"),
        "{status}"
    );
    let (code, events, _) = p.build_json(&["recipe.yaml"]);
    assert_eq!(code, 0);
    // `summary` reruns because its input changed, but writes the same bytes:
    // early cutoff leaves `report` cached.
    assert_eq!(with_status(&events, "built"), ["gen", "summary"]);
    assert_eq!(with_status(&events, "cached"), ["patched", "report"]);
}

#[test]
fn reordering_keys_and_comments_rebuild_nothing() {
    let p = Project::with_base();
    p.write("recipe.yaml", RECIPE);
    assert_eq!(p.build_json(&["recipe.yaml"]).0, 0);
    let reordered = RECIPE
        .replace(
            "    patch_config:\n      model: base\n      set: {max_position_embeddings: 32768}",
            "    # bigger context\n    patch_config:\n      set:   { max_position_embeddings: 32768 }   # the Yi case\n      model: base",
        );
    assert_ne!(reordered, RECIPE);
    p.write("recipe.yaml", &reordered);
    let (code, events, _) = p.build_json(&["recipe.yaml"]);
    assert_eq!(code, 0);
    assert!(
        with_status(&events, "built").is_empty(),
        "{:?}",
        statuses(&events)
    );
}
