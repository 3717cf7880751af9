//! The Slurm executor against a real one-node Slurm cluster (Debian's
//! slurm-wlm and munge) started on loopback by `tests/slurm/cluster-up.sh`:
//! every step runs as a job, outputs are byte-identical to a local build, a
//! failing job is reported with its id and log tail, and a cancelled build
//! leaves no jobs and a sound cache.
//!
//! Where the cluster cannot start (not root, packages missing) the tests say
//! so and pass; with `YIBUILD_REQUIRE_SLURM=1` (set by `.ci/run`) they fail.
//! They share one cluster at a time: each test holds a lock while its
//! cluster runs.

mod common;
#[path = "common/s3_server.rs"]
mod s3_server;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::{parse_output, tree_bytes, with_status, Project};
use serde_json::Value;
use yibuild::fixtures::{write_finetune, TinyLlama};

static SERIAL: Mutex<()> = Mutex::new(());

/// A running one-node cluster, stopped on drop.
struct Cluster {
    dir: tempfile::TempDir,
    _serial: MutexGuard<'static, ()>,
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/slurm")
        .join(name)
}

impl Cluster {
    /// Starts the cluster, or explains why it cannot and returns `None`
    /// (a failure instead under `YIBUILD_REQUIRE_SLURM=1`).
    fn start() -> Option<Cluster> {
        Cluster::with_cpus(8)
    }

    /// [`Cluster::start`] with a node of `cpus` CPUs.
    fn with_cpus(cpus: u32) -> Option<Cluster> {
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("bash")
            .arg(script("cluster-up.sh"))
            .arg(dir.path())
            .arg(cpus.to_string())
            .output();
        let why = match out {
            Ok(o) if o.status.success() => {
                return Some(Cluster {
                    dir,
                    _serial: serial,
                })
            }
            Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_owned(),
            Err(e) => format!("cannot run bash: {e}"),
        };
        Command::new("bash")
            .arg(script("cluster-down.sh"))
            .arg(dir.path())
            .status()
            .ok();
        assert!(
            std::env::var("YIBUILD_REQUIRE_SLURM").as_deref() != Ok("1"),
            "YIBUILD_REQUIRE_SLURM=1 but the Slurm test cluster did not start:\n{why}"
        );
        eprintln!("SKIPPED: no Slurm test cluster here (install slurm-wlm and munge and run as root): {why}");
        None
    }

    fn conf(&self) -> PathBuf {
        self.dir.path().join("slurm.conf")
    }

    /// yibuild in `p` with this cluster's configuration.
    fn yibuild(&self, p: &Project, args: &[&str]) -> Command {
        let mut c = p.cmd(args);
        c.env("SLURM_CONF", self.conf())
            .env_remove("YIBUILD_EXECUTOR");
        c
    }

    /// A `--json` build: (exit code, events, stderr).
    fn build_json(&self, p: &Project, args: &[&str]) -> (i32, Vec<Value>, String) {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        parse_output(self.yibuild(p, &all).output().unwrap())
    }

    /// Jobs in the queue whose name mentions `recipe`: "id name state".
    fn queue(&self, recipe: &str) -> Vec<String> {
        let out = Command::new("squeue")
            .args(["-h", "-o", "%i %j %T"])
            .env("SLURM_CONF", self.conf())
            .output()
            .unwrap();
        assert!(out.status.success(), "squeue failed: {out:?}");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains(&format!("yibuild:{recipe}:")))
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        Command::new("bash")
            .arg(script("cluster-down.sh"))
            .arg(self.dir.path())
            .status()
            .ok();
    }
}

/// The `job` events of `step`.
fn jobs<'a>(events: &'a [Value], step: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["event"] == "job" && e["step"] == step)
        .collect()
}

fn hostname() -> String {
    let out = Command::new("hostname").arg("-s").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

const RECIPE: &str = r#"
yibuild: 1
name: slurmdemo
sources:
  base: ./models/base
  tuned: ./models/tuned
steps:
  merged:
    merge:
      merge_method: linear
      models:
        - model: base
          parameters: {weight: 0.7}
        - model: tuned
          parameters: {weight: 0.3}
      dtype: float32
    resources: {cpus: 2, mem: 1536MiB}
  patched:
    patch_config:
      model: merged
      set: {max_position_embeddings: 8192}
  other:
    patch_config:
      model: base
      generation_config: {set: {max_new_tokens: 64}}
  summary:
    run:
      command: "cat \"$YIBUILD_IN_PATCHED/config.json\" \"$YIBUILD_IN_OTHER/generation_config.json\" > \"$YIBUILD_OUT/summary.txt\""
      inputs: [patched, other]
      outputs: [summary.txt]
default: [summary]
"#;

/// The demo built in-process into `local-cache` and `local-build`.
fn local_build(cluster: &Cluster, p: &Project) -> (i32, Vec<Value>, String) {
    cluster.build_json(
        p,
        &[
            "recipe.yaml",
            "--cache-dir",
            "local-cache",
            "--build-dir",
            "local-build",
        ],
    )
}

fn demo_project() -> Project {
    let p = Project::with_base();
    write_finetune(&TinyLlama::default(), &p.path("models/tuned"), 7, 0.2).unwrap();
    p.write("recipe.yaml", RECIPE);
    p
}

#[test]
fn every_step_runs_as_a_job_and_matches_a_local_build() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let p = demo_project();

    let plan = cluster
        .yibuild(&p, &["plan", "recipe.yaml", "--executor", "slurm"])
        .output()
        .unwrap();
    let plan = String::from_utf8_lossy(&plan.stdout).into_owned();
    assert!(
        plan.contains("slurm job: cpus=2 mem=1536M gpus=0"),
        "merged's written resources: {plan}"
    );
    assert!(
        plan.contains("slurm job: cpus=1 mem=1024M gpus=0"),
        "patch_config's defaults: {plan}"
    );

    let plan = cluster
        .yibuild(
            &p,
            &["plan", "--json", "recipe.yaml", "--executor", "slurm"],
        )
        .output()
        .unwrap();
    let merged: Value = String::from_utf8_lossy(&plan.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|e| e["step"] == "merged")
        .unwrap();
    assert_eq!(
        merged["resources"],
        serde_json::json!({"cpus": 2, "mem_mib": 1536, "gpus": 0, "time": null, "partition": null, "account": null})
    );

    let started = Instant::now();
    let local = local_build(&cluster, &p);
    assert_eq!(local.0, 0, "local build: {}", local.2);
    let local_seconds = started.elapsed().as_secs_f64();
    assert!(
        jobs(&local.1, "merged").is_empty(),
        "a local build submits nothing"
    );

    let started = Instant::now();
    let (code, events, err) =
        cluster.build_json(&p, &["recipe.yaml", "--executor", "slurm", "-j", "4"]);
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(code, 0, "{err}\n{events:#?}");
    eprintln!("4 steps: local build {local_seconds:.2}s, slurm build {seconds:.2}s");
    let steps = ["merged", "other", "patched", "summary"];
    assert_eq!(with_status(&events, "built"), steps);
    let node = hostname();
    let mut ids = Vec::new();
    for step in steps {
        let js = jobs(&events, step);
        let running = js.iter().find(|e| e["phase"] == "running");
        let done = js.iter().find(|e| e["phase"] == "done");
        let (Some(running), Some(done)) = (running, done) else {
            panic!("{step} did not run as a job: {js:?}");
        };
        assert!(running["job_id"].as_u64().is_some(), "{running}");
        assert_eq!(done["job_id"], running["job_id"]);
        assert_eq!(done["node"], node.as_str());
        let built = events
            .iter()
            .find(|e| e["event"] == "step" && e["step"] == step)
            .unwrap();
        assert_eq!(
            built["job_id"], done["job_id"],
            "the step event names its job"
        );
        assert_eq!(built["node"], node.as_str());
        ids.push(done["job_id"].as_u64().unwrap());
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 4, "one job per step: {ids:?}");

    for step in steps {
        let here = tree_bytes(&p.path(&format!("build/slurmdemo/{step}")));
        let there = tree_bytes(&p.path(&format!("local-build/slurmdemo/{step}")));
        assert!(!here.is_empty());
        assert!(here == there, "{step} differs from the local build");
    }
    let log = std::fs::read_to_string(p.path("build/slurmdemo/.slurm/merged.log")).unwrap();
    assert!(log.contains("yibuild-worker: job"), "{log}");

    // The same cache answers without submitting anything.
    let (code, events, err) = cluster.build_json(&p, &["recipe.yaml", "--executor", "slurm"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(with_status(&events, "cached"), steps);
    assert!(events.iter().all(|e| e["event"] != "job"));
    let verify = cluster.yibuild(&p, &["verify"]).output().unwrap();
    assert!(verify.status.success(), "{verify:?}");
}

/// A sweep: matrix instances, their fanned-out dependents, a report over
/// all of them and a selection, each instance its own job.
const SWEEP: &str = r#"
yibuild: 1
name: slurmsweep
sources:
  base: ./models/base
steps:
  variant:
    matrix: {theta: [1000, 3000, 2000]}
    patch_config:
      model: base
      set:
        rope_theta: ${{ matrix.theta }}
  score:
    run:
      command: >-
        printf '{"version":1,"perplexity":{"text":{"name":"t"},"perplexity":%s},"timing":{}}'
        $(grep -o '"rope_theta": [0-9.]*' "$YIBUILD_IN_VARIANT/config.json" | awk '{print $2 / 100}')
        > "$YIBUILD_OUT/results.json"
      inputs: [variant]
      outputs: [results.json]
  table:
    report: {evals: ['score[*]'], select: {metric: ppl.t, goal: min}}
  best:
    select: {report: table, models: ['variant[*]']}
default: [best]
"#;

#[test]
fn a_sweep_runs_each_instance_as_a_job() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let p = Project::with_base();
    p.write("recipe.yaml", SWEEP);
    let local = cluster.build_json(
        &p,
        &[
            "recipe.yaml",
            "--build-dir",
            "local-build",
            "--cache-dir",
            "local-cache",
        ],
    );
    assert_eq!(local.0, 0, "{}", local.2);
    let (code, events, err) =
        cluster.build_json(&p, &["recipe.yaml", "--executor", "slurm", "-j", "4"]);
    assert_eq!(code, 0, "{err}\n{events:#?}");
    let built = with_status(&events, "built");
    assert_eq!(built.len(), 8, "{built:?}");
    assert_eq!(built, with_status(&local.1, "built"));
    for step in &built {
        assert!(
            jobs(&events, step).iter().any(|e| e["phase"] == "done"),
            "{step} ran as a job"
        );
        let here = tree_bytes(&p.path(&format!("build/slurmsweep/{step}")));
        let there = tree_bytes(&p.path(&format!("local-build/slurmsweep/{step}")));
        assert!(here == there, "{step} differs from the local build");
    }
    let selected = std::fs::read_to_string(p.path("build/slurmsweep/best/config.json")).unwrap();
    assert!(selected.contains("\"rope_theta\": 1000"), "{selected}");
}

#[test]
fn failing_job_is_reported_with_its_id_state_and_log() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let p = Project::with_base();
    p.write(".yibuild.yaml", "executor: slurm\nslurm:\n  retries: 1\n");
    p.write(
        "recipe.yaml",
        r#"
yibuild: 1
name: slurmfail
sources:
  base: ./models/base
steps:
  patched:
    patch_config:
      model: base
      set: {max_position_embeddings: 8192}
  broken:
    run:
      command: "echo about to fail; echo boom-marker >&2; exit 7"
      inputs: [patched]
      outputs: [x.txt]
  after:
    run:
      command: "cp \"$YIBUILD_IN_BROKEN/x.txt\" \"$YIBUILD_OUT/\""
      inputs: [broken]
      outputs: [x.txt]
"#,
    );
    let (code, events, err) = cluster.build_json(&p, &["recipe.yaml"]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(with_status(&events, "built"), ["patched"]);
    assert_eq!(with_status(&events, "failed"), ["after", "broken"]);
    let failed: Vec<&Value> = jobs(&events, "broken")
        .into_iter()
        .filter(|e| e["phase"] == "failed")
        .collect();
    assert_eq!(failed.len(), 2, "`retries: 1` submits twice: {failed:?}");
    assert_ne!(failed[0]["job_id"], failed[1]["job_id"]);
    assert_eq!(failed[1]["state"], "FAILED");
    let id = failed[1]["job_id"].as_u64().unwrap();
    let step = events
        .iter()
        .find(|e| e["event"] == "step" && e["step"] == "broken")
        .unwrap();
    let error = step["error"].as_str().unwrap();
    assert!(
        error.contains(&format!("slurm job {id} on {}", hostname())),
        "{error}"
    );
    assert!(error.contains("ended FAILED"), "{error}");
    assert!(error.contains("boom-marker"), "the log tail: {error}");
    assert!(error.contains("broken.log"), "{error}");
    assert!(cluster.queue("slurmfail").is_empty());
}

#[test]
fn cancelled_build_leaves_no_jobs_and_a_sound_cache() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let p = Project::with_base();
    p.write(
        "recipe.yaml",
        r#"
yibuild: 1
name: slurmcancel
sources:
  base: ./models/base
steps:
  quick:
    patch_config:
      model: base
      set: {max_position_embeddings: 8192}
  slow:
    run:
      command: "echo started > \"$YIBUILD_OUT/half.txt\"; sleep 120; echo done > \"$YIBUILD_OUT/out.txt\""
      inputs: [quick]
      outputs: [out.txt]
"#,
    );
    for signal in [libc::SIGINT, libc::SIGKILL] {
        let mut child = cluster
            .yibuild(&p, &["--json", "recipe.yaml", "--executor", "slurm"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut seen = Vec::new();
        let job = loop {
            let line = lines
                .next()
                .expect("the build ended before `slow` ran")
                .unwrap();
            let e: Value = serde_json::from_str(&line).unwrap();
            seen.push(e.clone());
            if e["event"] == "job" && e["step"] == "slow" && e["phase"] == "running" {
                break e["job_id"].as_u64().unwrap();
            }
        };
        assert_eq!(cluster.queue("slurmcancel").len(), 1, "job {job} runs");
        // SAFETY: kill(2) of our own child.
        unsafe { libc::kill(child.id() as libc::pid_t, signal) };
        let rest: Vec<String> = lines.map_while(Result::ok).collect();
        let status = child.wait().unwrap();
        if signal == libc::SIGINT {
            assert_eq!(status.code(), Some(130), "{rest:?}");
            let last: Value = serde_json::from_str(rest.last().unwrap()).unwrap();
            assert_eq!(last["event"], "finished", "{rest:?}");
            assert_eq!(last["failed"], serde_json::json!(["slow"]));
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cluster.queue("slurmcancel").is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(
            cluster.queue("slurmcancel"),
            Vec::<String>::new(),
            "after signal {signal}, job {job} must be gone"
        );
        let verify = cluster.yibuild(&p, &["verify"]).output().unwrap();
        assert!(verify.status.success(), "{verify:?}");
        let status = cluster
            .yibuild(&p, &["status", "recipe.yaml"])
            .output()
            .unwrap();
        let status = String::from_utf8_lossy(&status.stdout);
        assert!(
            status.lines().any(|l| l.trim() == "missing slow"),
            "`slow` has no cache entry: {status}"
        );
    }
    // What finished before the cancel is reused.
    let (code, events, err) = cluster.build_json(&p, &["recipe.yaml", "quick"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(with_status(&events, "cached"), ["quick"]);
}

#[test]
fn memory_budget_is_per_job_and_jobs_queue_for_cpus() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let p = Project::with_base();
    let sleeper = |name: &str, extra: &str| {
        format!("  {name}:\n    run: {{command: \"sleep 1; echo {name} > $YIBUILD_OUT/x\", outputs: [x]{extra}}}\n")
    };
    let mut recipe =
        "yibuild: 1\nname: slurmmem\nsources:\n  base: ./models/base\nsteps:\n".to_owned();
    recipe += &sleeper("a", ", memory_mb: 1536");
    recipe += &sleeper("b", ", memory_mb: 1536");
    recipe += &sleeper("wide1", "");
    recipe += "    resources: {cpus: 6}\n";
    recipe += &sleeper("wide2", "");
    recipe += "    resources: {cpus: 6}\n";
    p.write("recipe.yaml", &recipe);
    let phases = |events: &[Value]| -> Vec<(String, String, u64)> {
        events
            .iter()
            .filter(|e| e["event"] == "job")
            .map(|e| {
                let s = |k: &str| e[k].as_str().unwrap().to_owned();
                (s("step"), s("phase"), e["job_id"].as_u64().unwrap())
            })
            .collect()
    };
    let at = |phases: &[(String, String, u64)], step: &str, phase: &str| {
        phases
            .iter()
            .position(|(s, p, _)| s == step && p == phase)
            .unwrap_or_else(|| panic!("no {phase} event for {step}: {phases:?}"))
    };

    // Locally, two 1.5 GiB steps never run together under a 2 GiB budget;
    // as jobs, each has its own 2 GiB (--mem), so both run at once.
    let args = ["--executor", "slurm", "-j", "2", "--mem-budget", "2GiB"];
    let mut all = vec!["recipe.yaml", "a", "b"];
    all.extend(args);
    let (code, events, err) = cluster.build_json(&p, &all);
    assert_eq!(code, 0, "{err}");
    let ph = phases(&events);
    assert!(at(&ph, "a", "running") < at(&ph, "b", "done"), "{ph:?}");
    assert!(at(&ph, "b", "running") < at(&ph, "a", "done"), "{ph:?}");

    // Two 6-CPU jobs do not fit the 8-CPU node together: one waits in
    // Slurm's queue, and the progress says so with its job id.
    let mut all = vec!["recipe.yaml", "wide1", "wide2"];
    all.extend(args);
    let (code, events, err) = cluster.build_json(&p, &all);
    assert_eq!(code, 0, "{err}");
    let ph = phases(&events);
    let queued: Vec<&(String, String, u64)> = ph.iter().filter(|(_, p, _)| p == "queued").collect();
    assert_eq!(queued.len(), 1, "{ph:?}");
    let (step, _, id) = queued[0];
    let running = at(&ph, step, "running");
    assert!(at(&ph, step, "queued") < running, "{ph:?}");
    assert_eq!(ph[running].2, *id, "{ph:?}");
}

/// The worker on its own, no cluster needed: it refuses a key that is not
/// the one it computes, and with the right key stores exactly that step.
#[test]
fn exec_step_builds_one_step_by_its_key() {
    let p = demo_project();
    let plan = p.run(&["plan", "--json", "recipe.yaml"]);
    let keys: Vec<Value> = String::from_utf8_lossy(&plan.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let merged = keys.iter().find(|e| e["step"] == "merged").unwrap();
    let key = merged["key"].as_str().unwrap();

    let wrong = "0".repeat(64);
    let out = p.run(&["exec-step", "recipe.yaml", "merged", "--key", &wrong]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("refusing to build `merged`"), "{err}");
    assert!(err.contains(key), "names the key it computes: {err}");

    let out = p.run(&["exec-step", "recipe.yaml", "patched", "--key", &wrong]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("input step `merged`"), "{err}");
    assert!(err.contains("is not in the cache"), "{err}");

    let out = p.run(&["exec-step", "recipe.yaml", "merged", "--key", key]);
    assert!(out.status.success(), "{out:?}");
    let status = p.run(&["status", "recipe.yaml"]);
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(status.contains("   fresh merged"), "{status}");
    assert!(status.contains(" missing patched"), "{status}");
    assert!(
        !p.path("build/slurmdemo").exists(),
        "the worker materializes nothing under build/"
    );
    let again = p.run(&["exec-step", "recipe.yaml", "merged", "--key", key]);
    assert!(String::from_utf8_lossy(&again.stdout).contains("note already in the cache"));
}

/// A job's word is not enough, no cluster needed: an `srun` that reports a
/// job and exits 0 without the worker storing anything leaves the step
/// failed, after every retry.
#[test]
fn a_job_that_stores_nothing_is_not_trusted() {
    use std::os::unix::fs::PermissionsExt;
    let p = Project::with_base();
    let srun = p.write(
        "fake-bin/srun",
        "#!/bin/sh\necho 'yibuild-worker: job 99 on fakenode'\nexit 0\n",
    );
    std::fs::set_permissions(&srun, std::fs::Permissions::from_mode(0o755)).unwrap();
    p.write(
        "recipe.yaml",
        "yibuild: 1\nname: liar\nsources:\n  base: ./models/base\nsteps:\n  patched:\n    patch_config: {model: base, set: {max_position_embeddings: 8192}}\n",
    );
    let path = format!(
        "{}:{}",
        p.path("fake-bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = p
        .cmd(&[
            "--json",
            "recipe.yaml",
            "--executor",
            "slurm",
            "--retries",
            "1",
        ])
        .env("PATH", path)
        .output()
        .unwrap();
    let (code, events, err) = parse_output(out);
    assert_eq!(code, 1, "{err}");
    assert_eq!(with_status(&events, "failed"), ["patched"]);
    let failed: Vec<&Value> = jobs(&events, "patched")
        .into_iter()
        .filter(|e| e["phase"] == "failed")
        .collect();
    assert_eq!(failed.len(), 2, "{events:?}");
    assert!(failed
        .iter()
        .all(|e| e["state"] == "COMPLETED" && e["job_id"] == 99));
    let step = events.iter().find(|e| e["event"] == "step").unwrap();
    let error = step["error"].as_str().unwrap();
    assert!(
        error.contains("slurm job 99 on fakenode exited 0 but the cache has no complete entry"),
        "{error}"
    );
    assert!(!p.path("build/liar/patched").exists());
}

/// Nodes that share no filesystem with the submit host: workers use a
/// node-local cache and the remote cache carries every output both ways.
#[test]
fn a_node_local_cache_moves_outputs_through_the_remote_cache() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let server = s3_server::S3Server::start();
    let p = demo_project();
    p.write(".yibuild.yaml", "slurm:\n  node_cache: node-cache\n");
    let url = server.url("nodes");
    let run = |extra: &[&str]| {
        let mut args = vec!["--json", "recipe.yaml", "--executor", "slurm", "-j", "4"];
        args.extend_from_slice(extra);
        let mut cmd = cluster.yibuild(&p, &args);
        cmd.envs(server.env());
        parse_output(cmd.output().unwrap())
    };

    let (code, _, err) = run(&[]);
    assert_eq!(
        code, 2,
        "node_cache without a remote cache is refused: {err}"
    );
    assert!(err.contains("slurm.node_cache"), "{err}");

    let (code, events, err) = run(&["--remote-cache", &url]);
    assert_eq!(code, 0, "{err}\n{events:?}");
    assert_eq!(
        with_status(&events, "built"),
        ["merged", "other", "patched", "summary"]
    );
    for step in ["merged", "patched", "other", "summary"] {
        assert!(!jobs(&events, step).is_empty(), "{step} ran as a job");
    }
    // The workers built into the node cache, downloading `patched`'s input
    // (`merged`) from the remote; the coordinator's cache got every output
    // from the remote and verifies.
    assert!(p.path("node-cache/objects").is_dir());
    let verify = p.run(&["verify"]);
    assert_eq!(verify.status.code(), Some(0));
    let local = local_build(&cluster, &p);
    assert_eq!(local.0, 0);
    assert_eq!(
        tree_bytes(&p.path("build/slurmdemo/summary")),
        tree_bytes(&p.path("local-build/slurmdemo/summary"))
    );
}

/// A merge with the default request (4 CPUs) and nothing written.
const DEFAULTS: &str = r#"
yibuild: 1
name: slurmfit
sources:
  base: ./models/base
  tuned: ./models/tuned
steps:
  merged:
    merge:
      merge_method: linear
      models:
        - model: base
          parameters: {weight: 0.7}
        - model: tuned
          parameters: {weight: 0.3}
      dtype: float32
"#;

/// The issue's cluster: nodes of 2 CPUs, a merge asking for 4 by default.
/// Its job is lowered to the node instead of pending forever.
#[test]
fn a_default_request_larger_than_the_nodes_is_lowered_to_fit() {
    let Some(cluster) = Cluster::with_cpus(2) else {
        return;
    };
    let p = demo_project();
    p.write("recipe.yaml", DEFAULTS);
    let plan = cluster
        .yibuild(&p, &["plan", "recipe.yaml", "--executor", "slurm"])
        .output()
        .unwrap();
    let plan = String::from_utf8_lossy(&plan.stdout).into_owned();
    assert!(
        plan.contains("slurm job: cpus=2 mem=2560M gpus=0 time=- partition=- (lowered to fit the nodes: cpus 4 → 2)"),
        "{plan}"
    );
    let started = Instant::now();
    let (code, events, err) = cluster.build_json(&p, &["recipe.yaml", "--executor", "slurm"]);
    assert_eq!(code, 0, "{err}\n{events:#?}");
    assert_eq!(with_status(&events, "built"), ["merged"]);
    assert!(
        jobs(&events, "merged").iter().any(|e| e["phase"] == "done"),
        "{events:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(120));
    let log = std::fs::read_to_string(p.path("build/slurmfit/.slurm/merged.log")).unwrap();
    assert!(log.contains("yibuild-worker: job"), "{log}");
    // The worker ran with the lowered thread count.
    let local = local_build(&cluster, &p);
    assert_eq!(local.0, 0, "{}", local.2);
    assert_eq!(
        tree_bytes(&p.path("build/slurmfit/merged")),
        tree_bytes(&p.path("local-build/slurmfit/merged"))
    );
}

/// Requests no node can ever run: one written in the recipe is refused
/// before anything is submitted; one Slurm accepts but leaves pending for
/// a reason that cannot clear (a time limit beyond its partition's) is
/// cancelled and its step fails with the reason. Neither waits forever.
#[test]
fn oversized_requests_are_refused_never_pending_forever() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let p = Project::with_base();
    let recipe = |resources: &str| {
        format!(
            "yibuild: 1\nname: slurmbig\nsources:\n  base: ./models/base\nsteps:\n  patched:\n    patch_config: {{model: base, set: {{max_position_embeddings: 8192}}}}\n  big:\n    run: {{command: \"echo hi > $YIBUILD_OUT/x\", inputs: [patched], outputs: [x]}}\n    resources: {resources}\n"
        )
    };
    p.write("recipe.yaml", &recipe("{cpus: 16}"));
    let started = Instant::now();
    let (code, events, err) = cluster.build_json(&p, &["recipe.yaml", "--executor", "slurm"]);
    assert_eq!(code, 2, "{err}\n{events:?}");
    assert!(err.contains("recipe.yaml:8:3"), "names the step: {err}");
    assert!(
        err.contains("step `big` cannot run as a Slurm job: no node of partition `debug` can run it: it asks for 16 CPUs, but its largest node has 8 (sinfo)"),
        "{err}"
    );
    assert!(err.contains("lower its `resources:`"), "{err}");
    assert!(
        events.iter().all(|e| e["event"] != "job"),
        "nothing submitted"
    );
    assert!(!p.path("build/slurmbig/patched").exists(), "nothing built");
    let plan = cluster
        .yibuild(&p, &["plan", "recipe.yaml", "--executor", "slurm"])
        .output()
        .unwrap();
    assert_eq!(plan.status.code(), Some(2), "plan refuses it too");

    p.write("recipe.yaml", &recipe("{partition: short, time: \"10\"}"));
    let (code, events, err) = cluster.build_json(&p, &["recipe.yaml", "--executor", "slurm"]);
    assert_eq!(code, 1, "{err}\n{events:?}");
    assert_eq!(with_status(&events, "built"), ["patched"]);
    let queued = jobs(&events, "big");
    let id = queued
        .iter()
        .find(|e| e["phase"] == "queued")
        .unwrap_or_else(|| panic!("the job was queued: {queued:?}"))["job_id"]
        .as_u64()
        .unwrap();
    let step = events
        .iter()
        .find(|e| e["event"] == "step" && e["step"] == "big")
        .unwrap();
    assert_eq!(step["status"], "failed");
    let error = step["error"].as_str().unwrap();
    assert!(
        error.contains(&format!(
            "slurm job {id} cannot start: it is pending with reason `PartitionTimeLimit`"
        )),
        "{error}"
    );
    assert!(error.contains("time=10 partition=short"), "{error}");
    assert!(
        cluster.queue("slurmbig").is_empty(),
        "the job was cancelled"
    );
    assert!(started.elapsed() < Duration::from_secs(60));
}
