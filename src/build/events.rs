//! What a build reports as it goes: the [`Reporter`] trait the build layer
//! calls, and the data it passes (step outcomes, job phases, the summary).
//! Rendering them (status lines, progress bars, JSON Lines) is the CLI's job
//! (`crate::cli::reporters`).

use crate::build::freshness::StaleReason;

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepStatus {
    /// Ran and stored its output.
    Built,
    /// Taken from the cache.
    Cached,
    /// Downloaded from the remote cache.
    Restored,
    /// Failed (or was skipped because an input failed).
    Failed,
}

impl StepStatus {
    /// The JSON spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Built => "built",
            StepStatus::Cached | StepStatus::Restored => "cached",
            StepStatus::Failed => "failed",
        }
    }
}

/// The outcome of a whole build.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    /// Steps that ran.
    pub built: Vec<String>,
    /// Steps taken from the cache (local or remote).
    pub cached: Vec<String>,
    /// The cached steps that were downloaded from the remote cache.
    pub remote: Vec<String>,
    /// Steps that failed or could not run because an input failed.
    pub failed: Vec<String>,
    /// Wall time of the build.
    pub seconds: f64,
}

impl Summary {
    /// True when nothing failed.
    pub fn ok(&self) -> bool {
        self.failed.is_empty()
    }
}

/// Where a step's cluster job is (the Slurm executor).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobPhase {
    /// Submitted, waiting for resources.
    Queued,
    /// Running on a node.
    Running,
    /// Ended, and its output is in the cache.
    Done,
    /// Failed, was cancelled or timed out, or left no output in the cache.
    Failed,
}

impl JobPhase {
    /// The JSON spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            JobPhase::Queued => "queued",
            JobPhase::Running => "running",
            JobPhase::Done => "done",
            JobPhase::Failed => "failed",
        }
    }
}

/// A change in a step's cluster job.
#[derive(Debug, Clone, Copy)]
pub struct JobEvent<'a> {
    /// The new phase.
    pub phase: JobPhase,
    /// The scheduler's job id, once known.
    pub job_id: Option<u64>,
    /// The node it runs on, once known.
    pub node: Option<&'a str>,
    /// The scheduler's own state word (`FAILED`, `TIMEOUT`, `CANCELLED`, …)
    /// for failed jobs.
    pub state: Option<&'a str>,
}

/// The message of a step's log line that is a warning (`warning: ...`).
pub fn step_warning(line: &str) -> Option<&str> {
    line.strip_prefix("warning: ")
}

/// Receives build events. Implementations must be cheap and thread-safe.
pub trait Reporter: Sync {
    /// The cache is locked by another build; this one waits.
    fn waiting_for_lock(&self);
    /// The build is about to run `total` steps.
    fn planned(&self, total: usize);
    /// A step must run, for `reasons` (never built, or what changed).
    fn dirty(&self, step: &str, reasons: &[StaleReason]);
    /// A step started running.
    fn started(&self, step: &str);
    /// A step produced a line of progress or a note. A line that starts
    /// with `warning: ` is a warning about the step's output, which is shown
    /// without `-v` (see [`step_warning`]).
    fn note(&self, step: &str, line: &str);
    /// Something the user should know that does not fail the build (a
    /// remote cache that cannot be reached, a refused remote entry).
    fn warning(&self, message: &str);
    /// A step's cluster job changed phase (the Slurm executor only).
    fn job(&self, _step: &str, _event: &JobEvent) {}
    /// A step finished. `detail` is the failure cause for failed steps.
    fn finished(
        &self,
        step: &str,
        status: StepStatus,
        key: &str,
        seconds: f64,
        detail: Option<&str>,
    );
    /// The build ended.
    fn done(&self, summary: &Summary);
}
