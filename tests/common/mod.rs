//! Shared harness for the integration tests: a project folder with fixture
//! models, a recipe, and the `yibuild` binary run against it.

#![allow(dead_code)]

pub mod arch;
pub mod http;
pub mod hub_server;
pub mod pty;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use yibuild::fixtures::TinyLlama;

/// A temporary project: recipe, sources, cache and build folders.
pub struct Project {
    pub dir: tempfile::TempDir,
}

impl Project {
    /// An empty project.
    pub fn new() -> Project {
        Project {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// A project with a tiny base model at `models/base`.
    pub fn with_base() -> Project {
        let p = Project::new();
        TinyLlama::default().write(&p.path("models/base")).unwrap();
        p
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Writes a file relative to the project.
    pub fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p
    }

    /// The yibuild command, run in the project directory with its cache and build dirs.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_yibuild"));
        c.current_dir(self.dir.path())
            .env_remove("YIBUILD_CACHE_DIR")
            .env_remove("YIBUILD_BUILD_DIR")
            .env("NO_COLOR", "1")
            .args(args);
        c
    }

    /// Runs yibuild with `args` and returns its output.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    /// Runs a `--json` build and returns (exit code, events).
    pub fn build_json(&self, args: &[&str]) -> (i32, Vec<serde_json::Value>, String) {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        parse_output(self.run(&all))
    }
}

/// A `--json` run's (exit code, events, stderr).
pub fn parse_output(out: Output) -> (i32, Vec<serde_json::Value>, String) {
    (
        out.status.code().unwrap_or(-1),
        events(&out),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The JSON Lines events a `--json` run printed.
pub fn events(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad event {l:?}: {e}")))
        .collect()
}

/// The status of each step event, as (step, status) sorted by step.
pub fn statuses(events: &[serde_json::Value]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = events
        .iter()
        .filter(|e| e["event"] == "step")
        .map(|e| {
            (
                e["step"].as_str().unwrap().to_owned(),
                e["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    v.sort();
    v
}

/// Steps with the given status.
pub fn with_status(events: &[serde_json::Value], status: &str) -> Vec<String> {
    statuses(events)
        .into_iter()
        .filter(|(_, s)| s == status)
        .map(|(n, _)| n)
        .collect()
}

/// All files under `dir` with their bytes, sorted by relative path.
pub fn tree_bytes(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for rel in yibuild::cache::memo::list_files(dir).unwrap() {
        out.push((rel.clone(), std::fs::read(dir.join(&rel)).unwrap()));
    }
    out
}

/// Copies the folder `src` to `dst`, files and subfolders.
pub fn copy_tree(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &dst.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
        }
    }
}

/// Copies the demo recipe (`tiny-demo.yaml`) and its tiny model family
/// (`tiny/`) into `dir`.
pub fn copy_demo(dir: &Path) {
    let recipes = Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes");
    copy_tree(&recipes.join("tiny"), &dir.join("tiny"));
    std::fs::copy(recipes.join("tiny-demo.yaml"), dir.join("tiny-demo.yaml")).unwrap();
}
