//! Every kind of bad recipe exits with code 2 before anything runs, naming
//! file:line:col, showing the line, and suggesting a fix where one is likely.

mod common;

use common::Project;

/// Runs a build of `recipe` and returns (exit code, stderr).
fn fail(recipe: &str) -> (i32, String, Project) {
    let p = Project::with_base();
    p.write("recipe.yaml", recipe);
    let out = p.run(&["recipe.yaml"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code().unwrap(), err, p)
}

fn assert_located(recipe: &str, message: &str, location: &str) -> String {
    let (code, err, p) = fail(recipe);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains(message), "expected {message:?} in:\n{err}");
    assert!(
        err.contains(&format!("--> recipe.yaml:{location}")),
        "expected location {location} in:\n{err}"
    );
    assert!(!p.path("build").exists(), "nothing may be built");
    err
}

const HEAD: &str = "yibuild: 1\nname: t\nsources:\n  base: ./models/base\nsteps:\n";

#[test]
fn unknown_key_suggests_the_right_one() {
    let err = assert_located(
        &format!("{HEAD}  p:\n    patch_config:\n      model: base\n      sett: {{a: 1}}\n"),
        "unknown key `sett` in patch_config step `p`",
        "9:7",
    );
    assert!(err.contains("did you mean `set`?"), "{err}");
    assert!(
        err.contains("9 |       sett: {a: 1}"),
        "the offending line is shown:\n{err}"
    );
}

#[test]
fn unknown_top_level_key() {
    let err = assert_located(
        "yibuild: 1\nname: t\nsteps: {}\ndefualt: [x]\n",
        "unknown key `defualt` in the recipe",
        "4:1",
    );
    assert!(err.contains("did you mean `default`?"), "{err}");
}

#[test]
fn unknown_reference() {
    let err = assert_located(
        &format!("{HEAD}  p:\n    patch_config:\n      model: bsae\n      set: {{a: 1}}\n"),
        "step `p` refers to `bsae`, which is neither a source nor a step",
        "8:14",
    );
    assert!(err.contains("did you mean `base`?"), "{err}");
}

#[test]
fn cycle_is_printed() {
    let recipe = format!(
        "{HEAD}  a:\n    patch_config: {{model: c, set: {{x: 1}}}}\n  b:\n    patch_config: {{model: a, set: {{x: 1}}}}\n  c:\n    patch_config: {{model: b, set: {{x: 1}}}}\n"
    );
    let (code, err, _) = fail(&recipe);
    assert_eq!(code, 2);
    assert!(err.contains("dependency cycle: a -> c -> b -> a"), "{err}");
    assert!(err.contains("--> recipe.yaml:9:27"), "{err}");
}

#[test]
fn duplicate_step_name() {
    assert_located(
        &format!("{HEAD}  p:\n    patch_config: {{model: base, set: {{x: 1}}}}\n  p:\n    patch_config: {{model: base, set: {{x: 2}}}}\n"),
        "duplicate key `p`",
        "8:3",
    );
}

#[test]
fn source_and_step_with_one_name() {
    assert_located(
        &format!("{HEAD}  base:\n    patch_config: {{model: base, set: {{x: 1}}}}\n"),
        "`base` is both a source and a step",
        "6:3",
    );
}

#[test]
fn step_without_kind() {
    assert_located(
        &format!("{HEAD}  p:\n    seed: 1\n"),
        "step `p` has no kind; expected one of",
        "6:3",
    );
}

#[test]
fn step_with_two_kinds() {
    assert_located(
        &format!("{HEAD}  p:\n    patch_config: {{model: base, set: {{x: 1}}}}\n    run: {{command: true}}\n"),
        "step `p` has two kinds, `patch_config` and `run`",
        "8:5",
    );
}

#[test]
fn misspelled_kind() {
    let err = assert_located(
        &format!("{HEAD}  p:\n    patch_cnofig: {{model: base}}\n"),
        "unknown key `patch_cnofig` in step `p`",
        "7:5",
    );
    assert!(err.contains("did you mean `patch_config`?"), "{err}");
}

#[test]
fn yaml_syntax_error() {
    let (code, err, _) = fail("yibuild: 1\nname: [unclosed\n");
    assert_eq!(code, 2);
    assert!(
        err.contains("invalid YAML") && err.contains("recipe.yaml:"),
        "{err}"
    );
}

#[test]
fn wrong_value_type() {
    assert_located(
        &format!("{HEAD}  p:\n    run: {{command: [a, b]}}\n"),
        "`command` must be a string, found a list",
        "7:21",
    );
}

#[test]
fn unknown_target_and_missing_source() {
    let p = Project::with_base();
    p.write(
        "recipe.yaml",
        &format!("{HEAD}  p:\n    patch_config: {{model: base, set: {{x: 1}}}}\n"),
    );
    let out = p.run(&["recipe.yaml", "q"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no step `q`"));
    p.write(
        "r2.yaml",
        &format!(
            "{}  p:\n    patch_config: {{model: base, set: {{x: 1}}}}\n",
            HEAD.replace("./models/base", "./models/nope")
        ),
    );
    let out = p.run(&["r2.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("source `base`") && err.contains("models/nope does not exist"),
        "{err}"
    );
}

#[test]
fn non_finite_config_values_are_refused() {
    for (value, shown) in [
        (".inf", "inf"),
        ("-.inf", "-inf"),
        (".nan", "NaN"),
        ("1e400", "inf"),
    ] {
        let line = format!("      set: {{rope_theta: {value}}}");
        let col = line.find(value).unwrap() + 1;
        let err = assert_located(
            &format!("{HEAD}  p:\n    patch_config:\n      model: base\n{line}\n"),
            &format!("`set.rope_theta` is {shown}, which no JSON config can hold"),
            &format!("9:{col}"),
        );
        assert!(err.contains("write a finite number"), "{err}");
    }
    // Inside lists and nested objects, and in the other files' edits.
    assert_located(
        &format!(
            "{HEAD}  p:\n    patch_config:\n      model: base\n      generation_config:\n        set: {{x: [1, .nan]}}\n"
        ),
        "`set.x` is NaN",
        "10:22",
    );
}
