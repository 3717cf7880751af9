//! Crash safety, concurrent builds, mtime-only changes and failure isolation.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use common::{tree_bytes, with_status, Project};

const SLOW: &str = r#"
yibuild: 1
name: slow
sources:
  base: ./models/base
steps:
  big:
    run:
      command: "yes yibuild | head -c 3000000 > \"$YIBUILD_OUT/big.bin\"; cp \"$YIBUILD_IN_BASE/config.json\" \"$YIBUILD_OUT/\"; sleep 2; echo done > \"$YIBUILD_OUT/ok\""
      inputs: [base]
  after:
    patch_config: {model: big, set: {max_position_embeddings: 4096}}
"#;

#[test]
fn kill_9_mid_step_then_rebuild_is_clean_and_identical() {
    let p = Project::with_base();
    p.write("recipe.yaml", SLOW);
    let mut child = p
        .cmd(&["--json", "recipe.yaml"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    loop {
        let line = lines.next().expect("build reports").unwrap();
        if line.contains(r#""event":"started""#) && line.contains(r#""big""#) {
            break;
        }
    }
    std::thread::sleep(std::time::Duration::from_millis(700));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        !p.path("build/slow/big").exists(),
        "no half-built output is published"
    );

    let (code, events, err) = p.build_json(&["recipe.yaml"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(with_status(&events, "built"), ["after", "big"]);
    let verify = p.run(&["verify"]);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    assert_eq!(std::fs::read_dir(p.path("cache/tmp")).unwrap().count(), 0);

    let clean = Project::with_base();
    clean.write("recipe.yaml", SLOW);
    assert_eq!(clean.build_json(&["recipe.yaml"]).0, 0);
    assert_eq!(
        tree_bytes(&p.path("build/slow")),
        tree_bytes(&clean.path("build/slow"))
    );
}

#[test]
fn two_concurrent_builds_share_one_cache() {
    let p = Project::with_base();
    p.write("recipe.yaml", SLOW);
    let a = p
        .cmd(&["--json", "--build-dir", "build-a", "recipe.yaml"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let b = p
        .cmd(&["--json", "--build-dir", "build-b", "recipe.yaml"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(a.status.success() && b.status.success());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&a.stdout),
        String::from_utf8_lossy(&b.stdout)
    );
    // One built, the other waited for the lock and then found everything cached.
    assert_eq!(text.matches(r#""status":"built""#).count(), 2, "{text}");
    assert_eq!(text.matches(r#""status":"cached""#).count(), 2, "{text}");
    assert!(p.run(&["verify"]).status.success());
    assert_eq!(
        tree_bytes(&p.path("build-a/slow")),
        tree_bytes(&p.path("build-b/slow"))
    );
}

#[test]
fn touching_a_source_rehashes_it_but_rebuilds_nothing() {
    let p = Project::with_base();
    p.write("recipe.yaml", SLOW.replace("sleep 2; ", "").as_str());
    assert_eq!(p.build_json(&["recipe.yaml"]).0, 0);
    let st = std::process::Command::new("touch")
        .args([
            "-d",
            "2030-01-01",
            p.path("models/base/config.json").to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(st.success());
    let (code, events, _) = p.build_json(&["recipe.yaml"]);
    assert_eq!(code, 0);
    assert!(with_status(&events, "built").is_empty());
    // A real content change does rebuild.
    let cfg = std::fs::read_to_string(p.path("models/base/config.json")).unwrap();
    std::fs::write(
        p.path("models/base/config.json"),
        cfg.replace("\"hidden_act\": \"silu\"", "\"hidden_act\": \"gelu\""),
    )
    .unwrap();
    let (_, events, _) = p.build_json(&["recipe.yaml"]);
    assert_eq!(with_status(&events, "built"), ["after", "big"]);
}

#[test]
fn a_failed_step_stops_its_dependents_and_lets_other_branches_finish() {
    let p = Project::with_base();
    p.write(
        "recipe.yaml",
        r#"
yibuild: 1
name: branches
sources:
  base: ./models/base
steps:
  broken:
    run: {command: "echo partial > \"$YIBUILD_OUT/x\"; echo 'converter: out of cheese' >&2; exit 3"}
  after_broken:
    run: {command: "true", inputs: [broken]}
  fine:
    patch_config: {model: base, set: {max_position_embeddings: 4096}}
"#,
    );
    let (code, events, _) = p.build_json(&["-j1", "recipe.yaml"]);
    assert_eq!(code, 1);
    assert_eq!(with_status(&events, "built"), ["fine"]);
    assert_eq!(with_status(&events, "failed"), ["after_broken", "broken"]);
    let broken = events
        .iter()
        .find(|e| e["step"] == "broken" && e["event"] == "step")
        .unwrap();
    let msg = broken["error"].as_str().unwrap();
    assert!(
        msg.contains("exit status: 3") && msg.contains("out of cheese"),
        "{msg}"
    );
    let dep = events
        .iter()
        .find(|e| e["step"] == "after_broken" && e["event"] == "step")
        .unwrap();
    assert_eq!(dep["error"], "not built because its input `broken` failed");
    assert!(!p.path("build/branches/broken").exists());
    assert!(p.path("build/branches/fine/config.json").exists());
    assert_eq!(std::fs::read_dir(p.path("cache/tmp")).unwrap().count(), 0);
    let last = events.last().unwrap();
    assert_eq!(last["ok"], false);
}
