//! The package step: release folder, card front matter, checksums and
//! byte-reproducible archives.

mod common;

use common::{tree_bytes, Project};

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
