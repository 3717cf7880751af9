//! Sweeps through the real binary: matrix expansion, fan-out of dependents,
//! shared steps, gather into a report, cache reuse across sweeps, instance
//! selection, the plan and the variant limit.

mod common;

use common::{statuses, with_status, Project};

/// A sweep over a fixture model: a shared config patch, a matrixed patch, a
/// fanned-out "eval" (a `run` step writing results.json in the eval step's
/// schema, its perplexity a function of the variant), a base eval, a report.
fn recipe(densities: &str) -> String {
    format!(
        r#"
yibuild: 1
name: sweep
sources:
  base: ./models/base
steps:
  shared:
    patch_config:
      model: base
      set: {{max_position_embeddings: 4096}}
  merged:
    matrix:
      density: {densities}
      weight: [0.9, 1.0]
    patch_config:
      model: shared
      set:
        rms_norm_eps: ${{{{ matrix.density }}}}
        rope_theta: '${{{{ matrix.weight }}}}'
  ppl:
    run:
      command: >-
        test -f "$YIBUILD_IN_MERGED/config.json" &&
        printf '{{"version":1,"perplexity":{{"text":{{"name":"wiki"}},"perplexity":%s}},"passkey":{{"lengths":[{{"length":256,"accuracy":%s}}]}},"timing":{{"device":"cpu"}}}}'
        $(awk 'BEGIN{{print 10 - 4 * ${{{{ matrix.density }}}} + ${{{{ matrix.weight }}}}}}')
        $(awk 'BEGIN{{print ${{{{ matrix.density }}}} / 2}}') > "$YIBUILD_OUT/results.json"
      inputs: [merged]
      outputs: [results.json]
  base-ppl:
    run:
      command: >-
        printf '{{"version":1,"perplexity":{{"text":{{"name":"wiki"}},"perplexity":12.5}},"timing":{{}}}}' > "$YIBUILD_OUT/results.json"
      inputs: [base]
      outputs: [results.json]
  sweep:
    report:
      evals: ['ppl[*]', base-ppl]
      select: {{metric: ppl.wiki, goal: min}}
  best:
    select: {{report: sweep, models: ['merged[*]']}}
  release:
    package: {{model: best}}
default: [release]
"#
    )
}

fn project(densities: &str) -> Project {
    let p = Project::with_base();
    p.write("recipe.yaml", &recipe(densities));
    p
}

fn read_json(p: &Project, rel: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(p.path(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    serde_json::from_str(&text).unwrap()
}

#[test]
fn a_sweep_builds_every_variant_once_and_reports_their_own_numbers() {
    let p = project("[0.5, 0.75]");
    let plan = p.run(&["plan", "recipe.yaml"]);
    let plan = String::from_utf8_lossy(&plan.stdout);
    assert!(
        plan.contains(
            "matrix merged: 4 of 4 variants over density × weight (0 cached, 4 to build)"
        ),
        "{plan}"
    );
    assert!(plan.contains("matrix ppl: 4 of 4 variants"), "{plan}");

    let (code, events, err) = p.build_json(&["recipe.yaml"]);
    assert_eq!(code, 0, "{err}");
    let built = with_status(&events, "built");
    assert_eq!(
        built,
        [
            "base-ppl",
            "best",
            "merged[density=0.5,weight=0.9]",
            "merged[density=0.5,weight=1.0]",
            "merged[density=0.75,weight=0.9]",
            "merged[density=0.75,weight=1.0]",
            "ppl[density=0.5,weight=0.9]",
            "ppl[density=0.5,weight=1.0]",
            "ppl[density=0.75,weight=0.9]",
            "ppl[density=0.75,weight=1.0]",
            "release",
            "shared",
            "sweep",
        ]
    );
    // The matrix value reached the config with its type.
    let config = read_json(
        &p,
        "build/sweep/merged[density=0.75,weight=0.9]/config.json",
    );
    assert_eq!(config["rms_norm_eps"], 0.75);
    assert_eq!(config["rope_theta"], 0.9);
    assert_eq!(config["max_position_embeddings"], 4096);

    // The report's numbers are the eval results, one row per variant.
    let report = read_json(&p, "build/sweep/sweep/report.json");
    let rows = report["rows"].as_array().unwrap();
    let labels: Vec<&str> = rows
        .iter()
        .map(|r| r["variant"].as_str().unwrap())
        .collect();
    assert_eq!(
        labels,
        [
            "density=0.5,weight=0.9",
            "density=0.5,weight=1.0",
            "density=0.75,weight=0.9",
            "density=0.75,weight=1.0",
            "base-ppl"
        ]
    );
    for row in rows {
        let eval = row["evals"][0].as_str().unwrap();
        let results = read_json(&p, &format!("build/sweep/{eval}/results.json"));
        assert_eq!(
            row["metrics"]["ppl.wiki"].as_f64(),
            results["perplexity"]["perplexity"].as_f64()
        );
        assert_eq!(
            row["metrics"]["passkey.256"].as_f64(),
            results["passkey"]["lengths"][0]["accuracy"].as_f64()
        );
    }
    assert_eq!(report["selected"]["variant"], "density=0.75,weight=0.9");
    assert_eq!(report["selected"]["value"], 7.9);
    let md = std::fs::read_to_string(p.path("build/sweep/sweep/report.md")).unwrap();
    assert!(
        md.contains("| density=0.75,weight=0.9 | 0.75 | 0.9 | **7.9000** | **0.3750** |"),
        "{md}"
    );
    assert!(md.contains("![metrics against each axis](report.svg)"));
    let svg = std::fs::read_to_string(p.path("build/sweep/sweep/report.svg")).unwrap();
    assert!(svg.contains("ppl.wiki vs density") && svg.contains("passkey.256 vs weight"));
    let png = std::fs::read(p.path("build/sweep/sweep/report.png")).unwrap();
    assert_eq!(&png[1..4], b"PNG");

    // The chosen variant is released, and its card names the sweep it won.
    let card = std::fs::read_to_string(p.path("build/sweep/release/README.md")).unwrap();
    assert!(
        card.contains("This model is `merged[density=0.75,weight=0.9]`, chosen by the sweep `sweep` over density × weight (4 variants) for the lowest `ppl.wiki` (7.9000)."),
        "{card}"
    );
    let config = read_json(&p, "build/sweep/release/config.json");
    assert_eq!(
        (
            config["rms_norm_eps"].as_f64(),
            config["rope_theta"].as_f64()
        ),
        (Some(0.75), Some(0.9))
    );
    assert!(!p
        .path("build/sweep/release/yibuild-selection.json")
        .exists());

    let out = p.run(&["report", "recipe.yaml"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(table.contains("7.9000*"), "{table}");
    assert!(
        table.contains("selected: density=0.75,weight=0.9 (min ppl.wiki)"),
        "{table}"
    );

    // Adding a density builds only the new chains (and what gathers them:
    // the report, the selection, the release whose card describes the sweep);
    // changing one value rebuilds only its chains.
    p.write("recipe.yaml", &recipe("[0.5, 0.6, 0.75]"));
    let plan = p.run(&["plan", "recipe.yaml"]);
    let plan = String::from_utf8_lossy(&plan.stdout);
    assert!(
        plan.contains(
            "matrix merged: 6 of 6 variants over density × weight (4 cached, 2 to build)"
        ),
        "{plan}"
    );
    let (code, events, err) = p.build_json(&["recipe.yaml"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        with_status(&events, "built"),
        [
            "best",
            "merged[density=0.6,weight=0.9]",
            "merged[density=0.6,weight=1.0]",
            "ppl[density=0.6,weight=0.9]",
            "ppl[density=0.6,weight=1.0]",
            "release",
            "sweep",
        ]
    );
    assert_eq!(with_status(&events, "cached").len(), 10);
    p.write("recipe.yaml", &recipe("[0.5, 0.6, 0.8]"));
    let (code, events, err) = p.build_json(&["recipe.yaml"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        with_status(&events, "built"),
        [
            "best",
            "merged[density=0.8,weight=0.9]",
            "merged[density=0.8,weight=1.0]",
            "ppl[density=0.8,weight=0.9]",
            "ppl[density=0.8,weight=1.0]",
            "release",
            "sweep",
        ]
    );
}

#[test]
fn one_instance_or_a_slice_can_be_built_by_name() {
    let p = project("[0.5, 0.75]");
    let (code, events, err) = p.build_json(&["recipe.yaml", "merged[density=0.5]"]);
    assert_eq!(code, 0, "{err}");
    let names: Vec<String> = statuses(&events).into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        [
            "merged[density=0.5,weight=0.9]",
            "merged[density=0.5,weight=1.0]",
            "shared"
        ]
    );
    let (code, events, err) =
        p.build_json(&["recipe.yaml", "ppl[density=0.75,weight=1.0]", "base-ppl"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        with_status(&events, "built"),
        [
            "base-ppl",
            "merged[density=0.75,weight=1.0]",
            "ppl[density=0.75,weight=1.0]"
        ]
    );
    let out = p.run(&["recipe.yaml", "merged[density=0.3]"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_matrix_over_the_limit_is_refused_before_anything_runs() {
    let p = project("[0.5, 0.6, 0.75]");
    let out = p.run(&["plan", "recipe.yaml", "--max-variants", "5"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("step `merged` expands to 6 variants, more than the limit of 5"),
        "{err}"
    );
    assert!(err.contains("recipe.yaml:13:7"), "{err}");
    assert!(err.contains("--max-variants"), "{err}");
    let out = p.run(&["recipe.yaml", "--max-variants", "5"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(!p.path("build").exists() && !p.path("cache").exists());
    let out = p.run(&["plan", "recipe.yaml", "--max-variants", "6"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A merge sweep: each instance is byte-identical to the same merge written
/// without a matrix, and the cache shares it between the two recipes.
#[test]
fn a_merge_instance_is_the_same_merge_written_by_hand() {
    let p = Project::with_base();
    let base = yibuild::fixtures::TinyLlama::default();
    for (i, name) in ["ft-a", "ft-b"].iter().enumerate() {
        yibuild::fixtures::write_finetune(
            &base,
            &p.path(&format!("models/{name}")),
            7 + i as u64,
            0.3,
        )
        .unwrap();
    }
    let merge = |density: &str| {
        format!(
            r#"
      merge_method: dare_ties
      base_model: base
      models:
        - model: ft-a
          parameters:
            density: {density}
            weight: 0.5
        - model: ft-b
          parameters:
            density: {density}
            weight: 0.5
      dtype: float32"#
        )
    };
    let head = "yibuild: 1\nname: m\nsources:\n  base: ./models/base\n  ft-a: ./models/ft-a\n  ft-b: ./models/ft-b\nsteps:\n";
    p.write(
        "sweep.yaml",
        &format!(
            "{head}  merged:\n    matrix:\n      density: [0.5, 0.9]\n    merge:{}\n",
            merge("${{ matrix.density }}")
        ),
    );
    p.write(
        "single.yaml",
        &format!("{head}  by-hand:\n    merge:{}\n", merge("0.9")),
    );
    let (code, events, err) = p.build_json(&["sweep.yaml"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        with_status(&events, "built"),
        ["merged[density=0.5]", "merged[density=0.9]"]
    );
    let (code, events, err) = p.build_json(&["single.yaml"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(with_status(&events, "cached"), ["by-hand"]);
    let swept = common::tree_bytes(&p.path("build/m/merged[density=0.9]"));
    assert_eq!(swept, common::tree_bytes(&p.path("build/m/by-hand")));
    assert_ne!(
        swept,
        common::tree_bytes(&p.path("build/m/merged[density=0.5]"))
    );
}

#[test]
fn matrix_mistakes_are_recipe_errors_with_their_place() {
    let p = project("[0.5, 0.75]");
    let cases = [
        ("matrix:", "matrx:", "did you mean `matrix`?"),
        (
            "rms_norm_eps: ${{ matrix.density }}",
            "rms_norm_eps: ${{ matrix.densty }}",
            "bad.yaml:18:23",
        ),
        (
            "density: [0.5, 0.75]",
            "density: []",
            "axis `density` of step `merged` has no values",
        ),
    ];
    for (from, to, expected) in cases {
        p.write("bad.yaml", &recipe("[0.5, 0.75]").replacen(from, to, 1));
        let out = p.run(&["plan", "bad.yaml"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains(expected), "{to}: {err}");
    }
}
