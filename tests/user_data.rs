//! The rule of `yibuild::cache`: yibuild never changes a byte, mode, owner,
//! link count or location of anything outside its cache and build
//! directories. Each test reproduces a way it once did (issue 17) on real
//! files and checks the outcome byte by byte. The tests may run as root, so
//! nothing here relies on permission bits.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Output;

use common::{copy_demo, Project};

/// What must not change about a file: bytes, mode, owner, inode, link count, mtime.
#[derive(Debug, PartialEq)]
struct FileState {
    bytes: Vec<u8>,
    mode: u32,
    uid: u32,
    ino: u64,
    nlink: u64,
    mtime: (i64, i64),
}

/// Every file and folder under `root` (dotfiles included, symlinks not
/// followed) with its state; folders and links have no bytes.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, FileState> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let path = e.unwrap().path();
            let m = std::fs::symlink_metadata(&path).unwrap();
            if m.is_dir() {
                stack.push(path.clone());
            }
            let bytes = if m.is_file() {
                std::fs::read(&path).unwrap()
            } else {
                Vec::new()
            };
            let state = FileState {
                bytes,
                mode: m.mode(),
                uid: m.uid(),
                ino: m.ino(),
                nlink: m.nlink(),
                mtime: (m.mtime(), m.mtime_nsec()),
            };
            out.insert(path.strip_prefix(root).unwrap().to_path_buf(), state);
        }
    }
    out
}

fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Inodes of every regular file under `root`.
fn inodes(root: &Path) -> std::collections::HashSet<u64> {
    snapshot(root)
        .into_iter()
        .filter(|(_, s)| s.mode & 0o170000 == 0o100000)
        .map(|(_, s)| s.ino)
        .collect()
}

/// Checks `SHA256SUMS` in `dir` the way `sha256sum -c` does.
fn check_sums(dir: &Path) {
    use sha2::Digest;
    let sums = std::fs::read_to_string(dir.join("SHA256SUMS")).unwrap();
    assert!(!sums.is_empty());
    for line in sums.lines() {
        let (hash, name) = line.split_once("  ").unwrap();
        let actual = sha2::Sha256::digest(std::fs::read(dir.join(name)).unwrap());
        let hex: String = actual.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, hash, "{name} does not match SHA256SUMS");
    }
}

/// Flips one byte of `path` in place, keeping its size and inode: what root
/// can do to a read-only file under `build/`.
fn edit_in_place(path: &Path) {
    let before = std::fs::metadata(path).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut bytes = std::fs::read(path).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x55;
    std::fs::write(path, &bytes).unwrap();
    let after = std::fs::metadata(path).unwrap();
    assert_eq!((before.ino(), before.size()), (after.ino(), after.size()));
}

#[test]
fn the_demo_leaves_its_sources_untouched_and_repairs_an_edited_release() {
    let tmp = tempfile::tempdir().unwrap();
    let project = tmp.path().join("project");
    copy_demo(&project);
    let sources = snapshot(&project);
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_yibuild"))
            .current_dir(&project)
            .env("NO_COLOR", "1")
            .arg("--cache-dir")
            .arg(tmp.path().join("cache"))
            .arg("--build-dir")
            .arg(tmp.path().join("build"))
            .args(args)
            .output()
            .unwrap();
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        out
    };
    run(&["-q", "tiny-demo.yaml"]);
    assert_eq!(
        snapshot(&project),
        sources,
        "a source file's bytes, mode, owner, inode, link count or mtime changed"
    );
    let build = tmp.path().join("build/tiny-demo");
    let shared: Vec<u64> = inodes(&build)
        .intersection(&inodes(&project))
        .copied()
        .collect();
    assert!(shared.is_empty(), "outputs share inodes with sources");

    // A no-op rebuild writes nothing in the cache or the build folder.
    let cache_before = snapshot(&tmp.path().join("cache"));
    let build_before = snapshot(&build);
    run(&["-q", "tiny-demo.yaml"]);
    assert_eq!(snapshot(&tmp.path().join("cache")), cache_before);
    assert_eq!(snapshot(&build), build_before);

    // Root edits the released weights in place: the next build repairs them.
    let release = build.join("release");
    edit_in_place(&release.join("model.safetensors"));
    run(&["-q", "tiny-demo.yaml"]);
    check_sums(&release);
    if let Ok(out) = std::process::Command::new("sha256sum")
        .arg("-c")
        .arg("--quiet")
        .arg("SHA256SUMS")
        .current_dir(&release)
        .output()
    {
        assert!(out.status.success(), "{}", stderr(&out));
    }
    run(&["verify"]);
    assert_eq!(snapshot(&project), sources);
}

const BASE_RECIPE: &str = "yibuild: 1
name: ud
sources:
  base: ./models/base
steps:
  patched:
    patch_config: {model: base, set: {max_position_embeddings: 4096}}
";

#[test]
fn a_run_step_that_links_its_input_leaves_the_source_intact_and_keeps_dotfiles() {
    let p = Project::with_base();
    p.write(
        "recipe.yaml",
        r#"yibuild: 1
name: links
sources:
  base: ./models/base
steps:
  linked:
    run:
      command: 'ln -s "$YIBUILD_IN_BASE" "$YIBUILD_OUT/model" && ln -s model/config.json "$YIBUILD_OUT/cfg" && echo kept > "$YIBUILD_OUT/.meta"'
      inputs: [base]
"#,
    );
    let before = snapshot(&p.path("models"));
    let (code, _, err) = p.build_json(&["recipe.yaml"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        snapshot(&p.path("models")),
        before,
        "the linked source changed"
    );
    let out = p.path("build/links/linked");
    assert_eq!(std::fs::read(out.join(".meta")).unwrap(), b"kept\n");
    for f in ["cfg", "model/config.json", "model/model.safetensors"] {
        let m = std::fs::symlink_metadata(out.join(f)).unwrap();
        assert!(m.is_file(), "{f} is stored as a regular file");
    }
    assert_eq!(
        std::fs::read(out.join("cfg")).unwrap(),
        std::fs::read(p.path("models/base/config.json")).unwrap()
    );
    let (code, events, _) = p.build_json(&["recipe.yaml"]);
    assert_eq!(code, 0);
    assert_eq!(common::with_status(&events, "cached"), ["linked"]);
    assert_eq!(snapshot(&p.path("models")), before);
}

#[test]
fn passing_a_source_through_copies_it_and_merge_output_shares_no_inode() {
    let p = Project::with_base();
    p.write("recipe.yaml", BASE_RECIPE);
    let before = snapshot(&p.path("models"));
    assert_eq!(p.build_json(&["recipe.yaml"]).0, 0);
    assert_eq!(snapshot(&p.path("models")), before);
    let out = p.path("build/ud/patched");
    assert!(inodes(&out).is_disjoint(&inodes(&p.path("models"))));
    let config = p.write(
        "merge.yml",
        "merge_method: linear\nmodels:\n  - model: ./models/base\n    parameters: {weight: 1.0}\ndtype: float32\n",
    );
    let merged = p.run(&["merge", config.to_str().unwrap(), "merged"]);
    assert_eq!(code(&merged), 0, "{}", stderr(&merged));
    assert!(inodes(&p.path("merged")).is_disjoint(&inodes(&p.path("models"))));
    // Editing the source afterwards changes nothing built.
    let built = std::fs::read(out.join("model.safetensors")).unwrap();
    edit_in_place(&p.path("models/base/model.safetensors"));
    assert_eq!(std::fs::read(out.join("model.safetensors")).unwrap(), built);
}

/// A mergekit-multi file whose first document's name is `name`.
fn multi(name: &str) -> String {
    format!(
        "name: {name}\nmerge_method: linear\nmodels:\n  - model: ./models/base\n    parameters: {{weight: 1.0}}\ndtype: float32\n---\nname: second\nmerge_method: linear\nmodels:\n  - model: ./models/base\n    parameters: {{weight: 1.0}}\ndtype: float32\n"
    )
}

#[test]
fn names_that_would_escape_are_refused_with_exit_2_and_nothing_outside_is_touched() {
    let outer = tempfile::tempdir().unwrap();
    let victim = outer.path().join("victim");
    std::fs::create_dir_all(&victim).unwrap();
    std::fs::write(victim.join("precious"), b"only copy").unwrap();
    let p = Project::with_base();
    let watched = || (snapshot(outer.path()), snapshot(&p.path("models")));
    let before = watched();

    let escape = victim.strip_prefix("/").unwrap();
    let dotdots = "../".repeat(p.path("build/x").components().count());
    for name in [
        format!("{dotdots}{}", escape.display()),
        victim.display().to_string(),
        "..".to_owned(),
    ] {
        p.write("multi.yaml", &multi(&format!("'{name}'")));
        let out = p.run(&["multi.yaml"]);
        assert_eq!(code(&out), 2, "{name}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("cannot be used as a file name"),
            "{}",
            stderr(&out)
        );
    }

    // A config named `...yaml` would be recipe `..`: refused, and so is
    // cleaning it.
    p.write("...yaml", &multi("first"));
    for args in [&["...yaml"][..], &["clean", "...yaml"]] {
        let out = p.run(args);
        assert_eq!(code(&out), 2, "{args:?}: {}", stderr(&out));
    }
    assert!(p.path("models/base/config.json").is_file());

    // A build directory that is (or holds) the current directory is never cleaned.
    for dir in [".", "..", "./"] {
        let out = p
            .cmd(&["clean"])
            .env("YIBUILD_BUILD_DIR", dir)
            .output()
            .unwrap();
        assert_eq!(code(&out), 2, "{dir}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("refusing to clean"),
            "{}",
            stderr(&out)
        );
    }
    p.write("objects/mine.txt", "not cache debris");
    let out = p
        .cmd(&["gc", "--yes"])
        .env("YIBUILD_CACHE_DIR", ".")
        .output()
        .unwrap();
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(p.path("objects/mine.txt").is_file());
    // A folder yibuild did not make is not removed.
    p.write("build/handmade/notes.txt", "mine");
    p.write(
        "recipe.yaml",
        &BASE_RECIPE.replace("name: ud", "name: handmade"),
    );
    let out = p.run(&["clean", "recipe.yaml"]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(p.path("build/handmade/notes.txt").is_file());
    assert_eq!(code(&p.run(&["clean"])), 0);
    assert!(p.path("build/handmade/notes.txt").is_file());
    assert_eq!(watched(), before);
    assert!(p.path("multi.yaml").is_file() && p.path("recipe.yaml").is_file());
}

#[test]
fn clean_removes_what_a_build_made() {
    let p = Project::with_base();
    p.write("recipe.yaml", BASE_RECIPE);
    assert_eq!(p.build_json(&["recipe.yaml"]).0, 0);
    assert!(p.path("build/ud/patched/config.json").is_file());
    let out = p.run(&["clean", "recipe.yaml"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(!p.path("build/ud").exists());
    assert_eq!(p.build_json(&["recipe.yaml"]).0, 0);
    assert_eq!(code(&p.run(&["clean"])), 0);
    assert!(!p.path("build").exists());
}

/// The action file of step `patched` of the `ud` recipe.
fn action_file(p: &Project) -> PathBuf {
    let record = std::fs::read(p.path("cache/records/ud/patched.json")).unwrap();
    let key = serde_json::from_slice::<serde_json::Value>(&record).unwrap()["key"]
        .as_str()
        .unwrap()
        .to_owned();
    p.path(&format!("cache/actions/{}/{key}.json", &key[..2]))
}

#[test]
fn malformed_cache_entries_are_reported_never_followed_and_never_panic() {
    let outer = tempfile::tempdir().unwrap();
    let p = Project::with_base();
    p.write("recipe.yaml", BASE_RECIPE);
    assert_eq!(p.build_json(&["recipe.yaml"]).0, 0);
    let action = action_file(&p);
    let good = std::fs::read_to_string(&action).unwrap();
    let manifest: serde_json::Value = serde_json::from_str(&good).unwrap();
    let hash = manifest["files"][0]["hash"].as_str().unwrap().to_owned();
    let first_path = manifest["files"][0]["path"].as_str().unwrap().to_owned();
    let hostname = std::fs::read("/etc/hostname").unwrap_or_default();

    let tampered = [
        good.replacen(&format!("\"{first_path}\""), "\"../../x\"", 1),
        good.replacen(&hash, "../../../etc/hostname", 1),
        good.replacen(&hash, "a", 1),
        good[..good.len() / 2].to_owned(),
    ];
    for bad in &tampered {
        std::fs::write(&action, bad).unwrap();
        let verify = p.run(&["verify"]);
        assert_eq!(code(&verify), 1, "{bad}: {}", stderr(&verify));
        assert!(
            stderr(&verify).contains("is corrupt"),
            "{}",
            stderr(&verify)
        );
        for cmd in [&["status", "recipe.yaml"][..], &["plan", "recipe.yaml"]] {
            let out = p.run(cmd);
            assert!(
                code(&out) == 0 || code(&out) == 1,
                "{cmd:?}: {}",
                stderr(&out)
            );
        }
        let (code, events, err) = p.build_json(&["recipe.yaml"]);
        assert_eq!(code, 0, "{err}");
        assert_eq!(common::with_status(&events, "built"), ["patched"], "{bad}");
        assert!(!p.path("x").exists() && !p.path("cache/x").exists());
        let out = p.path("build/ud/patched");
        for (_, bytes) in common::tree_bytes(&out) {
            assert!(hostname.is_empty() || bytes != hostname);
        }
        assert!(p.run(&["verify"]).status.success());
    }

    // Stray files and links under the cache: reported, and gc removes the
    // stray itself, never what a link points at.
    std::fs::write(outer.path().join("precious"), b"keep").unwrap();
    std::fs::create_dir_all(p.path("cache/actions/zz")).unwrap();
    std::fs::write(p.path("cache/actions/zz/junk"), b"junk").unwrap();
    std::fs::write(p.path("cache/actions/stray"), b"junk").unwrap();
    std::os::unix::fs::symlink(outer.path(), p.path("cache/objects/zz")).unwrap();
    std::os::unix::fs::symlink(outer.path(), p.path("cache/partial/link")).unwrap();
    let verify = p.run(&["verify"]);
    assert_eq!(code(&verify), 1);
    assert!(
        stderr(&verify).contains("stray file"),
        "{}",
        stderr(&verify)
    );
    assert!(
        stderr(&verify).contains("actions/zz/junk"),
        "{}",
        stderr(&verify)
    );
    let gc = p.run(&["gc", "--yes"]);
    assert_eq!(code(&gc), 0, "{}", stderr(&gc));
    assert!(p.run(&["verify"]).status.success());
    assert_eq!(
        std::fs::read(outer.path().join("precious")).unwrap(),
        b"keep"
    );
    assert!(!p.path("cache/objects/zz").exists());
    let (code, events, _) = p.build_json(&["recipe.yaml"]);
    assert_eq!(code, 0);
    assert_eq!(common::with_status(&events, "cached"), ["patched"]);
}

#[test]
fn verify_repair_removes_corrupt_entries_and_the_next_build_restores_them() {
    let p = Project::with_base();
    p.write("recipe.yaml", BASE_RECIPE);
    assert_eq!(p.build_json(&["recipe.yaml"]).0, 0);
    let config = p.path("build/ud/patched/config.json");
    edit_in_place(&config);
    let out = p.run(&["verify", "--repair"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stderr(&out).contains("(removed)"), "{}", stderr(&out));
    assert!(p.run(&["verify"]).status.success());
    let (code, events, _) = p.build_json(&["recipe.yaml"]);
    assert_eq!(code, 0);
    assert_eq!(common::with_status(&events, "built"), ["patched"]);
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
    assert_eq!(config["max_position_embeddings"], 4096);
}

#[test]
fn an_output_replaced_or_edited_under_build_is_repaired_by_the_next_build() {
    let p = Project::with_base();
    p.write("recipe.yaml", BASE_RECIPE);
    assert_eq!(p.build_json(&["recipe.yaml"]).0, 0);
    let out = p.path("build/ud/patched");
    let good = common::tree_bytes(&out);
    // Replaced by a new file (the object is untouched): materialized again.
    std::fs::remove_file(out.join("config.json")).unwrap();
    std::fs::write(out.join("config.json"), "{}").unwrap();
    let (code, events, _) = p.build_json(&["recipe.yaml"]);
    assert_eq!(code, 0);
    assert_eq!(common::with_status(&events, "cached"), ["patched"]);
    assert_eq!(common::tree_bytes(&out), good);
    // Edited in place (the object is the same inode): rebuilt.
    edit_in_place(&out.join("model.safetensors"));
    let (code, events, err) = p.build_json(&["recipe.yaml"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(common::with_status(&events, "built"), ["patched"]);
    let warned = events.iter().any(|e| {
        e["event"] == "warning" && e["message"].as_str().unwrap().contains("changed in place")
    });
    assert!(warned, "{events:?}");
    assert_eq!(common::tree_bytes(&out), good);
    assert!(p.run(&["verify"]).status.success());
}
