//! Merge parameters are typed once (quoted numbers are numbers, anything
//! else is a located recipe error), step keys hash values rather than their
//! spelling, and an eval's key and results name the device that ran it.

mod common;

use common::{events, Project};
use yibuild::fixtures::{write_finetune, TinyLlama};
use yibuild::steps::Device;

/// A project with a base model and one fine-tune of it.
fn two_models() -> Project {
    let p = Project::with_base();
    write_finetune(&TinyLlama::default(), &p.path("models/ft"), 3, 0.2).unwrap();
    p
}

fn merge_config(weight: &str) -> String {
    format!(
        "merge_method: task_arithmetic\nbase_model: ./models/base\nmodels:\n  - model: ./models/ft\n    parameters:\n      weight: {weight}\n"
    )
}

/// Runs `yibuild merge` on a config with `weight` and returns the output's
/// (model.safetensors, config.json) bytes.
fn merged(p: &Project, name: &str, weight: &str) -> (Vec<u8>, Vec<u8>) {
    p.write(&format!("{name}.yml"), &merge_config(weight));
    let out = p.run(&["merge", &format!("{name}.yml"), name]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read = |f: &str| std::fs::read(p.path(name).join(f)).unwrap();
    (read("model.safetensors"), read("config.json"))
}

#[test]
fn a_quoted_number_is_the_number() {
    let p = two_models();
    let plain = merged(&p, "plain", "0.33");
    assert_eq!(merged(&p, "quoted", "\"0.33\""), plain);
    assert_eq!(merged(&p, "single", "' 0.33'"), plain);
    // The bug this guards against: a quoted weight read as 0.
    assert_ne!(merged(&p, "zero", "0").0, plain.0);
}

/// The 1-based line and column of the first `needle` in `text`.
fn location(text: &str, needle: &str) -> String {
    let (line, col) = text
        .lines()
        .enumerate()
        .find_map(|(i, l)| l.find(needle).map(|c| (i + 1, c + 1)))
        .unwrap();
    format!("{line}:{col}")
}

#[test]
fn a_value_that_is_not_a_number_is_a_located_recipe_error() {
    let p = two_models();
    let recipe = "yibuild: 1\nname: t\nsources:\n  base: ./models/base\n  ft: ./models/ft\nsteps:\n  m:\n    merge:\n      merge_method: linear\n      models:\n        - model: base\n          parameters: {weight: 0.5}\n        - model: ft\n          parameters: {weight: abc}\n";
    p.write("recipe.yaml", recipe);
    for args in [&["recipe.yaml"][..], &["plan", "recipe.yaml"]] {
        let out = p.run(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains("parameter `weight` must be a finite number (quoted or not), found `abc`"),
            "{err}"
        );
        let at = format!("--> recipe.yaml:{}", location(recipe, "abc"));
        assert!(err.contains(&at), "expected {at} in:\n{err}");
    }
    assert!(!p.path("build").exists());

    // The same for a mergekit config, and for the other kinds of values.
    for (value, message) in [
        (
            "[0.1, x]",
            "parameter `weight` must be a finite number (quoted or not), found `x`",
        ),
        (".nan", "must be a finite number (quoted or not), found NaN"),
        (
            "true",
            "must be a finite number (quoted or not), found true",
        ),
    ] {
        p.write("bad.yml", &merge_config(value));
        let out = p.run(&["merge", "bad.yml", "out"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{value}: {err}");
        assert!(err.contains(message), "{value}: {err}");
        assert!(err.contains("--> bad.yml:6:"), "{value}: {err}");
    }
    p.write(
        "flag.yml",
        &format!("{}parameters:\n  normalize: \"yes\"\n", merge_config("1")),
    );
    let out = p.run(&["merge", "flag.yml", "out"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("parameter `normalize` must be true or false, found `yes`"),
        "{err}"
    );
    assert!(err.contains("--> flag.yml:8:14"), "{err}");
    assert!(!p.path("out").exists());
}

/// The key `plan --json` gives step `step` of `recipe`.
fn planned_key(p: &Project, recipe: &str, step: &str) -> String {
    p.write("recipe.yaml", recipe);
    let out = p.run(&["--json", "plan", "recipe.yaml"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let entry = events(&out)
        .into_iter()
        .find(|e| e["step"] == step)
        .unwrap_or_else(|| panic!("{step} is not planned"));
    entry["key"].as_str().unwrap().to_owned()
}

fn merge_recipe(weight: &str) -> String {
    format!(
        "yibuild: 1\nname: t\nsources:\n  base: ./models/base\n  ft: ./models/ft\nsteps:\n  m:\n    merge:\n      merge_method: task_arithmetic\n      base_model: base\n      models:\n        - model: ft\n          parameters: {{weight: {weight}}}\n"
    )
}

#[test]
fn spellings_of_one_number_share_a_key() {
    let p = two_models();
    let one = planned_key(&p, &merge_recipe("1"), "m");
    for spelling in ["1.0", "\"1\"", "1e0", "'1.00'"] {
        assert_eq!(
            planned_key(&p, &merge_recipe(spelling), "m"),
            one,
            "{spelling}"
        );
    }
    assert_ne!(planned_key(&p, &merge_recipe("0.5"), "m"), one);

    // Built with `1`, a build with `1.0` is a cache hit.
    p.write("recipe.yaml", &merge_recipe("1"));
    let (code, ev, err) = p.build_json(&["recipe.yaml"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(common::with_status(&ev, "built"), ["m"]);
    p.write("recipe.yaml", &merge_recipe("1.0"));
    let (code, ev, err) = p.build_json(&["recipe.yaml"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(common::with_status(&ev, "cached"), ["m"]);
}

fn eval_recipe(device: &str) -> String {
    format!(
        "yibuild: 1\nname: t\nsources:\n  base: ./models/base\n  wiki: ./wiki.txt\nsteps:\n  ppl:\n    eval: {{model: base,{device} perplexity: {{text: wiki, context: 16}}}}\n"
    )
}

#[test]
fn an_auto_eval_keys_and_records_the_device_that_ran() {
    let p = Project::with_base();
    p.write(
        "wiki.txt",
        &"the cat sat on a mat and then it ran far away ".repeat(8),
    );
    let here = yibuild::eval::resolve_device(Device::Auto, Device::Auto);
    let name = match here {
        Device::Cpu => "cpu",
        Device::Cuda => "cuda",
        Device::Auto => unreachable!("resolution never gives auto"),
    };
    let other = if name == "cpu" { "cuda" } else { "cpu" };
    println!("`auto` resolves to {name} on this machine");
    let auto = planned_key(&p, &eval_recipe(""), "ppl");
    assert_eq!(auto, planned_key(&p, &eval_recipe(" device: auto,"), "ppl"));
    assert_eq!(
        auto,
        planned_key(&p, &eval_recipe(&format!(" device: {name},")), "ppl")
    );
    assert_ne!(
        auto,
        planned_key(&p, &eval_recipe(&format!(" device: {other},")), "ppl"),
        "a result of one device is never reused for the other"
    );
    // `--device` decides for `auto` steps, before the machine does.
    p.write("recipe.yaml", &eval_recipe(""));
    let out = p.run(&["--json", "--device", other, "plan", "recipe.yaml"]);
    assert!(!String::from_utf8_lossy(&out.stdout).contains(&auto));

    p.write("recipe.yaml", &eval_recipe(" device: auto,"));
    let (code, _, err) = p.build_json(&["recipe.yaml"]);
    assert_eq!(code, 0, "{err}");
    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(p.path("build/t/ppl/results.json")).unwrap())
            .unwrap();
    assert_eq!(results["device"], name);
    // The cached result of `device: auto` is the result of `device: <name>`.
    p.write("recipe.yaml", &eval_recipe(&format!(" device: {name},")));
    let (code, ev, err) = p.build_json(&["recipe.yaml"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(common::with_status(&ev, "cached"), ["ppl"]);
}
