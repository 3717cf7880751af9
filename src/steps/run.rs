//! `run`: any external command (a converter, an evaluation script) as a cached
//! step with declared inputs and outputs.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use serde_json::json;

use super::{input_ref, InputRef, ParseContext, Step, StepContext};
use crate::syntax::diag::RecipeError;
use crate::syntax::fields::Fields;
use crate::syntax::yaml::Node;

/// A `run` step: `sh -c COMMAND` with `YIBUILD_IN_<NAME>` pointing at each input
/// (an input that is one instance of a sweep also as `YIBUILD_IN_<STEP>`) and
/// `YIBUILD_OUT` at the directory it must fill.
#[derive(Debug, Clone)]
pub struct Run {
    command: String,
    inputs: Vec<InputRef>,
    outputs: Vec<String>,
    /// Free text that names the external tool's version, so upgrading the tool
    /// can invalidate the cache (`tool: exllamav2-0.2.8`).
    tool: Option<String>,
    memory: Option<u64>,
}

impl Run {
    /// Parses `{command, inputs: [names], outputs: [relative paths], tool, memory_mb}`.
    pub fn parse(node: &Node, cx: &ParseContext) -> Result<Run, RecipeError> {
        let f = Fields::new(
            cx.diag,
            node,
            format!("run step `{}`", cx.step),
            &["command", "inputs", "outputs", "tool", "memory_mb"],
        )?;
        f.finish()?;
        let inputs = match f.opt("inputs") {
            None => Vec::new(),
            Some(n) => match n.as_seq() {
                Some(items) => items
                    .iter()
                    .map(|i| input_ref(cx.diag, i, "inputs"))
                    .collect::<Result<_, _>>()?,
                None => vec![input_ref(cx.diag, n, "inputs")?],
            },
        };
        let outputs = f.opt_str_list("outputs")?;
        for (i, out) in outputs.iter().enumerate() {
            if let Some(why) = crate::fs::names::relative_path_problem(out) {
                let span = f
                    .opt("outputs")
                    .and_then(|n| n.as_seq())
                    .map_or(node.span, |s| s[i].span);
                return Err(cx.diag.error(
                    span,
                    format!(
                        "output `{out}` must be a path inside the step's output directory ({why})"
                    ),
                ));
            }
        }
        Ok(Run {
            command: f.req_str("command")?,
            inputs,
            outputs,
            tool: f.opt_str("tool")?,
            memory: f.opt_u64("memory_mb")?.map(|mb| mb << 20),
        })
    }
}

/// How long to wait for the rest of a finished command's stderr.
const STDERR_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// The process group of a `run` command (its id is the shell's pid). Dropping
/// it kills every process left in the group.
struct ProcessGroup(u32);

impl ProcessGroup {
    /// Waits until the group's leader (the shell) exits, without reaping it:
    /// while it is unreaped its pid cannot be reused, so killing the group
    /// afterwards cannot hit an unrelated process.
    fn wait_for_leader(&self) -> std::io::Result<()> {
        loop {
            // SAFETY: waitid fills a zeroed siginfo_t we own.
            let rc = unsafe {
                let mut info: libc::siginfo_t = std::mem::zeroed();
                libc::waitid(
                    libc::P_PID,
                    self.0 as libc::id_t,
                    &mut info,
                    libc::WEXITED | libc::WNOWAIT,
                )
            };
            if rc == 0 {
                return Ok(());
            }
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // SAFETY: a plain syscall; ESRCH (no process left) is the usual answer.
        unsafe {
            libc::kill(-(self.0 as libc::pid_t), libc::SIGKILL);
        }
    }
}

/// The environment variable name for input `name`: upper case, non-alphanumerics as `_`.
pub fn input_env_var(name: &str) -> String {
    let mut var = String::from("YIBUILD_IN_");
    var.extend(name.chars().map(|c| {
        if c.is_ascii_alphanumeric() {
            c.to_ascii_uppercase()
        } else {
            '_'
        }
    }));
    var
}

impl Step for Run {
    fn kind(&self) -> &'static str {
        "run"
    }

    fn version(&self) -> u32 {
        1
    }

    fn inputs(&self) -> Vec<InputRef> {
        self.inputs.clone()
    }

    fn params(&self) -> serde_json::Value {
        let inputs: Vec<&str> = self.inputs.iter().map(|i| i.name.as_str()).collect();
        json!({"command": self.command, "inputs": inputs, "outputs": self.outputs, "tool": self.tool})
    }

    fn memory_estimate(&self, _ctx: &StepContext) -> u64 {
        self.memory.unwrap_or(256 << 20)
    }

    fn run(&self, ctx: &StepContext) -> Result<()> {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(&self.command)
            .current_dir(ctx.out_dir)
            .env("YIBUILD_OUT", ctx.out_dir)
            .env("YIBUILD_THREADS", ctx.threads.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for input in &self.inputs {
            let path = &ctx.input(&input.name)?.path;
            cmd.env(input_env_var(&input.name), path);
            // An instance of a sweep (`merged[density=0.5]`) is also reachable
            // by its step's name, so one command serves every instance.
            if let Some((base, _)) = input.name.split_once('[') {
                let prefix = format!("{base}[");
                if self
                    .inputs
                    .iter()
                    .filter(|i| i.name.starts_with(&prefix))
                    .count()
                    == 1
                {
                    cmd.env(input_env_var(base), path);
                }
            }
        }
        // SAFETY: prctl is async-signal-safe; the command dies with yibuild, so
        // a killed build leaves no orphan writing into the cache.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        // Its own process group, so that whatever it leaves running in the
        // background is killed with it before the output is stored.
        cmd.process_group(0);
        let mut child = cmd.spawn().context("cannot start `sh`")?;
        let group = ProcessGroup(child.id());
        let (sender, stderr) = std::sync::mpsc::channel();
        if let Some(mut pipe) = child.stderr.take() {
            std::thread::spawn(move || {
                let mut text = Vec::new();
                pipe.read_to_end(&mut text).ok();
                sender.send(text).ok();
            });
        }
        let exited = group.wait_for_leader();
        drop(group);
        let status = child.wait()?;
        exited?;
        // Background processes held the pipe open until they were killed
        // above; one that left the group (setsid) may hold it for good.
        let stderr = stderr
            .recv_timeout(STDERR_GRACE)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default();
        if !status.success() {
            let tail: Vec<&str> = stderr.lines().rev().take(20).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!(
                "command exited with {status}\n  command: {}\n  stderr (last {} lines):\n{}",
                self.command,
                tail.len(),
                tail.iter()
                    .map(|l| format!("    {l}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        for out in &self.outputs {
            if !ctx.out_dir.join(out).exists() {
                bail!("command succeeded but did not write its declared output `{out}` in $YIBUILD_OUT");
            }
        }
        Ok(())
    }
}
