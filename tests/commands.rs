//! plan, graph, verify and gc through the binary.

mod common;

use common::Project;

const RECIPE: &str = r#"
yibuild: 1
name: cmds
sources:
  base: ./models/base
steps:
  a:
    patch_config: {model: base, set: {max_position_embeddings: 4096}}
  b:
    patch_config: {model: a, set: {rope_theta: 20000.0}}
"#;

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn plan_shows_what_would_run_and_why() {
    let p = Project::with_base();
    p.write("recipe.yaml", RECIPE);
    let before = stdout(&p.run(&["plan", "recipe.yaml"]));
    assert!(
        before.contains("build a (patch_config): never built"),
        "{before}"
    );
    assert!(before.contains("2 to build, 0 cached"), "{before}");
    assert!(!p.path("build").exists(), "plan builds nothing");
    assert_eq!(p.build_json(&["recipe.yaml"]).0, 0);
    p.write("recipe.yaml", &RECIPE.replace("20000.0", "40000.0"));
    let after = stdout(&p.run(&["plan", "recipe.yaml"]));
    assert!(after.contains("cached a (patch_config)"), "{after}");
    assert!(after.contains("build b (patch_config): parameter `files.config.json.set.rope_theta` changed: 20000.0 → 40000.0"), "{after}");
}

#[test]
fn graph_as_dot_and_mermaid() {
    let p = Project::with_base();
    p.write("recipe.yaml", RECIPE);
    let dot = stdout(&p.run(&["graph", "recipe.yaml"]));
    let flags_first = p.run(&["--cache-dir", "elsewhere", "graph", "recipe.yaml"]);
    assert_eq!(
        stdout(&flags_first),
        dot,
        "global flags may come before the subcommand"
    );
    assert!(dot.starts_with("digraph \"cmds\""), "{dot}");
    assert!(
        dot.contains("\"base\" -> \"a\";") && dot.contains("\"a\" -> \"b\";"),
        "{dot}"
    );
    let mermaid = stdout(&p.run(&["graph", "--format", "mermaid", "recipe.yaml"]));
    assert!(
        mermaid.contains("base --> a") && mermaid.contains("a --> b"),
        "{mermaid}"
    );
}

#[test]
fn verify_detects_a_corrupted_object_and_gc_collects_unreferenced_ones() {
    use std::os::unix::fs::PermissionsExt;
    let p = Project::with_base();
    p.write("recipe.yaml", RECIPE);
    assert_eq!(p.build_json(&["recipe.yaml"]).0, 0);
    assert!(p.run(&["verify"]).status.success());

    // A config change leaves the old `a` output unreferenced: gc finds it.
    p.write("recipe.yaml", &RECIPE.replace("4096", "8192"));
    assert_eq!(p.build_json(&["recipe.yaml"]).0, 0);
    let dry = stdout(&p.run(&["gc"]));
    assert!(
        dry.starts_with("would remove 2 actions and 2 objects"),
        "{dry}"
    );
    let done = stdout(&p.run(&["gc", "--yes"]));
    assert!(
        done.starts_with("removed 2 actions and 2 objects"),
        "{done}"
    );
    assert!(stdout(&p.run(&["gc"])).starts_with("would remove 0 actions and 0 objects"));
    let (_, events, _) = p.build_json(&["recipe.yaml"]);
    assert_eq!(
        common::with_status(&events, "cached"),
        ["a", "b"],
        "live entries survive gc"
    );

    // Flip a byte in an object: verify names it and fails.
    let config = p.path("build/cmds/b/config.json");
    let mut perms = std::fs::metadata(&config).unwrap().permissions();
    perms.set_mode(0o644);
    std::fs::set_permissions(&config, perms).unwrap();
    let mut bytes = std::fs::read(&config).unwrap();
    bytes[5] ^= 1;
    std::fs::write(&config, bytes).unwrap();
    let out = p.run(&["verify"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is corrupt"));
}
