//! Hub sources against a local test Hub: pinning and the lock file, no
//! requests once pinned and cached, resumed and verified downloads, offline
//! mode, and pre-flight validation before any weight byte is requested.

mod common;

use common::hub_server::{HubServer, Seen};
use common::{with_status, Project};
use yibuild::fixtures::TinyLlama;

const RECIPE: &str = r#"
yibuild: 1
name: hubtest
sources:
  base: hf://org/base
  tuned: hf://org/tuned@v1
steps:
  merged:
    merge:
      merge_method: linear
      models:
        - model: base
          parameters: {weight: 0.5}
        - model: tuned
          parameters: {weight: 0.5}
      dtype: bfloat16
default: [merged]
"#;

struct Hub {
    project: Project,
    server: HubServer,
    base_commit: String,
    tuned_commit: String,
}

/// A project whose recipe reads two models from a test Hub; `tuned` differs
/// from the base by `tuned_layers` (a mismatch when not 2).
fn hub_project(tuned_layers: usize) -> Hub {
    let project = Project::new();
    let base = TinyLlama {
        shards: 2,
        ..Default::default()
    };
    base.write(&project.path("upstream/base")).unwrap();
    let tuned = TinyLlama {
        seed: 7,
        layers: tuned_layers,
        ..Default::default()
    };
    tuned.write(&project.path("upstream/tuned")).unwrap();
    let server = HubServer::start();
    let base_commit = server.add_repo(
        "org/base",
        &project.path("upstream/base"),
        &[],
        &[
            ("pytorch_model.bin", b"pickled weights nobody should fetch"),
            ("README.md", b"# base\n"),
        ],
    );
    let tuned_commit = server.add_repo("org/tuned", &project.path("upstream/tuned"), &["v1"], &[]);
    project.write("recipe.yaml", RECIPE);
    Hub {
        project,
        server,
        base_commit,
        tuned_commit,
    }
}

impl Hub {
    fn cmd(&self, args: &[&str]) -> std::process::Command {
        let mut c = self.project.cmd(args);
        c.env("HF_ENDPOINT", &self.server.endpoint)
            .env("HF_HUB_CACHE", self.project.path("hf"))
            .env_remove("HF_TOKEN")
            .env_remove("HF_HOME")
            .env("HF_TOKEN_PATH", self.project.path("no-token"))
            .env_remove("HF_HUB_OFFLINE");
        c
    }

    /// Runs a `--json` build: (exit code, events, stderr).
    fn build(&self, extra: &[&str]) -> (i32, Vec<serde_json::Value>, String) {
        let mut args = vec!["--json", "recipe.yaml"];
        args.extend_from_slice(extra);
        let out = self.cmd(&args).output().unwrap();
        let events = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        (
            out.status.code().unwrap_or(-1),
            events,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn run(&self, args: &[&str]) -> (i32, String, String) {
        let out = self.cmd(args).output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn lock(&self) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(self.project.path("yibuild.lock")).unwrap()).unwrap()
    }
}

fn paths(seen: &[Seen]) -> Vec<String> {
    seen.iter().map(|s| s.path.clone()).collect()
}

#[test]
fn resolves_locks_downloads_into_the_hub_cache_then_makes_no_requests() {
    let hub = hub_project(2);
    let (code, events, err) = hub.build(&[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(with_status(&events, "built"), ["merged"]);

    // One revision call per source; nothing but configs, tokenizers and safetensors.
    let seen = paths(&hub.server.seen());
    assert_eq!(
        hub.server.count("/api/models/org/base/revision/main"),
        1,
        "{seen:?}"
    );
    assert_eq!(
        hub.server.count("/api/models/org/tuned/revision/v1"),
        1,
        "{seen:?}"
    );
    assert!(
        !seen
            .iter()
            .any(|p| p.ends_with(".bin") || p.ends_with("README.md")),
        "{seen:?}"
    );

    // The lock pins commits, sizes and hashes, sorted.
    let lock = hub.lock();
    assert_eq!(lock["version"], 1);
    let base = &lock["sources"]["base"];
    assert_eq!(base["repo"], "org/base");
    assert_eq!(base["revision"], "main");
    assert_eq!(base["commit"], hub.base_commit.as_str());
    assert_eq!(
        lock["sources"]["tuned"]["commit"],
        hub.tuned_commit.as_str()
    );
    let shard = "model-00001-of-00002.safetensors";
    assert_eq!(
        base["files"][shard]["sha256"],
        hub.server.file_sha256("org/base", shard).as_str()
    );
    let files: Vec<&String> = base["files"].as_object().unwrap().keys().collect();
    assert!(files.windows(2).all(|w| w[0] < w[1]));
    assert!(!files
        .iter()
        .any(|f| f.ends_with(".bin") || f.ends_with(".md")));

    // The standard Hub cache layout.
    let repo = hub.project.path("hf/models--org--base");
    assert_eq!(
        std::fs::read_to_string(repo.join("refs/main")).unwrap(),
        hub.base_commit
    );
    assert_eq!(
        std::fs::read_to_string(hub.project.path("hf/models--org--tuned/refs/v1")).unwrap(),
        hub.tuned_commit
    );
    let link = repo.join("snapshots").join(&hub.base_commit).join(shard);
    let sha = hub.server.file_sha256("org/base", shard);
    assert_eq!(
        std::fs::read_link(&link).unwrap(),
        std::path::PathBuf::from(format!("../../blobs/{sha}"))
    );
    assert_eq!(
        std::fs::read(&link).unwrap(),
        std::fs::read(hub.project.path("upstream/base").join(shard)).unwrap()
    );

    // The sources' digests in the step key come from the lock entries.
    let record: serde_json::Value = serde_json::from_slice(
        &std::fs::read(hub.project.path("cache/records/hubtest/merged.json")).unwrap(),
    )
    .unwrap();
    let entry: yibuild::hub::LockEntry = serde_json::from_value(base.clone()).unwrap();
    assert_eq!(record["inputs"]["inputs"]["base"], entry.digest().as_str());

    // A second build: no request at all, everything cached.
    hub.server.reset();
    let (code, events, err) = hub.build(&[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(with_status(&events, "cached"), ["merged"]);
    assert_eq!(
        hub.server.seen(),
        vec![],
        "a pinned, cached source needs no request"
    );

    // With the Hub cache gone, cached steps still need nothing from the Hub.
    std::fs::rename(hub.project.path("hf"), hub.project.path("hf-away")).unwrap();
    let (code, events, err) = hub.build(&[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(with_status(&events, "cached"), ["merged"]);
    assert_eq!(hub.server.seen(), vec![]);
    std::fs::rename(hub.project.path("hf-away"), hub.project.path("hf")).unwrap();

    // --update-lock asks again (and finds the same commits: still cached).
    let (code, events, err) = hub.build(&["--update-lock"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(with_status(&events, "cached"), ["merged"]);
    assert_eq!(hub.server.count("/revision/main"), 1);
}

#[test]
fn an_interrupted_download_resumes_where_it_stopped() {
    let hub = hub_project(2);
    let shard = "model-00002-of-00002.safetensors";
    let size = std::fs::metadata(hub.project.path("upstream/base").join(shard))
        .unwrap()
        .len();
    hub.server.cut_next(shard, 5000);
    let (code, _, err) = hub.run(&["fetch", "recipe.yaml"]);
    assert_eq!(code, 0, "{err}");
    let sha = hub.server.file_sha256("org/base", shard);
    let served: Vec<(u64, u64)> = hub
        .server
        .seen()
        .iter()
        .filter(|s| s.path.ends_with(&sha))
        .filter_map(|s| s.served)
        .collect();
    // Pre-flight header reads, then the cut transfer, then the rest from byte 5000.
    let body: Vec<(u64, u64)> = served.into_iter().filter(|r| r.1 - r.0 > 4096).collect();
    assert_eq!(body, vec![(0, 5000), (5000, size)], "{err}");
    let blob = hub
        .project
        .path(&format!("hf/models--org--base/blobs/{sha}"));
    assert_eq!(
        std::fs::read(&blob).unwrap(),
        std::fs::read(hub.project.path("upstream/base").join(shard)).unwrap()
    );
    assert!(!hub
        .project
        .path(&format!("hf/models--org--base/blobs/{sha}.incomplete"))
        .exists());
}

#[test]
fn a_partial_file_left_by_another_downloader_is_resumed() {
    let hub = hub_project(2);
    let shard = "model.safetensors";
    let bytes = std::fs::read(hub.project.path("upstream/tuned").join(shard)).unwrap();
    let sha = hub.server.file_sha256("org/tuned", shard);
    let blobs = hub.project.path("hf/models--org--tuned/blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::write(blobs.join(format!("{sha}.incomplete")), &bytes[..7000]).unwrap();
    let (code, _, err) = hub.run(&["fetch", "recipe.yaml"]);
    assert_eq!(code, 0, "{err}");
    let body: Vec<(u64, u64)> = hub
        .server
        .seen()
        .iter()
        .filter(|s| s.path.ends_with(&sha))
        .filter_map(|s| s.served)
        .filter(|r| r.1 - r.0 > 4096)
        .collect();
    assert_eq!(body, vec![(7000, bytes.len() as u64)]);
    assert_eq!(std::fs::read(blobs.join(&sha)).unwrap(), bytes);
}

#[test]
fn a_corrupted_byte_is_caught_by_sha256_and_fetched_again() {
    let hub = hub_project(2);
    let shard = "model.safetensors";
    hub.server.corrupt_next(shard, 20_000);
    let (code, events, err) = hub.build(&[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(with_status(&events, "built"), ["merged"]);
    // The retry is a warning event (in --json output, on stdout like every event).
    let warned = events.iter().any(|e| {
        e["event"] == "warning"
            && e["message"].as_str().is_some_and(|m| {
                m.contains("sha256 mismatch") && m.contains("downloading it again")
            })
    });
    assert!(warned, "{events:?}");
    let sha = hub.server.file_sha256("org/tuned", shard);
    let full = hub
        .server
        .seen()
        .iter()
        .filter(|s| s.path.ends_with(&sha))
        .filter(|s| s.served.is_some_and(|r| r.1 - r.0 > 4096))
        .count();
    assert_eq!(full, 2, "downloaded, rejected, downloaded again");
    assert_eq!(
        std::fs::read(
            hub.project
                .path(&format!("hf/models--org--tuned/blobs/{sha}"))
        )
        .unwrap(),
        std::fs::read(hub.project.path("upstream/tuned").join(shard)).unwrap()
    );
}

#[test]
fn offline_mode_names_what_is_missing_and_makes_no_request() {
    let hub = hub_project(2);
    // Nothing pinned, nothing cached.
    let (code, _, err) = hub.build(&["--offline"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("not pinned in") && err.contains("offline"),
        "{err}"
    );
    assert!(
        err.contains("hf://org/base@main") || err.contains("hf://org/tuned@v1"),
        "{err}"
    );
    assert_eq!(hub.server.seen(), vec![]);

    // Pinned and cached, then a shard goes missing from the Hub cache.
    assert_eq!(hub.run(&["fetch", "recipe.yaml"]).0, 0);
    let shard = "model-00001-of-00002.safetensors";
    std::fs::remove_file(
        hub.project
            .path("hf/models--org--base/snapshots")
            .join(&hub.base_commit)
            .join(shard),
    )
    .unwrap();
    hub.server.reset();
    let mut cmd = hub.cmd(&["--json", "recipe.yaml"]);
    let out = cmd.env("HF_HUB_OFFLINE", "1").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("offline"), "{err}");
    assert!(
        err.contains(&format!(
            "base: hf://org/base@{}/{shard}",
            &hub.base_commit[..12]
        )),
        "{err}"
    );
    assert_eq!(hub.server.seen(), vec![]);

    // Online again, it fetches just that file.
    let (code, _, err) = hub.build(&[]);
    assert_eq!(code, 0, "{err}");
    let sha = hub.server.file_sha256("org/base", shard);
    assert!(hub.server.count(&sha) >= 1);
    assert_eq!(hub.server.count("/revision/main"), 0);
}

#[test]
fn preflight_fails_before_any_weight_byte_is_requested() {
    let hub = hub_project(3);
    let (code, events, err) = hub.build(&[]);
    assert_eq!(code, 2, "{err}");
    assert!(events.iter().all(|e| e["status"] != "built"));
    assert!(err.contains("layer") || err.contains("tensor"), "{err}");
    // Only headers of the safetensors files were read.
    for s in hub.server.seen() {
        if let Some((start, end)) = s.served {
            if s.path.contains("/lfs/") {
                assert!(end - start <= 4096, "weights requested: {s:?}");
            }
        }
    }
    assert!(hub.server.count("config.json") >= 2);
    assert!(!hub
        .project
        .path("hf/models--org--tuned/blobs")
        .read_dir()
        .unwrap()
        .any(|e| { e.unwrap().file_name().to_string_lossy().len() == 64 }));
}

#[test]
fn plan_offline_lists_hub_sources_to_fetch_with_bytes_once_locked() {
    let hub = hub_project(2);
    let (code, out, err) = hub.run(&["plan", "recipe.yaml", "--offline"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("base = hf://org/base (to fetch: not pinned yet"),
        "{out}"
    );
    assert!(out.contains("tuned = hf://org/tuned@v1 (to fetch"), "{out}");
    assert_eq!(hub.server.seen(), vec![]);

    // Online, an unpinned source is looked up (one request each), nothing written.
    let (code, out, _) = hub.run(&["plan", "recipe.yaml"]);
    assert_eq!(code, 0);
    assert!(
        out.contains(&format!(
            ", commit {}, not locked yet)",
            &hub.base_commit[..12]
        )),
        "{out}"
    );
    assert_eq!(hub.server.count("/revision/main"), 1);
    assert_eq!(hub.server.seen().len(), 2);
    assert!(!hub.project.path("yibuild.lock").exists());

    // An unreachable Hub: still a plan, with the sources to fetch.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let out = hub
        .cmd(&["plan", "recipe.yaml"])
        .env("HF_ENDPOINT", format!("http://127.0.0.1:{port}"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text.matches("(to fetch: size unknown").count(), 2, "{text}");

    // With a lock but an empty Hub cache, the plan knows the sizes.
    assert_eq!(hub.run(&["fetch", "recipe.yaml"]).0, 0);
    std::fs::remove_dir_all(hub.project.path("hf")).unwrap();
    hub.server.reset();
    let (code, out, _) = hub.run(&["plan", "recipe.yaml"]);
    assert_eq!(code, 0);
    let base_bytes: u64 = hub.lock()["sources"]["base"]["files"]
        .as_object()
        .unwrap()
        .values()
        .map(|f| f["size"].as_u64().unwrap())
        .sum();
    let files = hub.lock()["sources"]["base"]["files"]
        .as_object()
        .unwrap()
        .len();
    let expected = format!(
        "to fetch: {files} of {files} files, {}",
        yibuild::fs::size::human_bytes(base_bytes)
    );
    assert!(out.contains(&expected), "{out}\nexpected {expected}");
    assert_eq!(hub.server.seen(), vec![]);
}

/// A configuration for library-level downloads from the test Hub.
fn config(hub: &Hub, chunk_size: u64, connections: usize) -> yibuild::hub::HubConfig {
    yibuild::hub::HubConfig {
        endpoint: hub.server.endpoint.clone(),
        token: None,
        cache_dir: hub.project.path("hf"),
        offline: false,
        update_lock: false,
        connections,
        chunk_size,
        progress: false,
    }
}

#[test]
fn parallel_chunks_are_written_in_place_and_a_cut_chunk_resumes_alone() {
    use yibuild::hub::api::HubClient;
    use yibuild::hub::download::{fetch_file, RemoteFile, Transfer};
    use yibuild::hub::layout::RepoCache;

    let hub = hub_project(2);
    let cfg = config(&hub, 16 << 10, 4);
    let client = HubClient::new(&cfg);
    let remote = client.revision("org/tuned", "v1").unwrap();
    assert_eq!(remote.commit, hub.tuned_commit);
    let path = "model.safetensors";
    let file = &remote.files[path];
    let bytes = std::fs::read(hub.project.path("upstream/tuned").join(path)).unwrap();
    assert_eq!(file.size, bytes.len() as u64);
    // The first chunk served is cut after 1000 bytes; only its rest is asked for again.
    hub.server.cut_next(path, 1000);
    let total = std::sync::atomic::AtomicU64::new(0);
    let linked = fetch_file(
        &client,
        &RepoCache::new(&cfg.cache_dir, "org/tuned"),
        RemoteFile {
            repo: "org/tuned",
            commit: &remote.commit,
            path,
            file,
        },
        Transfer {
            connections: cfg.connections,
            chunk_size: cfg.chunk_size,
        },
        &|n| {
            total.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        },
        &|why| panic!("no retry expected: {why}"),
    )
    .unwrap();
    assert_eq!(std::fs::read(&linked).unwrap(), bytes);
    assert_eq!(total.into_inner(), file.size, "every byte reported once");
    let mut served: Vec<(u64, u64)> = hub.server.seen().iter().filter_map(|s| s.served).collect();
    served.sort();
    let chunks = bytes.len().div_ceil(16 << 10);
    assert_eq!(served.len(), chunks + 1, "{served:?}");
    let cut: Vec<_> = served.iter().filter(|r| r.1 - r.0 == 1000).collect();
    assert_eq!(cut.len(), 1, "{served:?}");
    let resumed = cut[0].0 + 1000;
    assert!(served.iter().any(|r| r.0 == resumed), "{served:?}");
}

#[test]
fn gated_repositories_need_hf_token_which_is_never_printed() {
    let hub = hub_project(2);
    let token = "hf_secret_test_token_123";
    hub.server.gate("org/tuned", token);
    let (code, _, err) = hub.build(&[]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("hf://org/tuned@v1") && err.contains("gated") && err.contains("HF_TOKEN"),
        "{err}"
    );
    let out = hub
        .cmd(&["-v", "recipe.yaml"])
        .env("HF_TOKEN", token)
        .output()
        .unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(!all.contains(token), "{all}");
    assert!(!std::fs::read_to_string(hub.project.path("yibuild.lock"))
        .unwrap()
        .contains(token));
}

#[test]
fn the_lock_holds_a_moved_branch_until_update_lock() {
    let hub = hub_project(2);
    assert_eq!(hub.build(&[]).0, 0);
    // `main` of org/base moves to a new commit upstream.
    TinyLlama {
        shards: 2,
        seed: 99,
        ..Default::default()
    }
    .write(&hub.project.path("upstream/base2"))
    .unwrap();
    let moved = hub
        .server
        .add_repo("org/base", &hub.project.path("upstream/base2"), &[], &[]);
    assert_ne!(moved, hub.base_commit);
    hub.server.reset();
    let (code, events, err) = hub.build(&[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(with_status(&events, "cached"), ["merged"]);
    assert_eq!(hub.server.seen(), vec![], "the lock pins the old commit");

    let (code, events, err) = hub.build(&["--update-lock"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(with_status(&events, "built"), ["merged"]);
    assert_eq!(hub.lock()["sources"]["base"]["commit"], moved.as_str());
    assert_eq!(
        hub.lock()["sources"]["tuned"]["commit"],
        hub.tuned_commit.as_str()
    );
    let (code, out, _) = hub.run(&["explain", "recipe.yaml", "merged"]);
    assert_eq!(code, 0);
    assert!(out.contains("is fresh"), "{out}");
}

#[test]
fn steps_over_a_hub_snapshot_get_real_files_not_its_symlinks() {
    let hub = hub_project(2);
    hub.project.write(
        "recipe.yaml",
        r#"
yibuild: 1
name: hubtest
sources:
  base: hf://org/base
steps:
  patched:
    patch_config:
      model: base
      set: {max_position_embeddings: 4096}
"#,
    );
    let (code, _, err) = hub.build(&[]);
    assert_eq!(code, 0, "{err}");
    let shard = "model-00001-of-00002.safetensors";
    let out = hub.project.path("build/hubtest/patched").join(shard);
    let meta = std::fs::symlink_metadata(&out).unwrap();
    assert!(meta.file_type().is_file(), "{out:?} is a symlink");
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(hub.project.path("upstream/base").join(shard)).unwrap()
    );
}
