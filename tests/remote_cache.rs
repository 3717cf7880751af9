//! The shared remote cache, against a real S3-compatible server (s3s-fs) on
//! loopback: restore on an empty cache, refusal of damaged entries, racing
//! writers, read-only mode, an unreachable endpoint, `cache push/pull`, and
//! resumable ranged downloads of large objects through the library.

mod common;
#[path = "common/s3_server.rs"]
mod s3_server;

use std::process::Output;

use common::{events, tree_bytes, with_status, Project};
use s3_server::{S3Server, SECRET_KEY};
use yibuild::cache::remote::{RemoteCache, RemoteMode, RemoteSettings, PART_SIZE};
use yibuild::cache::{Cache, Entry, Manifest};
use yibuild::fixtures::{write_finetune, TinyLlama};

const RECIPE: &str = r#"
yibuild: 1
name: shared
sources:
  base: ./models/base
  ft: ./models/ft
steps:
  merged:
    merge:
      merge_method: linear
      models:
        - model: base
          parameters: {weight: 0.5}
        - model: ft
          parameters: {weight: 0.5}
      dtype: float32
  patched:
    patch_config:
      model: merged
      set: {max_position_embeddings: 8192}
  summary:
    run:
      command: "wc -c < \"$YIBUILD_IN_PATCHED/model.safetensors\" > \"$YIBUILD_OUT/size.txt\""
      inputs: [patched]
"#;

const STEPS: [&str; 3] = ["merged", "patched", "summary"];

/// The messages of the `warning` events.
fn warnings(events: &[serde_json::Value]) -> Vec<&str> {
    events
        .iter()
        .filter(|e| e["event"] == "warning")
        .map(|e| e["message"].as_str().unwrap())
        .collect()
}

fn project() -> Project {
    let p = Project::new();
    let base = TinyLlama::default();
    base.write(&p.path("models/base")).unwrap();
    write_finetune(&base, &p.path("models/ft"), 7, 0.05).unwrap();
    p.write("recipe.yaml", RECIPE);
    p
}

/// Runs yibuild in `p` against `server` (prefix `prefix`) with cache and
/// build dirs named after `side`.
fn run(p: &Project, server: &S3Server, prefix: &str, side: &str, extra: &[&str]) -> Output {
    let (cache, build) = (format!("cache-{side}"), format!("build-{side}"));
    let url = server.url(prefix);
    let mut args = vec![
        "--remote-cache",
        url.as_str(),
        "--cache-dir",
        cache.as_str(),
        "--build-dir",
        build.as_str(),
    ];
    args.extend_from_slice(extra);
    let mut cmd = p.cmd(&args);
    cmd.envs(server.env());
    cmd.output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn build(p: &Project, server: &S3Server, prefix: &str, side: &str, extra: &[&str]) -> Output {
    let mut args = vec!["--json"];
    args.extend_from_slice(extra);
    args.push("recipe.yaml");
    let out = run(p, server, prefix, side, &args);
    assert!(!stderr(&out).contains(SECRET_KEY), "credentials leaked");
    assert!(!String::from_utf8_lossy(&out.stdout).contains(SECRET_KEY));
    out
}

fn remote_steps(events: &[serde_json::Value]) -> Vec<String> {
    let mut v: Vec<String> = events
        .iter()
        .filter(|e| e["event"] == "step" && e["remote"] == true)
        .map(|e| e["step"].as_str().unwrap().to_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn an_empty_cache_restores_every_step_from_the_remote_byte_identical() {
    let server = S3Server::start();
    let p = project();
    let first = build(&p, &server, "ci", "a", &[]);
    assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));
    assert_eq!(with_status(&events(&first), "built"), STEPS);
    let files = server.files("ci");
    assert_eq!(
        files.iter().filter(|f| f.starts_with("actions/")).count(),
        3,
        "{files:?}"
    );
    assert!(files.iter().any(|f| f.starts_with("objects/")));

    let plan = run(&p, &server, "ci", "b", &["plan", "recipe.yaml"]);
    let plan_text = String::from_utf8_lossy(&plan.stdout);
    assert!(
        plan_text.contains("remote merged (merge):") && plan_text.contains("to download"),
        "{plan_text}"
    );
    assert!(
        plan_text.contains("0 to build, 0 cached, 3 from the remote cache"),
        "{plan_text}"
    );

    let second = build(&p, &server, "ci", "b", &[]);
    assert_eq!(second.status.code(), Some(0), "{}", stderr(&second));
    let ev = events(&second);
    assert!(with_status(&ev, "built").is_empty(), "{ev:?}");
    assert_eq!(remote_steps(&ev), STEPS);
    let finished = ev.last().unwrap();
    assert_eq!(finished["remote"].as_array().unwrap().len(), 3);
    assert_eq!(
        tree_bytes(&p.path("build-a/shared")),
        tree_bytes(&p.path("build-b/shared"))
    );
    let verify = p.run(&["verify", "--cache-dir", "cache-b"]);
    assert_eq!(verify.status.code(), Some(0), "{}", stderr(&verify));

    // The third build on cache b is a plain local hit: no request needed.
    let third = build(&p, &server, "ci", "b", &[]);
    assert_eq!(with_status(&events(&third), "cached").len(), 3);
    assert!(remote_steps(&events(&third)).is_empty());
}

#[test]
fn a_corrupted_remote_object_is_refused_rebuilt_and_repaired() {
    let server = S3Server::start();
    let p = project();
    assert_eq!(build(&p, &server, "c", "a", &[]).status.code(), Some(0));
    // Damage the largest object (the merged weights) without changing its size.
    let largest = server
        .files("c")
        .into_iter()
        .filter(|f| f.starts_with("objects/"))
        .max_by_key(|f| std::fs::metadata(server.dir("c").join(f)).unwrap().len())
        .unwrap();
    let path = server.dir("c").join(&largest);
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();

    let out = build(&p, &server, "c", "b", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let ev = events(&out);
    let warning = ev
        .iter()
        .find(|e| e["event"] == "warning")
        .expect("a warning about the damaged entry");
    let msg = warning["message"].as_str().unwrap();
    assert!(
        msg.contains("step `merged`") && msg.contains("hashes to"),
        "{msg}"
    );
    assert_eq!(with_status(&ev, "built"), ["merged"]);
    assert_eq!(remote_steps(&ev), ["patched", "summary"]);
    assert_eq!(
        tree_bytes(&p.path("build-a/shared")),
        tree_bytes(&p.path("build-b/shared"))
    );
    // The rebuild's upload replaced the damaged object: a third machine
    // restores everything.
    let repaired = build(&p, &server, "c", "c", &[]);
    assert_eq!(remote_steps(&events(&repaired)), STEPS);
}

#[test]
fn two_builds_pushing_at_once_leave_one_valid_entry_per_step() {
    let server = S3Server::start();
    let p = project();
    let url = server.url("race");
    let spawn = |side: &str| {
        let (cache, build) = (format!("cache-{side}"), format!("build-{side}"));
        let mut cmd = p.cmd(&[
            "--json",
            "--remote-cache",
            &url,
            "--cache-dir",
            &cache,
            "--build-dir",
            &build,
            "recipe.yaml",
        ]);
        cmd.envs(server.env())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        cmd.spawn().unwrap()
    };
    let (a, b) = (spawn("a"), spawn("b"));
    for child in [a, b] {
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    }
    let actions: Vec<String> = server
        .files("race")
        .into_iter()
        .filter(|f| f.starts_with("actions/"))
        .collect();
    assert_eq!(actions.len(), 3, "{actions:?}");
    for action in actions {
        let manifest: Manifest =
            serde_json::from_slice(&std::fs::read(server.dir("race").join(&action)).unwrap())
                .unwrap();
        for e in manifest.files {
            let object =
                server
                    .dir("race")
                    .join(format!("objects/{}/{}", &e.hash[..2], &e.hash[2..]));
            let bytes = std::fs::read(&object).unwrap();
            assert_eq!(blake3::hash(&bytes).to_hex().as_str(), e.hash);
        }
    }
}

#[test]
fn read_only_mode_never_writes_and_push_only_never_reads() {
    let server = S3Server::start();
    let p = project();
    let out = build(&p, &server, "ro", "a", &["--remote-cache-mode", "read"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(with_status(&events(&out), "built"), STEPS);
    assert!(server.files("ro").is_empty(), "{:?}", server.files("ro"));

    let seed = build(
        &p,
        &server,
        "ro",
        "b",
        &["--remote-cache-mode", "push-only"],
    );
    assert_eq!(with_status(&events(&seed), "built"), STEPS);
    let written = server.files("ro");
    assert_eq!(
        written.iter().filter(|f| f.starts_with("actions/")).count(),
        3
    );
    // A push-only build on an empty cache builds rather than restores.
    let again = build(
        &p,
        &server,
        "ro",
        "c",
        &["--remote-cache-mode", "push-only"],
    );
    assert_eq!(with_status(&events(&again), "built"), STEPS);
    // A read-only build restores from what the push-only builds wrote.
    let read = build(&p, &server, "ro", "d", &["--remote-cache-mode", "read"]);
    assert_eq!(remote_steps(&events(&read)), STEPS);
    assert_eq!(server.files("ro"), written);
}

#[test]
fn an_unreachable_remote_warns_once_and_builds_locally_unless_required() {
    let p = project();
    let dead = |extra: &[&str]| {
        let mut args = vec![
            "--json",
            "--remote-cache",
            "s3://models/x",
            "--remote-cache-endpoint",
            "http://127.0.0.1:9",
        ];
        args.extend_from_slice(extra);
        args.push("recipe.yaml");
        p.cmd(&args)
            .env("AWS_ACCESS_KEY_ID", "k")
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .output()
            .unwrap()
    };
    let out = dead(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let ev = events(&out);
    let warnings: Vec<_> = ev.iter().filter(|e| e["event"] == "warning").collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    let msg = warnings[0]["message"].as_str().unwrap();
    assert!(
        msg.contains("s3://models/x")
            && msg.contains("Connection refused")
            && msg.contains("building without it"),
        "{msg}"
    );
    assert!(!msg.contains(SECRET_KEY));
    assert_eq!(with_status(&ev, "built"), STEPS);

    std::fs::remove_dir_all(p.path("cache")).unwrap();
    std::fs::remove_dir_all(p.path("build")).unwrap();
    let required = dead(&["--remote-cache-required"]);
    assert_eq!(required.status.code(), Some(1));
    let err = stderr(&required);
    assert!(err.contains("the remote cache is required"), "{err}");
    assert!(!err.contains(SECRET_KEY));
    assert!(!p.path("build/shared/merged").exists());
}

#[test]
fn cache_push_seeds_the_remote_and_cache_pull_warms_a_machine() {
    let server = S3Server::start();
    let p = project();
    let local = p.run(&["--json", "--cache-dir", "cache-a", "recipe.yaml"]);
    assert_eq!(local.status.code(), Some(0));
    let push = run(&p, &server, "seed", "a", &["cache", "push", "recipe.yaml"]);
    assert_eq!(push.status.code(), Some(0), "{}", stderr(&push));
    let text = String::from_utf8_lossy(&push.stdout);
    assert!(text.contains("3 pushed"), "{text}");

    // A project file names the remote; `cache pull` fills cache b.
    p.write(
        ".yibuild.yaml",
        &format!("remote_cache:\n  url: {}\n", server.url("seed")),
    );
    let mut pull = p.cmd(&["--cache-dir", "cache-b", "cache", "pull", "recipe.yaml"]);
    pull.envs(server.env());
    let pull = pull.output().unwrap();
    assert_eq!(pull.status.code(), Some(0), "{}", stderr(&pull));
    let text = String::from_utf8_lossy(&pull.stdout);
    assert!(text.contains("3 pulled"), "{text}");
    std::fs::remove_file(p.path(".yibuild.yaml")).unwrap();

    // Offline from the remote, cache b has everything.
    let offline = p.run(&["--json", "--cache-dir", "cache-b", "recipe.yaml"]);
    let ev = events(&offline);
    assert_eq!(with_status(&ev, "cached").len(), 3, "{ev:?}");
}

/// A large object goes up in multipart chunks and comes down in parallel
/// ranges; an interrupted download resumes from the ranges it kept.
#[test]
fn large_objects_use_multipart_and_resumable_ranged_downloads() {
    let server = S3Server::start();
    let dir = tempfile::tempdir().unwrap();
    let size = 2 * PART_SIZE + 12345;
    let data: Vec<u8> = (0..size).map(|i| (i * 2654435761 % 251) as u8).collect();
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("big.bin"), &data).unwrap();
    let a = Cache::open_locked(&dir.path().join("a"), &|| {}).unwrap();
    let manifest = a.ingest("ab".repeat(32).as_str(), &out).unwrap();
    for (k, v) in server
        .env()
        .into_iter()
        .filter(|(k, _)| k.starts_with("AWS_"))
    {
        std::env::set_var(k, v);
    }
    let remote = RemoteCache::connect(&RemoteSettings {
        url: server.url("big"),
        mode: RemoteMode::ReadWrite,
        endpoint: Some(server.endpoint.clone()),
        region: None,
        required: false,
    })
    .unwrap();
    let key = "ab".repeat(32);
    let pushed = remote.push(&a, &key, &manifest).unwrap();
    assert_eq!(pushed.bytes, size);
    assert!(pushed.action_written);
    let again = remote.push(&a, &key, &manifest).unwrap();
    assert_eq!(again.bytes, 0, "objects already there are not re-sent");
    assert!(!again.action_written, "the first writer's entry stays");

    // Simulate an interrupted download: the first range landed and was
    // logged, the second was half written.
    let b = Cache::open_locked(&dir.path().join("b"), &|| {}).unwrap();
    let entry: &Entry = &manifest.files[0];
    let partial = b.partial_path(&entry.hash);
    let mut kept = vec![0u8; size as usize];
    kept[..PART_SIZE as usize].copy_from_slice(&data[..PART_SIZE as usize]);
    std::fs::write(&partial, &kept).unwrap();
    std::fs::write(partial.with_extension("parts"), "0\n").unwrap();
    let hit = remote.lookup(&key).unwrap().expect("remote hit");
    assert_eq!(hit, manifest);
    let fetched = remote.pull(&b, &key, &hit).unwrap();
    assert_eq!(
        fetched,
        size - PART_SIZE,
        "the kept range is not fetched again"
    );
    assert_eq!(b.lookup(&key), Some(manifest.clone()));
    assert_eq!(std::fs::read(b.object_path(&entry.hash)).unwrap(), data);
    assert!(!partial.exists());
}

/// Runs a `--json` build of `p` against `server`'s credentials with `env`
/// (and no YIBUILD_REMOTE_CACHE_ENDPOINT) and the remote `s3://models/PREFIX`.
fn build_with_env(
    p: &Project,
    server: &S3Server,
    prefix: &str,
    side: &str,
    env: &[(&str, &str)],
) -> Output {
    let (cache, build_dir, url) = (
        format!("cache-{side}"),
        format!("build-{side}"),
        server.url(prefix),
    );
    let mut cmd = p.cmd(&[
        "--json",
        "--remote-cache",
        url.as_str(),
        "--cache-dir",
        cache.as_str(),
        "--build-dir",
        build_dir.as_str(),
        "recipe.yaml",
    ]);
    cmd.envs(server.env())
        .env_remove("YIBUILD_REMOTE_CACHE_ENDPOINT")
        .envs(env.iter().copied());
    let out = cmd.output().unwrap();
    assert!(!stderr(&out).contains(SECRET_KEY), "credentials leaked");
    out
}

#[test]
fn aws_endpoint_url_and_its_s3_variant_name_the_store_when_nothing_else_does() {
    let server = S3Server::start();
    let p = project();
    let dead = "http://127.0.0.1:9";
    // AWS_ENDPOINT_URL alone: the build's outputs reach the store.
    let first = build_with_env(
        &p,
        &server,
        "env",
        "a",
        &[("AWS_ENDPOINT_URL", &server.endpoint)],
    );
    assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));
    let ev = events(&first);
    assert!(ev.iter().all(|e| e["event"] != "warning"), "{ev:?}");
    assert_eq!(
        server
            .files("env")
            .iter()
            .filter(|f| f.starts_with("actions/"))
            .count(),
        3
    );
    // AWS_ENDPOINT_URL_S3 wins over AWS_ENDPOINT_URL: an empty cache restores.
    let second = build_with_env(
        &p,
        &server,
        "env",
        "b",
        &[
            ("AWS_ENDPOINT_URL", dead),
            ("AWS_ENDPOINT_URL_S3", &server.endpoint),
        ],
    );
    assert_eq!(second.status.code(), Some(0), "{}", stderr(&second));
    assert_eq!(remote_steps(&events(&second)), STEPS);
    // An endpoint in .yibuild.yaml wins over both variables.
    p.write(
        ".yibuild.yaml",
        &format!("remote_cache:\n  endpoint: {}\n", server.endpoint),
    );
    let third = build_with_env(
        &p,
        &server,
        "env",
        "c",
        &[("AWS_ENDPOINT_URL", dead), ("AWS_ENDPOINT_URL_S3", dead)],
    );
    assert_eq!(third.status.code(), Some(0), "{}", stderr(&third));
    assert_eq!(remote_steps(&events(&third)), STEPS);
}

#[test]
fn an_unreachable_remote_is_one_human_warning_with_the_url_and_the_cause() {
    let p = project();
    let out = p
        .cmd(&["--remote-cache", "s3://models/x", "recipe.yaml"])
        .env("AWS_ACCESS_KEY_ID", "k")
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
        .env_remove("YIBUILD_REMOTE_CACHE_ENDPOINT")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(!err.contains(SECRET_KEY));
    let warnings: Vec<&str> = err.lines().filter(|l| l.contains("warning")).collect();
    assert_eq!(
        warnings,
        [
            "warning: remote cache s3://models/x (endpoint http://127.0.0.1:9) is not usable: \
          Connection refused (os error 111); building without it"
        ],
        "{err}"
    );
    assert!(p.path("build/shared/summary/size.txt").exists());
}

#[test]
fn refused_credentials_are_one_warning_naming_the_refusal() {
    let server = S3Server::start();
    let p = project();
    let out = build_with_env(
        &p,
        &server,
        "creds",
        "a",
        &[
            ("AWS_ENDPOINT_URL", &server.endpoint),
            ("AWS_SECRET_ACCESS_KEY", "not-the-secret"),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let ev = events(&out);
    let warnings = warnings(&ev);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].starts_with(&format!(
            "remote cache s3://models/creds (endpoint {}) is not usable: ",
            server.endpoint
        )) && warnings[0].ends_with("403 Forbidden (SignatureDoesNotMatch); building without it"),
        "{}",
        warnings[0]
    );
    assert!(!warnings[0].contains("not-the-secret"));
    assert_eq!(with_status(&ev, "built"), STEPS);
}

#[test]
fn a_missing_bucket_is_one_warning_even_for_a_read_only_build() {
    let server = S3Server::start();
    let p = project();
    for (mode, side) in [("read", "a"), ("read-write", "b")] {
        let url = "s3://no-such-bucket/x";
        let out = p
            .cmd(&[
                "--json",
                "--remote-cache",
                url,
                "--remote-cache-mode",
                mode,
                "--cache-dir",
                &format!("cache-{side}"),
                "--build-dir",
                &format!("build-{side}"),
                "recipe.yaml",
            ])
            .envs(server.env())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let ev = events(&out);
        let warnings = warnings(&ev);
        assert_eq!(warnings.len(), 1, "{mode}: {warnings:?}");
        assert!(
            warnings[0].starts_with(&format!(
                "remote cache {url} (endpoint {}) is not usable: ",
                server.endpoint
            )) && warnings[0].contains("bucket"),
            "{}",
            warnings[0]
        );
        assert_eq!(with_status(&ev, "built"), STEPS);
    }
}
