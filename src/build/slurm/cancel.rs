//! Ctrl-C (SIGINT) and SIGTERM while Slurm jobs run: cancel every job this
//! coordinator submitted, then let the build end with its steps failed.
//!
//! srun runs in its own process group, so a terminal's Ctrl-C reaches only
//! the coordinator (srun alone wants two within a second). The handler only
//! sets a flag; a watcher thread then `scancel`s the known job ids and sends
//! SIGTERM to each srun, which also cancels its job. Once cancelled, no new
//! job is submitted. A second signal stops the coordinator at once.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, Once};
use std::time::Duration;

static REQUESTED: AtomicBool = AtomicBool::new(false);
static INSTALL: Once = Once::new();

/// Running sruns by process id.
static JOBS: Mutex<BTreeMap<u32, Running>> = Mutex::new(BTreeMap::new());

#[derive(Debug, Clone, Copy, Default)]
struct Running {
    job_id: Option<u64>,
    signalled: bool,
}

/// Sets the flag, and gives the signal its default action back so that a
/// second Ctrl-C stops the coordinator at once (its sruns, which get SIGTERM
/// when it dies, still cancel their jobs).
extern "C" fn on_signal(signal: libc::c_int) {
    REQUESTED.store(true, Ordering::SeqCst);
    // SAFETY: signal(2) is async-signal-safe.
    unsafe {
        libc::signal(signal, libc::SIG_DFL);
    }
}

/// Installs the SIGINT/SIGTERM handler and its watcher thread, once per
/// process. Called when the first job is submitted, so local builds keep the
/// default behaviour.
pub fn install() {
    INSTALL.call_once(|| {
        // SAFETY: the handler only stores to an atomic, which is
        // async-signal-safe.
        unsafe {
            let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            libc::signal(libc::SIGINT, handler);
            libc::signal(libc::SIGTERM, handler);
        }
        std::thread::spawn(|| loop {
            std::thread::sleep(Duration::from_millis(50));
            if requested() {
                cancel_all();
            }
        });
    });
}

/// Whether the user asked to stop the build.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}

/// A running srun, known to the watcher until dropped.
pub(crate) struct Registration(u32);

impl Registration {
    /// Registers the srun process `pid`.
    pub(crate) fn new(pid: u32) -> Registration {
        JOBS.lock().unwrap().insert(pid, Running::default());
        Registration(pid)
    }

    /// Records the Slurm job id once srun or the worker has told it.
    pub(crate) fn set_job_id(&self, id: u64) {
        if let Some(r) = JOBS.lock().unwrap().get_mut(&self.0) {
            r.job_id = Some(id);
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        JOBS.lock().unwrap().remove(&self.0);
    }
}

/// Cancels every registered job not cancelled yet: `scancel` by id, and
/// SIGTERM to its srun (which cancels a job whose id is not known yet).
fn cancel_all() {
    let mut jobs = JOBS.lock().unwrap();
    let fresh: Vec<(u32, Option<u64>)> = jobs
        .iter_mut()
        .filter(|(_, r)| !r.signalled)
        .map(|(pid, r)| {
            r.signalled = true;
            (*pid, r.job_id)
        })
        .collect();
    drop(jobs);
    let ids: Vec<String> = fresh
        .iter()
        .filter_map(|(_, id)| id.map(|i| i.to_string()))
        .collect();
    if !ids.is_empty() {
        Command::new("scancel")
            .args(&ids)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .ok();
    }
    for (pid, _) in fresh {
        // SAFETY: plain kill(2) of a child this process started and has not
        // reaped yet (the registration is dropped only after wait()).
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGTERM);
        }
    }
}
