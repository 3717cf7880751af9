//! The command line around the build: steps named like commands, `--`,
//! completions and the man page, and colour on and off a terminal.

mod common;

use common::pty::stderr_on_a_terminal;
use common::Project;

/// Two steps, one of them named like the `merge` command.
const RECIPE: &str = r#"
yibuild: 1
name: cli
sources:
  base: ./models/base
steps:
  merge:
    patch_config: {model: base, set: {max_position_embeddings: 4096}}
  gc:
    patch_config: {model: merge, set: {rope_theta: 20000.0}}
"#;

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn a_step_named_like_a_command_gets_the_double_dash_hint_and_double_dash_builds_it() {
    let p = Project::with_base();
    p.write("recipe.yaml", RECIPE);
    // clap reads `merge` as the command, which then lacks its arguments.
    let out = p.run(&["recipe.yaml", "merge"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("hint: to build a step named `merge`, put the steps after `--`: yibuild recipe.yaml -- merge"),
        "{err}"
    );
    // `gc` needs no argument: clap accepts the line, yibuild refuses to
    // guess and collects no garbage.
    let out = p.run(&["--cache-dir", "c", "recipe.yaml", "gc"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out)
            .contains("`gc` after the recipe `recipe.yaml` is read as the `yibuild gc` command"),
        "{}",
        stderr(&out)
    );
    assert!(!p.path("build").exists() && !p.path("c").exists());
    // A command in its own place is not a collision.
    let out = p.run(&["--cache-dir", "c", "plan", "recipe.yaml"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!stderr(&out).contains("hint"), "{}", stderr(&out));
    // After `--`, names are steps.
    let (code, events, err) = p.build_json(&["recipe.yaml", "--", "merge"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(common::with_status(&events, "built"), ["merge"]);
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(p.path("build/cli/merge/config.json")).unwrap())
            .unwrap();
    assert_eq!(config["max_position_embeddings"], 4096);
    let (code, events, err) = p.build_json(&["recipe.yaml", "--", "gc"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(common::with_status(&events, "built"), ["gc"]);
}

#[test]
fn help_shows_real_invocations() {
    let p = Project::new();
    let help = stdout(&p.run(&["--help"]));
    for line in [
        "Usage: yibuild [OPTIONS] RECIPE [STEP]...",
        "yibuild [OPTIONS] RECIPE -- STEP...",
        "yibuild [OPTIONS] COMMAND [ARGS]...",
        "yibuild recipe.yaml -- merge",
    ] {
        assert!(help.contains(line), "{line:?} missing from:\n{help}");
    }
    assert!(!help.contains("<COMMAND>\n"), "{help}");
    let plan = stdout(&p.run(&["plan", "--help"]));
    assert!(
        plan.contains("Usage: yibuild plan [OPTIONS] <RECIPE> [STEP]..."),
        "{plan}"
    );
    assert!(plan.contains("The recipe file"), "{plan}");
    // A missing recipe shows the same usage, and exits 2.
    let out = p.run(&[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("yibuild [OPTIONS] RECIPE [STEP]..."),
        "{}",
        stderr(&out)
    );
}

#[test]
fn completions_and_man_page_come_from_the_command_definitions() {
    let p = Project::new();
    let out = p.run(&["completions", "bash"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let bash = stdout(&out);
    assert!(bash.contains("_yibuild()"), "{bash}");
    for word in [
        "plan",
        "merge",
        "completions",
        "--out-shard-size",
        "--allow-crimes",
        "--mem-budget",
    ] {
        assert!(
            bash.contains(word),
            "{word} missing from the bash completions"
        );
    }
    let zsh = stdout(&p.run(&["completions", "zsh"]));
    assert!(zsh.starts_with("#compdef yibuild"), "{zsh}");
    let out = p.run(&["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("invalid value 'tcsh'"),
        "{}",
        stderr(&out)
    );
    let man = stdout(&p.run(&["man"]));
    assert!(man.contains(".TH yibuild 1"), "{man}");
    assert!(
        man.contains("yibuild\\-merge") || man.contains("merge"),
        "{man}"
    );
    assert!(man.contains("RECIPE"), "{man}");
}

/// A project with RECIPE, ready to build.
fn project() -> Project {
    let p = Project::with_base();
    p.write("recipe.yaml", RECIPE);
    p
}

fn has_escape(bytes: &[u8]) -> bool {
    bytes.contains(&0x1b)
}

/// Whether `bytes` hold a colour or style sequence (ESC [ digits ; ... m),
/// as opposed to the cursor movements a progress bar needs.
fn has_colour(bytes: &[u8]) -> bool {
    bytes.windows(2).enumerate().any(|(i, w)| {
        w == b"\x1b[" && {
            let rest = &bytes[i + 2..];
            let n = rest
                .iter()
                .take_while(|b| b.is_ascii_digit() || **b == b';')
                .count();
            rest.get(n) == Some(&b'm')
        }
    })
}

#[test]
fn clicolor_force_colours_status_lines_off_a_terminal_and_no_color_wins() {
    let p = project();
    let plain = p.run(&["recipe.yaml"]);
    assert_eq!(plain.status.code(), Some(0), "{}", stderr(&plain));
    assert!(!has_escape(&plain.stderr), "{}", stderr(&plain));
    let forced = p
        .cmd(&["recipe.yaml"])
        .env_remove("NO_COLOR")
        .env("CLICOLOR_FORCE", "1")
        .output()
        .unwrap();
    assert_eq!(forced.status.code(), Some(0));
    let err = stderr(&forced);
    assert!(err.contains("\x1b[1;32m    Finished\x1b[0m"), "{err:?}");
    let both = p
        .cmd(&["recipe.yaml"])
        .env("NO_COLOR", "1")
        .env("CLICOLOR_FORCE", "1")
        .output()
        .unwrap();
    assert!(!has_escape(&both.stderr), "{:?}", stderr(&both));
}

#[test]
fn a_terminal_gets_colour_but_term_dumb_and_no_color_get_plain_lines() {
    let p = project();
    let run = |term: &str, no_color: bool| {
        let mut cmd = p.cmd(&["recipe.yaml"]);
        cmd.env_remove("NO_COLOR")
            .env_remove("CLICOLOR_FORCE")
            .env_remove("CLICOLOR");
        if no_color {
            cmd.env("NO_COLOR", "1");
        }
        let (code, bytes) = stderr_on_a_terminal(cmd, term);
        assert_eq!(code, 0, "{}", String::from_utf8_lossy(&bytes));
        bytes
    };
    let xterm = run("xterm", false);
    assert!(
        String::from_utf8_lossy(&xterm).contains("\x1b[1;32m    Finished"),
        "{:?}",
        String::from_utf8_lossy(&xterm)
    );
    let dumb = run("dumb", false);
    let text = String::from_utf8_lossy(&dumb);
    assert!(!has_escape(&dumb), "{text:?}");
    assert!(text.contains("Finished"), "{text:?}");
    assert!(has_colour(&xterm));
    let no_color = run("xterm", true);
    let text = String::from_utf8_lossy(&no_color);
    assert!(!has_colour(&no_color), "{text:?}");
    assert!(text.contains("Finished"), "{text:?}");
}
