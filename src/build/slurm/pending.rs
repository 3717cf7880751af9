//! Jobs that can never start: a job pending for a reason that no amount of
//! waiting clears (the partition's limits or nodes cannot satisfy it, its
//! account or QOS is invalid) is cancelled and its step fails with the
//! reason, instead of leaving srun, and the build, waiting forever.
//!
//! A job waiting for `Resources` or `Priority` is only queued: it starts
//! when other jobs end, and is left alone. Between the two, a reason must be
//! seen on [`CONFIRMATIONS`] polls in a row, so a reason that flickers while
//! the controller reconsiders a new job (a node just coming back) does not
//! cancel it.

use std::process::{Command, Stdio};
use std::time::Duration;

/// How often a pending job's reason is read.
pub const POLL: Duration = Duration::from_secs(2);

/// Polls in a row that must show a hopeless reason before the job is
/// cancelled.
pub const CONFIRMATIONS: u32 = 2;

/// Pending reasons (squeue's `%r`, scontrol's `Reason=`) that do not clear
/// by waiting, each with what it means. A reason matches by prefix, since
/// Slurm appends details (`ReqNodeNotAvail, UnavailableNodes:n1`).
const HOPELESS: &[(&str, &str)] = &[
    (
        "PartitionConfig",
        "the request exceeds what the partition's configuration allows",
    ),
    (
        "PartitionNodeLimit",
        "the request needs more nodes than the partition allows",
    ),
    (
        "PartitionTimeLimit",
        "the time limit exceeds the partition's maximum",
    ),
    (
        "ReqNodeNotAvail",
        "the nodes that could run it are down, drained or reserved",
    ),
    (
        "BadConstraints",
        "no node has the requested features or resources",
    ),
    ("InvalidAccount", "the account is not valid"),
    ("InvalidQOS", "the QOS is not valid"),
    ("DependencyNeverSatisfied", "a job it depends on failed"),
];

/// Per-job limits of an association or QOS (`QOSMaxCpuPerJobLimit`,
/// `AssocMaxMemPerJob`...) that the request exceeds also never clear.
fn exceeds_per_job_limit(reason: &str) -> bool {
    (reason.starts_with("QOS") || reason.starts_with("Assoc")) && reason.contains("PerJob")
}

/// What a hopeless pending `reason` means, or `None` when the job may still
/// start by waiting.
pub fn hopeless(reason: &str) -> Option<&'static str> {
    let reason = reason.trim();
    HOPELESS
        .iter()
        .find(|(r, _)| reason.starts_with(r))
        .map(|(_, why)| *why)
        .or_else(|| {
            exceeds_per_job_limit(reason)
                .then_some("the request exceeds a per-job limit of its account or QOS")
        })
}

/// A job's state and pending reason from `squeue`, or `None` when it is not
/// in the queue (anymore) or squeue did not answer.
pub fn state_and_reason(job: u64) -> Option<(String, String)> {
    let out = Command::new("squeue")
        .args(["-h", "-j", &job.to_string(), "-o", "%T|%r"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let (state, reason) = text.lines().next()?.split_once('|')?;
    Some((state.trim().to_owned(), reason.trim().to_owned()))
}

/// Cancels `job` (the srun waiting for it then exits).
pub fn cancel(job: u64) {
    Command::new("scancel")
        .arg(job.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .ok();
}

/// Counts polls of one pending job and says when to give up on it.
#[derive(Debug, Default)]
pub struct Watch {
    seen: u32,
}

impl Watch {
    /// Takes one poll's `(state, reason)`; returns the reason and its meaning
    /// once a hopeless reason has been seen [`CONFIRMATIONS`] times in a row.
    pub fn observe(&mut self, state: &str, reason: &str) -> Option<(String, &'static str)> {
        match hopeless(reason).filter(|_| state == "PENDING") {
            Some(why) => {
                self.seen += 1;
                (self.seen >= CONFIRMATIONS).then(|| (reason.to_owned(), why))
            }
            None => {
                self.seen = 0;
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_that_clear_by_waiting_are_not_hopeless() {
        for waiting in [
            "Resources",
            "Priority",
            "None",
            "Dependency",
            "AssocGrpCpuLimit",
            "BeginTime",
        ] {
            assert_eq!(hopeless(waiting), None, "{waiting}");
        }
        for stuck in [
            "PartitionConfig",
            "ReqNodeNotAvail, UnavailableNodes:node1",
            "BadConstraints",
            "PartitionTimeLimit",
            "QOSMaxCpuPerJobLimit",
            "AssocMaxMemPerJob",
        ] {
            assert!(hopeless(stuck).is_some(), "{stuck}");
        }
    }

    #[test]
    fn a_reason_must_persist_before_giving_up() {
        let mut w = Watch::default();
        assert_eq!(w.observe("PENDING", "PartitionConfig"), None);
        assert_eq!(w.observe("PENDING", "Resources"), None, "a flicker resets");
        assert_eq!(w.observe("PENDING", "PartitionConfig"), None);
        let (reason, why) = w.observe("PENDING", "PartitionConfig").unwrap();
        assert_eq!(reason, "PartitionConfig");
        assert!(why.contains("partition's configuration"));
        let mut running = Watch::default();
        for _ in 0..3 {
            assert_eq!(running.observe("RUNNING", "PartitionConfig"), None);
        }
    }
}
