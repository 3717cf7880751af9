//! The subcommands behind the CLI: each takes parsed options, does its work
//! through the library, and returns the text to print or the exit status.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::build::error::InputError;
use crate::build::events::{Reporter, Summary};
use crate::build::freshness::{self, State};
use crate::build::hub_sources::{pin_offline, HubSourceState};
use crate::build::options::{BuildOptions, Executor};
use crate::build::outputs::{output_dir, BUILD_MARKER};
use crate::build::plan::Plan;
use crate::build::sources::prepare_sources;
use crate::cache::remote::RemoteCache;
use crate::cache::Cache;
use crate::cli::reporters::{HumanReporter, JsonReporter};
use crate::fs::size::human_bytes;
use crate::hub::api::HubClient;
use crate::hub::HubConfig;
use crate::recipe::{Recipe, SourceSpec};

/// Builds the targets and reports through JSON or human output.
pub fn build(
    recipe: &Recipe,
    opts: &BuildOptions,
    json: bool,
    verbose: bool,
    quiet: bool,
) -> Result<Summary> {
    let reporter: Box<dyn Reporter> = if json {
        Box::new(JsonReporter::default())
    } else {
        Box::new(HumanReporter::new(verbose, quiet))
    };
    let summary = crate::build::exec::build(recipe, opts, reporter.as_ref())?;
    if !json && !quiet {
        print!("{}", eval_tables(recipe, &opts.build_dir, &summary));
    }
    Ok(summary)
}

/// The results of every eval step the build finished (built or cached), as one
/// table in recipe order.
fn eval_tables(recipe: &Recipe, build_dir: &Path, summary: &Summary) -> String {
    let finished = |n: &String| summary.built.contains(n) || summary.cached.contains(n);
    let results: Vec<_> = recipe
        .steps
        .iter()
        .filter(|s| s.step.kind() == "eval" && finished(&s.name))
        .filter_map(|s| {
            let path = output_dir(build_dir, recipe, &s.name).join("results.json");
            crate::eval::results::read_results(&path).ok()
        })
        .collect();
    let table = crate::eval::results::format_summary(&results);
    if table.is_empty() {
        table
    } else {
        format!("\n{table}")
    }
}

/// The state of every step in `plan`, read from the cache at `cache_dir`.
fn plan_states(
    plan: &Plan,
    cache_dir: &Path,
    remote: Option<&RemoteCache>,
) -> Result<Vec<(String, State)>> {
    let cache = Cache::open_unlocked(cache_dir)?;
    Ok(freshness::analyze(plan, &cache, remote))
}

/// `yibuild plan`: what would run and why, without running it. Hub sources
/// show what is left to download; an unpinned one is looked up on the Hub
/// (one request, nothing written) unless `hub.offline`. With a remote cache,
/// steps it holds are shown with the bytes left to download; with the Slurm
/// executor, each step to build also shows the resources it asks for, fitted
/// to the partition's nodes.
pub fn plan(recipe: &Recipe, opts: &BuildOptions, json: bool) -> Result<String> {
    let hub = HubConfig::from_env(opts.hub);
    let plan = Plan::new(recipe, &opts.targets)?;
    let order = &plan.order;
    let jobs = match &opts.executor {
        Executor::Slurm(config) => {
            let jobs = crate::build::slurm::requests(&plan, config, opts)?;
            if let Some(why) = &jobs.unchecked {
                eprintln!("warning: Slurm requests not checked against the nodes: {why}");
            }
            Some(jobs)
        }
        Executor::Local => None,
    };
    let jobs = jobs.as_ref();
    let mut out = String::new();
    let remote = match opts.remote.as_ref().map(RemoteCache::connect) {
        Some(Ok(r)) => Some(r),
        Some(Err(e)) => {
            eprintln!("warning: {e:#}; planning without it");
            None
        }
        None => None,
    };
    let states = plan_states(&plan, &opts.cache_dir, remote.as_ref())?;
    if json {
        for (name, state) in &states {
            let mut v = state_json(recipe, name, state);
            let action = match state {
                State::Fresh { .. } => "cached",
                State::Remote { .. } => "remote",
                State::Stale { .. } => "build",
            };
            v["action"] = serde_json::json!(action);
            if let (State::Remote { bytes, .. }, Some(obj)) = (state, v.as_object_mut()) {
                obj.insert("bytes".into(), serde_json::json!(bytes));
            }
            if let Some(job) = jobs.and_then(|j| j.steps.get(name)) {
                v["resources"] = serde_json::json!(job.request);
            }
            out.push_str(&format!("{v}\n"));
        }
        return Ok(out);
    }
    for name in order.iter().filter(|n| recipe.source(n).is_some()) {
        let src = recipe.source(name).expect("source");
        let avail = if src.hub_repo().is_some() {
            hub_availability(recipe, name, &hub)
        } else {
            match src.locate() {
                Ok(_) => "present".to_owned(),
                Err(e) => format!("MISSING: {e}"),
            }
        };
        out.push_str(&format!(
            "{:>12} {name} = {} ({avail})\n",
            "source",
            src.describe()
        ));
    }
    out.push_str(&matrix_summary(recipe, &states));
    let (mut fresh, mut build, mut remote_steps, mut remote_bytes) = (0, 0, 0, 0);
    for (name, state) in &states {
        let kind = recipe.step(name).expect("planned step").step.kind();
        match state {
            State::Fresh { .. } => {
                fresh += 1;
                out.push_str(&format!("{:>12} {name} ({kind})\n", "cached"));
            }
            State::Remote { bytes, .. } => {
                remote_steps += 1;
                remote_bytes += bytes;
                out.push_str(&format!(
                    "{:>12} {name} ({kind}): {} to download\n",
                    "remote",
                    human_bytes(*bytes)
                ));
            }
            State::Stale { reasons, .. } => {
                build += 1;
                out.push_str(&format!(
                    "{:>12} {name} ({kind}): {}\n",
                    "build",
                    freshness::join_reasons(reasons)
                ));
                if let Some(job) = jobs.and_then(|j| j.steps.get(name)) {
                    out.push_str(&format!("{:>12} slurm job: {}", "", job.request.describe()));
                    if !job.lowered.is_empty() {
                        out.push_str(&format!(
                            " (lowered to fit the nodes: {})",
                            job.lowered.join(", ")
                        ));
                    }
                    out.push('\n');
                }
            }
        }
    }
    out.push_str(&format!("{build} to build, {fresh} cached"));
    if remote_steps > 0 {
        out.push_str(&format!(
            ", {remote_steps} from the remote cache ({} to download)",
            human_bytes(remote_bytes)
        ));
    }
    out.push('\n');
    Ok(out)
}

/// What `plan` says about a Hub source: "present", or "to fetch" with the
/// bytes the lock (or the Hub cache, or else the Hub) knows of.
fn hub_availability(recipe: &Recipe, name: &str, hub: &HubConfig) -> String {
    match pin_offline(recipe, name, hub) {
        Ok(HubSourceState::Pinned(p)) => {
            let missing = p.missing();
            if missing.is_empty() {
                format!("present, commit {}", &p.entry.commit[..12])
            } else {
                format!(
                    "to fetch: {} of {} files, {}, commit {}",
                    missing.len(),
                    p.entry.files.len(),
                    human_bytes(p.missing_bytes()),
                    &p.entry.commit[..12]
                )
            }
        }
        Ok(HubSourceState::Unresolved) if hub.offline => {
            "to fetch: not pinned yet, size unknown".to_owned()
        }
        Ok(HubSourceState::Unresolved) => {
            let Some(SourceSpec::Hub { repo, revision }) = recipe.source(name).map(|s| &s.spec)
            else {
                unreachable!("pin_offline answers for Hub sources only");
            };
            match HubClient::new(hub).revision(repo, revision) {
                Ok(remote) => {
                    let needed: Vec<_> = remote
                        .files
                        .iter()
                        .filter(|(p, _)| crate::hub::select::needed(p))
                        .collect();
                    format!(
                        "to fetch: {} files, {}, commit {}, not locked yet",
                        needed.len(),
                        human_bytes(needed.iter().map(|(_, f)| f.size).sum()),
                        &remote.commit[..12]
                    )
                }
                Err(e) => format!("to fetch: size unknown ({e:#})"),
            }
        }
        Err(e) => format!("to fetch: {e:#}"),
    }
}

/// `yibuild fetch`: pins and downloads the Hub sources the targets need, with
/// the pre-flight checks, without building anything.
pub fn fetch(recipe: &Recipe, opts: &BuildOptions, verbose: bool) -> Result<String> {
    let plan = Plan::new(recipe, &opts.targets)?;
    let cache = Cache::open_locked(&opts.cache_dir, &|| {
        eprintln!("    Blocking waiting for the cache lock")
    })?;
    let hub = HubConfig::from_env(opts.hub);
    let log = |name: &str, line: &str| {
        if verbose {
            eprintln!("{:>12} {name}: {line}", "Note");
        }
    };
    let artifacts = prepare_sources(recipe, &plan.order, &cache, &hub, &log)?;
    let mut out = String::new();
    for name in plan.order.iter().filter(|n| recipe.source(n).is_some()) {
        let src = recipe.source(name).expect("source");
        out.push_str(&format!(
            "{:>12} {name} = {} ({})\n",
            "ready",
            src.describe(),
            artifacts[name].path.display()
        ));
    }
    Ok(out)
}

/// One line per expanded step of the plan: how many instances, over which
/// axes, and how many of them are cached.
fn matrix_summary(recipe: &Recipe, states: &[(String, State)]) -> String {
    let mut out = String::new();
    for m in &recipe.matrices {
        let planned: Vec<&State> = m
            .instances
            .iter()
            .filter_map(|i| states.iter().find(|(n, _)| *n == i.name).map(|(_, s)| s))
            .collect();
        if planned.is_empty() {
            continue;
        }
        let cached = planned.iter().filter(|s| s.is_available()).count();
        out.push_str(&format!(
            "{:>12} {}: {} of {} variants over {} ({cached} cached, {} to build)\n",
            "matrix",
            m.step,
            planned.len(),
            m.instances.len(),
            m.axes.join(" × "),
            planned.len() - cached
        ));
    }
    out
}

/// `yibuild report`: the table of each report step of the recipe, read from
/// its materialized `report.json` under the build directory.
pub fn report(recipe: &Recipe, build_dir: &Path) -> Result<String> {
    let steps: Vec<&str> = recipe
        .steps
        .iter()
        .filter(|s| s.step.kind() == "report")
        .map(|s| s.name.as_str())
        .collect();
    if steps.is_empty() {
        bail!("recipe {} has no `report` step", recipe.file.display());
    }
    let mut out = String::new();
    for step in steps {
        let path = output_dir(build_dir, recipe, step).join("report.json");
        if !path.exists() {
            bail!(
                "`{step}` has not been built yet ({} is missing): run `yibuild {} {step}` first",
                path.display(),
                recipe.file.display()
            );
        }
        let text = std::fs::read_to_string(&path)?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{} is not a report: {e}", path.display()))?;
        let table = crate::sweep::from_report_json(&v);
        out.push_str(&format!("{step}\n{}", table.terminal()));
        if let Some(sel) = v["selected"]["variant"].as_str() {
            out.push_str(&format!(
                "selected: {sel} ({} {})\n",
                v["selected"]["goal"].as_str().unwrap_or_default(),
                v["selected"]["metric"].as_str().unwrap_or_default()
            ));
        }
    }
    Ok(out)
}

/// `yibuild status`: fresh / stale / missing for every step.
pub fn status(recipe: &Recipe, cache_dir: &Path, json: bool) -> Result<String> {
    let all: Vec<String> = recipe.steps.iter().map(|s| s.name.clone()).collect();
    let states = plan_states(&Plan::new(recipe, &all)?, cache_dir, None)?;
    let mut out = String::new();
    for (name, state) in &states {
        if json {
            out.push_str(&format!("{}\n", state_json(recipe, name, state)));
        } else {
            out.push_str(&format!("{:>8} {name}\n", state.word()));
        }
    }
    Ok(out)
}

/// One step's state as a JSON object, the same for `plan`, `status` and
/// `explain`: `event: "state"`, the step, its kind, its state word, its key
/// and, when it must be built, the typed reasons.
fn state_json(recipe: &Recipe, name: &str, state: &State) -> serde_json::Value {
    let kind = recipe.step(name).map(|s| s.step.kind());
    let mut v =
        serde_json::json!({"event": "state", "step": name, "kind": kind, "state": state.word()});
    match state {
        State::Fresh { key } | State::Remote { key, .. } => v["key"] = serde_json::json!(key),
        State::Stale { key, reasons, .. } => {
            v["key"] = serde_json::json!(key);
            v["reasons"] = serde_json::json!(reasons);
        }
    }
    v
}

/// `yibuild explain STEP`: which input or parameter changed since it last built.
pub fn explain(recipe: &Recipe, cache_dir: &Path, step: &str, json: bool) -> Result<String> {
    if recipe.step(step).is_none() {
        return Err(InputError::UnknownStep {
            recipe: recipe.file.clone(),
            name: step.to_owned(),
            hint: None,
        }
        .into());
    }
    let plan = Plan::new(recipe, &[step.to_owned()])?;
    let states = plan_states(&plan, cache_dir, None)?;
    let (_, state) = states
        .into_iter()
        .find(|(n, _)| n == step)
        .expect("target is planned");
    if json {
        return Ok(format!("{}\n", state_json(recipe, step, &state)));
    }
    Ok(match state {
        State::Fresh { key } => format!("`{step}` is fresh (key {})\n", &key[..16]),
        State::Remote { key, .. } => {
            format!("`{step}` is in the remote cache (key {})\n", &key[..16])
        }
        State::Stale { reasons, .. } => {
            let mut s = format!("`{step}` must be rebuilt:\n");
            for r in reasons {
                s.push_str(&format!("  - {r}\n"));
            }
            s
        }
    })
}

/// `yibuild graph`: the DAG as DOT or mermaid.
pub fn graph(recipe: &Recipe, format: &str) -> Result<String> {
    let g = &Plan::new(recipe, &[])?.graph;
    match format {
        "dot" => Ok(g.to_dot(recipe)),
        "mermaid" => Ok(g.to_mermaid(recipe, crate::recipe::graph::Detail::Instances)),
        other => bail!("unknown graph format `{other}` (expected dot or mermaid)"),
    }
}

/// `yibuild verify`: re-hash every object; returns the problems found.
pub fn verify(cache_dir: &Path, repair: bool) -> Result<Vec<String>> {
    if repair {
        refuse_cache_holding_cwd(cache_dir)?;
    }
    let cache = Cache::open_locked(cache_dir, &|| {
        eprintln!("    Blocking waiting for the cache lock")
    })?;
    Ok(cache.verify(repair)?)
}

/// `yibuild gc`: drop what no build record references.
pub fn gc(cache_dir: &Path, yes: bool) -> Result<String> {
    refuse_cache_holding_cwd(cache_dir)?;
    let cache = Cache::open_locked(cache_dir, &|| {
        eprintln!("    Blocking waiting for the cache lock")
    })?;
    let (actions, objects, bytes) = cache.gc(!yes)?;
    let verb = if yes { "removed" } else { "would remove" };
    let mut s = format!(
        "{verb} {actions} actions and {objects} objects ({:.1} MiB)",
        bytes as f64 / (1 << 20) as f64
    );
    if !yes && (actions > 0 || objects > 0) {
        s.push_str("; run `yibuild gc --yes` to do it");
    }
    Ok(s)
}

/// Removing from a cache directory that is (or holds) the current directory
/// would treat the project's own `objects/` or `actions/` as cache debris:
/// refused ([`InputError`], exit 2).
fn refuse_cache_holding_cwd(cache_dir: &Path) -> Result<()> {
    if crate::fs::names::contains(cache_dir, &std::env::current_dir()?) {
        return Err(InputError::Refused {
            action: "remove anything from the cache directory".to_owned(),
            path: cache_dir.to_owned(),
            why: "it is the current directory or holds it".to_owned(),
        }
        .into());
    }
    Ok(())
}

/// `yibuild clean`: remove a recipe's materialized outputs (the cache keeps
/// them), or with no recipe every recipe's. Only folders yibuild made (they
/// hold [`BUILD_MARKER`]) inside the build directory are removed, and
/// never one that holds the current directory; anything else is refused
/// ([`InputError`], exit 2) before anything is removed. Returns what
/// was cleaned.
pub fn clean(build_dir: &Path, recipe: Option<&Recipe>) -> Result<PathBuf> {
    let refuse = |what: &Path, why: &str| -> anyhow::Error {
        InputError::Refused {
            action: "clean".to_owned(),
            path: what.to_owned(),
            why: why.to_owned(),
        }
        .into()
    };
    let cwd = std::env::current_dir()?;
    if crate::fs::names::contains(build_dir, &cwd) {
        return Err(refuse(
            build_dir,
            "the build directory is the current directory or holds it",
        ));
    }
    let targets = match recipe {
        Some(r) => {
            crate::fs::names::check_component("recipe name", &r.name)
                .map_err(|e| refuse(build_dir, &e))?;
            let target = build_dir.join(&r.name);
            if std::fs::symlink_metadata(&target).is_err() {
                return Ok(target);
            }
            vec![target]
        }
        None => match std::fs::read_dir(build_dir) {
            Ok(entries) => entries
                .filter_map(|e| e.ok())
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .filter(|p| p.join(BUILD_MARKER).is_file())
                .collect(),
            Err(_) => return Ok(build_dir.to_path_buf()),
        },
    };
    for target in &targets {
        let meta = std::fs::symlink_metadata(target)?;
        if !meta.is_dir() {
            return Err(refuse(target, "it is not a folder"));
        }
        if !target.join(BUILD_MARKER).is_file() {
            return Err(refuse(
                target,
                &format!("yibuild did not make it (no {} in it)", BUILD_MARKER),
            ));
        }
    }
    for target in &targets {
        std::fs::remove_dir_all(target)
            .with_context(|| format!("cannot remove {}", target.display()))?;
    }
    match recipe {
        Some(_) => Ok(targets.into_iter().next().unwrap_or_default()),
        None => {
            // The build directory itself goes only when nothing else is in it.
            std::fs::remove_dir(build_dir).ok();
            Ok(build_dir.to_path_buf())
        }
    }
}

/// `yibuild inspect PATH`: for a model folder, its architecture, sizes,
/// vocabularies, special tokens and chat template; for a `.gguf` file, its
/// metadata and tensors.
pub fn inspect(path: &Path) -> Result<String> {
    if path.is_file() {
        crate::gguf::inspect_gguf(path)
    } else {
        crate::tokenizer::inspect::inspect_model(path)
    }
}

/// Which way `yibuild cache push|pull` moves outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transfer {
    /// Upload the recipe's locally cached outputs.
    Push,
    /// Download every output of the recipe the remote cache holds.
    Pull,
}

/// `yibuild cache push|pull RECIPE`: seeds the remote cache from a finished
/// local build, or warms the local cache (before going offline, say). Steps
/// neither side has are listed, not built.
pub fn cache_transfer(recipe: &Recipe, opts: &BuildOptions, direction: Transfer) -> Result<String> {
    let Some(settings) = &opts.remote else {
        return Err(InputError::Unusable(
            "no remote cache is configured (--remote-cache, YIBUILD_REMOTE_CACHE or remote_cache in .yibuild.yaml)"
                .to_owned(),
        )
        .into());
    };
    if direction == Transfer::Push && !settings.mode.writes() {
        return Err(InputError::Unusable(format!(
            "the remote cache {} is read-only here (mode read)",
            settings.url
        ))
        .into());
    }
    let remote = RemoteCache::connect(settings)?;
    let cache = Cache::open_locked(&opts.cache_dir, &|| {
        eprintln!("{:>12} waiting for the cache lock", "Blocking")
    })?;
    let plan = Plan::new(recipe, &opts.targets)?;
    let lookup = (direction == Transfer::Pull).then_some(&remote);
    let (mut moved, mut bytes, mut missing) = (0, 0, 0);
    let mut out = String::new();
    for (name, state) in freshness::analyze(&plan, &cache, lookup) {
        match (direction, state) {
            (Transfer::Push, State::Fresh { key }) => {
                let manifest = cache.lookup(&key).expect("a fresh step is in the cache");
                let pushed = remote.push(&cache, &key, &manifest)?;
                moved += 1;
                bytes += pushed.bytes;
                out.push_str(&format!(
                    "{:>12} {name} ({} uploaded)\n",
                    "pushed",
                    human_bytes(pushed.bytes)
                ));
            }
            (Transfer::Pull, State::Remote { key, manifest, .. }) => {
                let fetched = remote.pull(&cache, &key, &manifest)?;
                moved += 1;
                bytes += fetched;
                out.push_str(&format!(
                    "{:>12} {name} ({} downloaded)\n",
                    "pulled",
                    human_bytes(fetched)
                ));
            }
            (_, State::Fresh { .. }) => {}
            (_, _) => {
                missing += 1;
                let side = match direction {
                    Transfer::Push => "not built locally",
                    Transfer::Pull => "not in the remote cache",
                };
                out.push_str(&format!("{:>12} {name}: {side}\n", "skipped"));
            }
        }
    }
    cache.memo().save()?;
    let verb = match direction {
        Transfer::Push => "pushed",
        Transfer::Pull => "pulled",
    };
    out.push_str(&format!(
        "{moved} {verb} ({}), {missing} skipped\n",
        human_bytes(bytes)
    ));
    Ok(out)
}

/// `yibuild publish`: builds the releases of the recipe's publish steps (all
/// of them, or those in `steps`), then uploads each to the Hub — always,
/// whatever the cache remembers, since only the Hub knows what it holds; the
/// upload itself skips what is already there. With `dry_run` nothing is sent
/// or created: the Hub is only asked what it has. Returns the text to print,
/// or `None` when building a release failed.
pub fn publish(
    recipe: &Recipe,
    mut opts: BuildOptions,
    steps: &[String],
    dry_run: bool,
    json: bool,
    quiet: bool,
    verbose: bool,
) -> Result<Option<String>> {
    use crate::steps::publish::{publish_release, FileOutcome, PublishSpec};
    let mut selected = Vec::new();
    for name in steps {
        let Some(found) = recipe.resolve_target(name) else {
            return Err(InputError::UnknownStep {
                recipe: recipe.file.clone(),
                name: name.clone(),
                hint: None,
            }
            .into());
        };
        selected.extend(found);
    }
    if steps.is_empty() {
        selected = recipe
            .steps
            .iter()
            .filter(|s| s.step.kind() == "publish")
            .map(|s| s.name.clone())
            .collect();
    }
    let mut jobs = Vec::new();
    for name in &selected {
        let step = recipe.step(name).expect("resolved targets are steps");
        if step.step.kind() != "publish" {
            return Err(InputError::Unusable(format!(
                "`{name}` is a {} step, not a publish step",
                step.step.kind()
            ))
            .into());
        }
        let release = step.step.inputs()[0].name.clone();
        jobs.push((
            name.clone(),
            release,
            PublishSpec::from_json(&step.step.params())?,
        ));
    }
    if jobs.is_empty() {
        return Err(InputError::Unusable(format!(
            "recipe {} has no publish step (add one: `publish: {{release: STEP, repo: org/name}}`)",
            recipe.file.display()
        ))
        .into());
    }
    opts.targets = jobs.iter().map(|(_, release, _)| release.clone()).collect();
    let summary = build(recipe, &opts, json, verbose, quiet)?;
    if !summary.ok() {
        return Ok(None);
    }
    let config = HubConfig::from_env(opts.hub);
    let mut out = String::new();
    for (name, release, spec) in &jobs {
        let log = |line: &str| {
            if json {
                println!(
                    "{}",
                    serde_json::json!({"event": "note", "step": name, "message": line})
                );
            } else if !quiet {
                eprintln!("{:>12} {line}", "Publish");
            }
        };
        let dir = output_dir(&opts.build_dir, recipe, release);
        let reports = publish_release(&config, &dir, spec, dry_run, &log)
            .with_context(|| format!("publish step `{name}`"))?;
        for r in &reports {
            if json {
                let mut v = r.to_json();
                v["event"] = serde_json::json!("publish");
                v["step"] = serde_json::json!(name);
                out.push_str(&format!("{v}\n"));
                continue;
            }
            let changed: Vec<_> = r.changed().collect();
            let lfs = changed
                .iter()
                .filter(|(_, _, o)| *o == FileOutcome::Lfs)
                .count();
            let unchanged = r.files.len() - changed.len();
            let (verb, sent) = match r.dry_run {
                true => ("Dry run of", "would be sent"),
                false => ("Published", "sent"),
            };
            let created = match (r.created, r.dry_run) {
                (true, true) => " (new repository)",
                (true, false) => " (created)",
                _ => "",
            };
            let commit = match &r.commit {
                Some(c) => format!("; commit {c}"),
                None if changed.is_empty() => "; up to date, no commit".to_owned(),
                None => String::new(),
            };
            out.push_str(&format!(
                "{verb} `{name}` to {}@{}{created}: {} files {sent} ({lfs} through LFS), {unchanged} unchanged{commit}\n",
                r.repo,
                r.revision,
                changed.len(),
            ));
            for (path, size, outcome) in changed {
                out.push_str(&format!(
                    "  {:<8} {:>10}  {path}\n",
                    outcome.as_str(),
                    human_bytes(*size)
                ));
            }
        }
    }
    Ok(Some(out))
}
