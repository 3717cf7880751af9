//! After a tweak, only the steps that read what changed rebuild: on the demo,
//! a merge weight edit leaves the evals of the base and fine-tunes cached (they
//! borrow only the final model's tokenizer), and a chat-template edit leaves
//! every eval of the final model's weights cached. `explain`, `plan --json`
//! and `status --json` say why, with typed reasons.

mod common;

use common::{copy_demo, with_status, Project};
use serde_json::Value as Json;

/// A project holding a copy of the demo recipe and its tiny model family.
fn demo_project() -> Project {
    let p = Project::new();
    copy_demo(p.dir.path());
    p
}

/// Replaces exactly one occurrence of `from` in the project's recipe.
fn edit_recipe(p: &Project, from: &str, to: &str) {
    let path = p.path("tiny-demo.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.matches(from).count(), 1, "`{from}` once in the recipe");
    std::fs::write(&path, text.replace(from, to)).unwrap();
}

fn built(p: &Project) -> Vec<String> {
    let (code, events, stderr) = p.build_json(&["tiny-demo.yaml"]);
    assert_eq!(code, 0, "{stderr}");
    with_status(&events, "built")
}

fn sorted(names: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

fn json_lines(out: &std::process::Output) -> Vec<Json> {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect()
}

const FINAL_EVALS: [&str; 9] = [
    "ppl[model=final,text=arith]",
    "ppl[model=final,text=code]",
    "ppl[model=final,text=story]",
    "ppl[model=q8,text=arith]",
    "ppl[model=q8,text=code]",
    "ppl[model=q8,text=story]",
    "ppl[model=q4km,text=arith]",
    "ppl[model=q4km,text=code]",
    "ppl[model=q4km,text=story]",
];

#[test]
fn a_weight_edit_rebuilds_only_what_reads_the_weights() {
    let p = demo_project();
    assert_eq!(built(&p).len(), 28, "first build runs every step");

    edit_recipe(&p, "weight: 0.34", "weight: 0.30");

    // `explain` names the parameter with its old and new values.
    let explain = p.run(&["explain", "tiny-demo.yaml", "merged"]);
    let text = String::from_utf8_lossy(&explain.stdout);
    assert!(
        text.contains("parameter `config.models.1.parameters.weight` changed: 0.34 → 0.3"),
        "{text}"
    );
    let typed = json_lines(&p.run(&["--json", "explain", "tiny-demo.yaml", "merged"]));
    assert_eq!(typed.len(), 1);
    assert_eq!(typed[0]["event"], "state");
    assert_eq!(typed[0]["state"], "stale");
    assert_eq!(
        typed[0]["reasons"],
        serde_json::json!([{
            "reason": "parameter_changed",
            "parameter": "config.models.1.parameters.weight",
            "old": 0.34,
            "new": 0.3,
        }])
    );

    // `plan --json` and `status --json`: one object per step, typed reasons.
    let plan = json_lines(&p.run(&["--json", "plan", "tiny-demo.yaml"]));
    let patched = plan.iter().find(|v| v["step"] == "patched").unwrap();
    assert_eq!(patched["action"], "build");
    assert_eq!(patched["reasons"][0]["reason"], "input_pending");
    assert_eq!(patched["reasons"][0]["input"], "merged");
    let base_eval = plan
        .iter()
        .find(|v| v["step"] == "ppl[model=base,text=arith]")
        .unwrap();
    assert_eq!(base_eval["reasons"][0]["reason"], "input_pending");
    let status = json_lines(&p.run(&["--json", "status", "tiny-demo.yaml"]));
    assert_eq!(status.len(), 28);
    assert!(status
        .iter()
        .all(|v| v["event"] == "state" && v["kind"].is_string()));
    let merged = status.iter().find(|v| v["step"] == "merged").unwrap();
    assert_eq!(merged["state"], "stale");

    let mut expected = vec![
        "merged", "patched", "final", "q8", "q4km", "passkey", "release",
    ];
    expected.extend(FINAL_EVALS);
    assert_eq!(built(&p), sorted(&expected));
}

#[test]
fn a_chat_template_edit_rebuilds_no_eval_of_unchanged_weights() {
    let p = demo_project();
    assert_eq!(built(&p).len(), 28);

    edit_recipe(&p, "chat_template: orca-vicuna", "chat_template: chatml");

    let explain = p.run(&["explain", "tiny-demo.yaml", "final"]);
    let text = String::from_utf8_lossy(&explain.stdout);
    assert!(
        text.contains("parameter `chat_template` changed: \"") && text.contains("…"),
        "{text}"
    );
    let explain = p.run(&["explain", "tiny-demo.yaml", "q8"]);
    let text = String::from_utf8_lossy(&explain.stdout);
    assert!(text.contains("input `final` will be rebuilt"), "{text}");
    // The GGUF files embed the chat template (`tokenizer.chat_template`), so
    // both quantizations and their evals rebuild; the evals of `final` read
    // its config, weights and tokenizer.json, none of which changed.
    let mut expected = vec!["final", "q8", "q4km", "release"];
    expected.extend(&FINAL_EVALS[3..]);
    assert_eq!(built(&p), sorted(&expected));
}

#[test]
fn a_source_edit_names_the_file() {
    let p = demo_project();
    assert_eq!(built(&p).len(), 28);
    let text = p.path("tiny/data/code.txt");
    let mut bytes = std::fs::read(&text).unwrap();
    bytes.extend_from_slice(b"\nfn more() {}\n");
    std::fs::write(&text, bytes).unwrap();
    let typed = json_lines(&p.run(&[
        "--json",
        "explain",
        "tiny-demo.yaml",
        "ppl[model=base,text=code]",
    ]));
    let reason = &typed[0]["reasons"][0];
    assert_eq!(reason["reason"], "input_changed");
    assert_eq!(reason["input"], "code");
    assert_eq!(reason["files"], serde_json::json!(["(the file)"]));
    assert_eq!(
        built(&p),
        sorted(&[
            "ppl[model=base,text=code]",
            "ppl[model=ft-arith,text=code]",
            "ppl[model=ft-story,text=code]",
            "ppl[model=ft-code,text=code]",
            "ppl[model=final,text=code]",
            "ppl[model=q8,text=code]",
            "ppl[model=q4km,text=code]",
            "release",
        ])
    );
}
