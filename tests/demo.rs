//! The embedded demo builds from the committed tiny model family, and the
//! results table committed in the README is exactly what it prints.

use std::process::Command;

#[test]
fn demo_builds_and_prints_the_readme_table() {
    let root = env!("CARGO_MANIFEST_DIR");
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_yibuild"))
        .current_dir(root)
        .env("NO_COLOR", "1")
        .arg("--cache-dir")
        .arg(tmp.path().join("cache"))
        .arg("--build-dir")
        .arg(tmp.path().join("build"))
        .arg("recipes/tiny-demo.yaml")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let printed = String::from_utf8_lossy(&out.stdout);
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    let start = readme
        .find("and prints:\n\n```\n")
        .expect("README shows the demo table")
        + "and prints:\n\n```\n".len();
    let table = &readme[start..start + readme[start..].find("```").unwrap()];
    assert_eq!(
        printed.trim(),
        table.trim(),
        "README table differs from the demo's output"
    );
    let release = tmp.path().join("build/tiny-demo/release");
    for f in [
        "README.md",
        "SHA256SUMS",
        "model.safetensors",
        "tiny-demo-Q8_0.gguf",
        "tiny-demo-Q4_K_M.gguf",
    ] {
        assert!(release.join(f).is_file(), "{f}");
    }
}
