//! Rendering build events: cargo-style status lines (with a progress bar on a
//! terminal) on stderr, or JSON Lines events on stdout for machines.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use crate::build::events::{step_warning, JobEvent, JobPhase, Reporter, StepStatus, Summary};
use crate::build::freshness::{join_reasons, StaleReason};

/// JSON Lines on stdout: the contract in DESIGN.md. A step that ran as a
/// cluster job also has its last `job_id` and `node` in its `step` event.
#[derive(Debug, Default)]
pub struct JsonReporter {
    out: Mutex<()>,
    jobs: Mutex<BTreeMap<String, LastJob>>,
}

/// A step's last job id and node, for its `step` event.
type LastJob = (Option<u64>, Option<String>);

impl JsonReporter {
    fn emit(&self, value: serde_json::Value) {
        let _guard = self.out.lock().unwrap();
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{value}").ok();
        stdout.flush().ok();
    }
}

impl Reporter for JsonReporter {
    fn waiting_for_lock(&self) {
        self.emit(json!({"event": "waiting", "reason": "cache locked by another build"}));
    }
    fn planned(&self, total: usize) {
        self.emit(json!({"event": "plan", "steps": total}));
    }
    fn dirty(&self, step: &str, reasons: &[StaleReason]) {
        self.emit(json!({"event": "dirty", "step": step, "reasons": reasons}));
    }
    fn started(&self, step: &str) {
        self.emit(json!({"event": "started", "step": step}));
    }
    fn note(&self, step: &str, line: &str) {
        match step_warning(line) {
            Some(w) => self.emit(json!({"event": "warning", "step": step, "message": w})),
            None => self.emit(json!({"event": "note", "step": step, "message": line})),
        }
    }
    fn warning(&self, message: &str) {
        self.emit(json!({"event": "warning", "message": message}));
    }
    fn job(&self, step: &str, e: &JobEvent) {
        self.jobs
            .lock()
            .unwrap()
            .insert(step.to_owned(), (e.job_id, e.node.map(str::to_owned)));
        let mut v = json!({"event": "job", "step": step, "phase": e.phase.as_str(), "job_id": e.job_id, "node": e.node});
        if let Some(state) = e.state {
            v["state"] = json!(state);
        }
        self.emit(v);
    }
    fn finished(
        &self,
        step: &str,
        status: StepStatus,
        key: &str,
        seconds: f64,
        detail: Option<&str>,
    ) {
        let mut v = json!({"event": "step", "step": step, "status": status.as_str(), "key": key, "seconds": seconds});
        if let Some(d) = detail {
            v["error"] = json!(d);
        }
        if status == StepStatus::Restored {
            v["remote"] = json!(true);
        }
        if let Some((id, node)) = self.jobs.lock().unwrap().remove(step) {
            v["job_id"] = json!(id);
            v["node"] = json!(node);
        }
        self.emit(v);
    }
    fn done(&self, s: &Summary) {
        self.emit(json!({"event": "finished", "ok": s.ok(), "built": s.built, "cached": s.cached, "remote": s.remote, "failed": s.failed, "seconds": s.seconds}));
    }
}

/// Human output on stderr: right-aligned verbs like cargo's, a progress bar on
/// a terminal, plain lines otherwise. Colour and bars follow [`crate::cli::term`]
/// (`NO_COLOR`, `CLICOLOR_FORCE`, `CLICOLOR`, `TERM=dumb`).
pub struct HumanReporter {
    color: bool,
    verbose: bool,
    quiet: bool,
    bar: Option<ProgressBar>,
}

impl HumanReporter {
    /// A reporter writing to stderr; `quiet` keeps only errors and the summary.
    pub fn new(verbose: bool, quiet: bool) -> HumanReporter {
        HumanReporter {
            color: crate::cli::term::stderr_color(),
            verbose,
            quiet,
            bar: None,
        }
        .with_bar(crate::cli::term::stderr_bars() && !quiet)
    }

    fn with_bar(mut self, on: bool) -> Self {
        if on {
            let bar = ProgressBar::hidden();
            let template = if self.color {
                "{prefix:>12.cyan.bold} [{bar:27}] {pos}/{len}: {wide_msg}"
            } else {
                "{prefix:>12} [{bar:27}] {pos}/{len}: {wide_msg}"
            };
            bar.set_style(
                ProgressStyle::with_template(template)
                    .unwrap()
                    .progress_chars("=> "),
            );
            bar.set_prefix("Building");
            self.bar = Some(bar);
        }
        self
    }

    /// Prints a status line: a 12-column right-aligned verb and a message.
    pub fn status(&self, verb: &str, message: &str, colour: &str) {
        let line = if self.color {
            format!("\x1b[1;{colour}m{verb:>12}\x1b[0m {message}")
        } else {
            format!("{verb:>12} {message}")
        };
        self.println(line);
    }

    /// Prints a line above the progress bar (or plainly without one).
    fn println(&self, line: String) {
        match &self.bar {
            Some(bar) if !bar.is_hidden() => bar.println(line),
            _ => eprintln!("{line}"),
        }
    }

    /// A label like `error` or `warning`, coloured on a terminal.
    fn label(&self, text: &str, colour: &str) -> String {
        if self.color {
            format!("\x1b[1;{colour}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }
}

impl Reporter for HumanReporter {
    fn waiting_for_lock(&self) {
        self.status(
            "Blocking",
            "waiting for the cache lock held by another build",
            "36",
        );
    }
    fn planned(&self, total: usize) {
        if let Some(bar) = &self.bar {
            bar.set_length(total as u64);
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            bar.enable_steady_tick(Duration::from_millis(200));
        }
    }
    fn dirty(&self, step: &str, reasons: &[StaleReason]) {
        if self.verbose {
            self.status("Dirty", &format!("{step}: {}", join_reasons(reasons)), "36");
        }
    }
    fn started(&self, step: &str) {
        if !self.quiet {
            self.status("Building", step, "32");
        }
        if let Some(bar) = &self.bar {
            bar.set_message(step.to_owned());
        }
    }
    fn job(&self, step: &str, e: &JobEvent) {
        if self.quiet {
            return;
        }
        let id = e.job_id.map_or("?".to_owned(), |i| i.to_string());
        let on = e.node.map(|n| format!(" on {n}")).unwrap_or_default();
        match e.phase {
            JobPhase::Queued => self.status("Queued", &format!("{step}: slurm job {id}"), "36"),
            JobPhase::Running => {
                self.status("Running", &format!("{step}: slurm job {id}{on}"), "36")
            }
            JobPhase::Done => self.status("Done", &format!("{step}: slurm job {id}{on}"), "36"),
            JobPhase::Failed => {} // the step's error says it all
        }
    }
    fn note(&self, step: &str, line: &str) {
        if let Some(w) = step_warning(line) {
            self.warning(&format!("{step}: {w}"));
        } else if self.verbose {
            self.status("Note", &format!("{step}: {line}"), "36");
        } else if let Some(bar) = &self.bar {
            bar.set_message(format!("{step}: {line}"));
        }
    }
    fn warning(&self, message: &str) {
        self.println(format!("{}: {message}", self.label("warning", "33")));
    }
    fn finished(
        &self,
        step: &str,
        status: StepStatus,
        _key: &str,
        seconds: f64,
        detail: Option<&str>,
    ) {
        if let Some(bar) = &self.bar {
            bar.inc(1);
        }
        match status {
            StepStatus::Cached if !self.quiet => self.status("Cached", step, "32"),
            StepStatus::Restored if !self.quiet => self.status("Restored", step, "32"),
            StepStatus::Built if !self.quiet => {
                self.status("Built", &format!("{step} in {seconds:.1}s"), "32")
            }
            StepStatus::Failed => {
                let msg = detail.unwrap_or("failed");
                self.println(format!(
                    "{}: step `{step}` failed: {msg}",
                    self.label("error", "31")
                ));
            }
            _ => {}
        }
    }
    fn done(&self, s: &Summary) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        let mut parts = vec![
            format!("{} built", s.built.len()),
            format!("{} cached", s.cached.len()),
        ];
        if !s.remote.is_empty() {
            parts[1].push_str(&format!(" ({} from the remote cache)", s.remote.len()));
        }
        if !s.failed.is_empty() {
            parts.push(format!("{} failed", s.failed.len()));
        }
        let verb = if s.ok() { "Finished" } else { "Failed" };
        self.status(
            verb,
            &format!("in {:.1}s: {}", s.seconds, parts.join(", ")),
            if s.ok() { "32" } else { "31" },
        );
    }
}
