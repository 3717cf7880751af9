//! Submitting one step as an `srun` job, following it, and deciding whether
//! it succeeded: only when the cache holds the step's action entry.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

use super::cancel::{self, Registration};
use super::nodes::Fitted;
use super::pending;
use super::worker::WorkerLine;
use super::JobRequest;
use crate::build::events::{JobEvent, JobPhase, Reporter};
use crate::build::options::{BuildOptions, SlurmConfig};
use crate::cache::remote::RemoteCache;
use crate::cache::{Cache, Manifest};
use crate::recipe::{Recipe, StepDef};
use crate::steps::Device;

/// Lines of a failed job's log quoted in its error.
const TAIL_LINES: usize = 15;

/// Runs `step` (key `key`) as a Slurm job asking for `job` (its request,
/// fitted to the partition's nodes by [`super::requests`]), resubmitting up
/// to `config.retries` times, and returns its manifest once the cache holds
/// it. With node-local caches the output comes back through `remote`, the
/// build's remote cache. A job that can never start fails at once, without
/// retries (see [`pending`]).
#[allow(clippy::too_many_arguments)]
pub fn run_step(
    cache: &Cache,
    remote: Option<&RemoteCache>,
    recipe: &Recipe,
    step: &StepDef,
    key: &str,
    opts: &BuildOptions,
    config: &SlurmConfig,
    planned: &Fitted,
    reporter: &dyn Reporter,
) -> Result<Manifest> {
    cancel::install();
    let request = &planned.request;
    if !planned.lowered.is_empty() {
        reporter.note(
            &step.name,
            &format!(
                "default request lowered to fit the partition's nodes: {}",
                planned.lowered.join(", ")
            ),
        );
    }
    let mut srun_args: Vec<OsString> =
        vec![format!("--job-name=yibuild:{}:{}", recipe.name, step.name).into()];
    srun_args.extend(request.srun_args().into_iter().map(OsString::from));
    srun_args.extend(config.srun_args.iter().map(OsString::from));
    srun_args.push("--".into());
    srun_args.extend(worker_command(
        cache, recipe, step, key, opts, config, request,
    )?);
    let log = std::path::absolute(&opts.build_dir)?
        .join(&recipe.name)
        .join(".slurm")
        .join(format!("{}.log", step.name.replace('/', "_")));
    std::fs::create_dir_all(log.parent().expect("a log file has a parent"))?;
    let attempts = config.retries + 1;
    let mut last = None;
    for attempt in 1..=attempts {
        if cancel::requested() {
            bail!("cancelled before it was submitted");
        }
        if attempt > 1 {
            reporter.note(
                &step.name,
                &format!("submitting again: attempt {attempt} of {attempts}"),
            );
        }
        let job = submit(&srun_args, &log, attempt, &step.name, reporter)?;
        let failed = |state: Option<&str>| {
            reporter.job(
                &step.name,
                &JobEvent {
                    phase: JobPhase::Failed,
                    job_id: job.id,
                    node: job.node.as_deref(),
                    state,
                },
            )
        };
        if let (Some(id), Some((reason, why))) = (job.id, &job.hopeless) {
            failed(Some("CANCELLED"));
            bail!(
                "slurm job {id} cannot start: it is pending with reason `{reason}` ({why}), so \
                 yibuild cancelled it\n  it asked for {}\n  log {}",
                request.describe(),
                relative_to_cwd(&log).display()
            );
        }
        if !job.status.success() {
            let state = job.id.map(final_state);
            failed(state.as_ref().map(|s| s.state.as_str()));
            last = Some(job.failure(state.as_ref(), &log));
        } else if let Some(manifest) = cache.lookup(key).or_else(|| {
            config
                .node_cache
                .as_ref()
                .and_then(|_| fetch_from_remote(cache, remote, key, &step.name, reporter))
        }) {
            reporter.job(
                &step.name,
                &JobEvent {
                    phase: JobPhase::Done,
                    job_id: job.id,
                    node: job.node.as_deref(),
                    state: None,
                },
            );
            return Ok(manifest);
        } else {
            failed(Some("COMPLETED"));
            last = Some(anyhow!(
                "{} exited 0 but the cache has no complete entry for key {key}; its output is \
                 not trusted (is the cache directory on a filesystem every node shares?)",
                job.describe()
            ));
        }
        if cancel::requested() {
            break;
        }
    }
    Err(last.expect("at least one attempt ran"))
}

/// `yibuild exec-step …` with everything the worker needs spelled out, so
/// that it does not depend on the node's environment or working directory.
fn worker_command(
    cache: &Cache,
    recipe: &Recipe,
    step: &StepDef,
    key: &str,
    opts: &BuildOptions,
    config: &SlurmConfig,
    request: &JobRequest,
) -> Result<Vec<OsString>> {
    let exe = std::env::current_exe().context("cannot find the yibuild executable")?;
    // The device keys were computed with: a node must not resolve `auto`
    // differently from the coordinator, or the keys would disagree.
    let device = match crate::eval::resolve_device(Device::Auto, opts.device) {
        Device::Auto => "auto",
        Device::Cpu => "cpu",
        Device::Cuda => "cuda",
    };
    let mut args: Vec<OsString> = vec![exe.into(), "exec-step".into()];
    args.push(std::path::absolute(&recipe.file)?.into());
    args.push(step.name.clone().into());
    args.push(format!("--key={key}").into());
    let mut cache_dir = OsString::from("--cache-dir=");
    match (&config.node_cache, &opts.remote) {
        (Some(node_cache), Some(remote)) => {
            cache_dir.push(node_cache);
            args.push(format!("--remote-cache={}", remote.url).into());
            args.push("--remote-cache-mode=read-write".into());
            args.push("--remote-cache-required".into());
            if let Some(endpoint) = &remote.endpoint {
                args.push(format!("--remote-cache-endpoint={endpoint}").into());
            }
        }
        _ => cache_dir.push(cache.root()),
    }
    args.push(cache_dir);
    args.push(format!("--threads={}", request.cpus).into());
    args.push(format!("--mem-budget={}", request.step_mem_budget()).into());
    args.push(format!("--device={device}").into());
    Ok(args)
}

/// With a node-local cache, the worker uploaded its output to the remote
/// cache: download it into the coordinator's cache (blake3-verified). A
/// failure is reported and leaves the step failed.
fn fetch_from_remote(
    cache: &Cache,
    remote: Option<&RemoteCache>,
    key: &str,
    step: &str,
    reporter: &dyn Reporter,
) -> Option<Manifest> {
    let fetched = (|| -> Result<Manifest> {
        let remote = remote.context("the remote cache is not usable")?;
        let manifest = remote
            .lookup(key)?
            .context("the worker's output is not in the remote cache")?;
        remote.pull(cache, key, &manifest)?;
        Ok(manifest)
    })();
    fetched
        .map_err(|e| reporter.note(step, &format!("cannot fetch the job's output: {e:#}")))
        .ok()
}

/// What one srun told us.
struct Job {
    id: Option<u64>,
    node: Option<String>,
    status: ExitStatus,
    tail: VecDeque<String>,
    /// The pending reason that can never clear, and what it means, when
    /// yibuild cancelled the job for it.
    hopeless: Option<(String, &'static str)>,
}

/// Output of a running srun: the log file and what was learned from it.
struct Watch<'a> {
    file: File,
    tail: VecDeque<String>,
    id: Option<u64>,
    /// Set once the job waits in the queue (srun said so).
    queued: bool,
    node: Option<String>,
    hopeless: Option<(String, &'static str)>,
    registration: &'a Registration,
}

impl Watch<'_> {
    fn line(&mut self, line: &str) {
        writeln!(self.file, "{line}").ok();
        if self.tail.len() == TAIL_LINES {
            self.tail.pop_front();
        }
        self.tail.push_back(line.to_owned());
    }

    fn learn_id(&mut self, id: u64) {
        self.id = Some(id);
        self.registration.set_job_id(id);
    }
}

/// Runs srun once, writing its output to `log` (appended, one header per
/// attempt) and reporting the job's phases as they are seen.
fn submit(
    srun_args: &[OsString],
    log: &Path,
    attempt: u32,
    step: &str,
    reporter: &dyn Reporter,
) -> Result<Job> {
    let mut cmd = Command::new("srun");
    cmd.args(srun_args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    // SAFETY: prctl is async-signal-safe. srun gets SIGTERM when the thread
    // that started it ends, which happens only when the coordinator dies;
    // srun then cancels the job.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    let mut file = File::options().create(true).append(true).open(log)?;
    writeln!(file, "=== yibuild: attempt {attempt}")?;
    let mut child = cmd
        .spawn()
        .context("cannot run `srun` (is Slurm installed, and SLURM_CONF set where needed?)")?;
    let registration = Registration::new(child.id());
    let watch = Mutex::new(Watch {
        file,
        tail: VecDeque::new(),
        id: None,
        queued: false,
        node: None,
        hopeless: None,
        registration: &registration,
    });
    let (ended, end) = std::sync::mpsc::channel::<()>();
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let status = std::thread::scope(|scope| {
        scope.spawn(|| {
            for_each_line(stdout, |line| match WorkerLine::parse(line) {
                Some(WorkerLine::Job { id, node }) => {
                    let mut w = watch.lock().unwrap();
                    w.line(line);
                    w.learn_id(id);
                    w.node = Some(node.clone());
                    drop(w);
                    reporter.job(
                        step,
                        &JobEvent {
                            phase: JobPhase::Running,
                            job_id: Some(id),
                            node: Some(&node),
                            state: None,
                        },
                    );
                }
                Some(WorkerLine::Note(note)) => {
                    watch.lock().unwrap().line(line);
                    reporter.note(step, &note);
                }
                None => watch.lock().unwrap().line(line),
            })
        });
        scope.spawn(|| {
            for_each_line(stderr, |line| {
                let mut w = watch.lock().unwrap();
                w.line(line);
                if let Some(id) = queued_job(line) {
                    w.learn_id(id);
                    w.queued = true;
                    drop(w);
                    reporter.job(
                        step,
                        &JobEvent {
                            phase: JobPhase::Queued,
                            job_id: Some(id),
                            node: None,
                            state: None,
                        },
                    );
                }
            })
        });
        // While the job waits in the queue, read its pending reason, and
        // cancel it once the reason shows it can never start.
        let watch = &watch;
        scope.spawn(move || {
            let mut pending_watch = pending::Watch::default();
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                end.recv_timeout(pending::POLL)
            {
                let (id, waiting) = {
                    let w = watch.lock().unwrap();
                    (w.id, w.queued && w.node.is_none() && w.hopeless.is_none())
                };
                let Some(id) = id.filter(|_| waiting) else {
                    continue;
                };
                let Some((state, reason)) = pending::state_and_reason(id) else {
                    continue;
                };
                if let Some(hopeless) = pending_watch.observe(&state, &reason) {
                    watch.lock().unwrap().hopeless = Some(hopeless);
                    pending::cancel(id);
                }
            }
        });
        let status = child.wait();
        drop(ended);
        status
    })?;
    let w = watch.into_inner().unwrap();
    Ok(Job {
        id: w.id,
        node: w.node,
        status,
        tail: w.tail,
        hopeless: w.hopeless,
    })
}

/// Calls `f` with each line of `pipe` (bytes that are not UTF-8 replaced).
fn for_each_line(pipe: impl Read, mut f: impl FnMut(&str)) {
    for line in BufReader::new(pipe).split(b'\n').map_while(Result::ok) {
        f(String::from_utf8_lossy(&line).trim_end_matches('\r'));
    }
}

/// The job id in srun's `srun: job 12 queued and waiting for resources`.
fn queued_job(line: &str) -> Option<u64> {
    let rest = line.strip_prefix("srun: job ")?;
    let (id, what) = rest.split_once(' ')?;
    what.starts_with("queued")
        .then(|| id.parse().ok())
        .flatten()
}

/// How Slurm says a job ended.
struct FinalState {
    state: String,
    reason: String,
    exit_code: String,
}

/// The job's final state from `scontrol show job`, waiting briefly while
/// it is still completing. Unknown fields read `?` (a job already purged).
fn final_state(id: u64) -> FinalState {
    let mut fields = Vec::new();
    for _ in 0..30 {
        let out = Command::new("scontrol")
            .args(["show", "job", "-o", &id.to_string()])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output();
        fields = out
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let state = fields.iter().find(|(k, _)| k == "JobState");
        if !matches!(state, Some((_, s)) if s == "RUNNING" || s == "COMPLETING" || s == "PENDING") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let get = |key: &str| {
        fields
            .iter()
            .find(|(k, _)| k == key)
            .map_or("?".to_owned(), |(_, v)| v.clone())
    };
    FinalState {
        state: get("JobState"),
        reason: get("Reason"),
        exit_code: get("ExitCode"),
    }
}

impl Job {
    /// `slurm job 12 on node-3`, or what is known of it.
    fn describe(&self) -> String {
        match (self.id, &self.node) {
            (Some(id), Some(node)) => format!("slurm job {id} on {node}"),
            (Some(id), None) => format!("slurm job {id}"),
            (None, _) => "srun (no job started)".to_owned(),
        }
    }

    /// The error for a job that did not succeed: id, node, state, log tail.
    fn failure(&self, state: Option<&FinalState>, log: &Path) -> anyhow::Error {
        let how = match state {
            Some(s) => format!(
                "ended {} (reason {}, exit code {})",
                s.state, s.reason, s.exit_code
            ),
            None => format!("failed: {}", self.status),
        };
        let cancelled = if cancel::requested() {
            " (cancelled by the user)"
        } else {
            ""
        };
        let tail: Vec<String> = self.tail.iter().map(|l| format!("    | {l}")).collect();
        anyhow!(
            "{} {how}{cancelled}\n  log {} (last {} lines):\n{}",
            self.describe(),
            relative_to_cwd(log).display(),
            tail.len(),
            tail.join("\n")
        )
    }
}

/// `p` relative to the working directory when it is under it.
fn relative_to_cwd(p: &Path) -> PathBuf {
    std::env::current_dir()
        .ok()
        .and_then(|cwd| p.strip_prefix(cwd).ok().map(Path::to_path_buf))
        .unwrap_or_else(|| p.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_srun_queue_messages() {
        assert_eq!(
            queued_job("srun: job 42 queued and waiting for resources"),
            Some(42)
        );
        assert_eq!(
            queued_job("srun: job 42 has been allocated resources"),
            None
        );
        assert_eq!(queued_job("srun: error: vm: task 0: Exited"), None);
    }

    fn exit_status(code: i32) -> ExitStatus {
        std::os::unix::process::ExitStatusExt::from_raw(code << 8)
    }

    #[test]
    fn failure_names_the_job_its_state_and_the_log_tail() {
        let job = Job {
            id: Some(31),
            node: Some("gpu-7".to_owned()),
            status: exit_status(1),
            tail: ["yibuild-worker: job 31 on gpu-7", "error: out of disk"]
                .map(str::to_owned)
                .into(),
            hopeless: None,
        };
        let state = FinalState {
            state: "TIMEOUT".to_owned(),
            reason: "TimeLimit".to_owned(),
            exit_code: "0:15".to_owned(),
        };
        let msg = job
            .failure(Some(&state), Path::new("/nowhere/b/.slurm/m.log"))
            .to_string();
        assert_eq!(
            msg,
            "slurm job 31 on gpu-7 ended TIMEOUT (reason TimeLimit, exit code 0:15)\n  \
             log /nowhere/b/.slurm/m.log (last 2 lines):\n    \
             | yibuild-worker: job 31 on gpu-7\n    | error: out of disk"
        );
        let unstarted = Job {
            id: None,
            node: None,
            status: exit_status(1),
            tail: VecDeque::new(),
            hopeless: None,
        };
        let msg = unstarted.failure(None, Path::new("/l")).to_string();
        assert!(
            msg.starts_with("srun (no job started) failed: exit status: 1"),
            "{msg}"
        );
    }
}
