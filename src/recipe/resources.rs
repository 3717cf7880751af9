//! The `resources:` a recipe writes on a step: what a job running it asks of
//! a cluster.
//!
//! ```yaml
//! steps:
//!   merged:
//!     merge: { ... }
//!     resources: { cpus: 8, mem: 64GiB, gpus: 0, time: "2:00:00", partition: cpu }
//! ```
//!
//! Resources never enter the step key: the same step gives the same bytes
//! whatever machine runs it.

use crate::syntax::diag::{Diag, RecipeError};
use crate::syntax::fields::Fields;
use crate::syntax::yaml::Node;

/// A step's `resources:` as written; unset fields take defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    /// CPUs per task (`--cpus-per-task`); also the step's thread count.
    pub cpus: Option<u64>,
    /// Memory in bytes (`--mem`).
    pub mem: Option<u64>,
    /// GPUs (`--gres=gpu:N`).
    pub gpus: Option<u64>,
    /// Time limit in Slurm's syntax (`--time`): `MM`, `HH:MM:SS`, `D-HH`, ...
    pub time: Option<String>,
    /// Partition (`--partition`).
    pub partition: Option<String>,
}

const KEYS: &[&str] = &["cpus", "mem", "gpus", "time", "partition"];

impl Resources {
    /// Parses a `resources:` mapping; errors name the file, line and column.
    pub fn parse(diag: &Diag, node: &Node) -> Result<Resources, RecipeError> {
        let f = Fields::new(diag, node, "`resources`", KEYS)?;
        let cpus = f.opt_u64("cpus")?;
        if let (Some(0), Some(n)) = (cpus, f.opt("cpus")) {
            return Err(diag.error(n.span, "`cpus` must be at least 1"));
        }
        let mem = match f.opt("mem") {
            Some(n) => {
                let text = n.as_str().map(str::to_owned).or_else(|| {
                    // A bare number is MiB, as in Slurm's own `--mem=4096`.
                    n.as_f64().map(|v| format!("{v}MiB"))
                });
                let bytes = text
                    .as_deref()
                    .ok_or_else(|| format!("found {}", n.type_name()))
                    .and_then(crate::fs::size::parse_size)
                    .map_err(|why| {
                        diag.error(n.span, format!("`mem` must be a size like 16GiB: {why}"))
                    })?;
                if bytes < 1 << 20 {
                    return Err(diag.error(n.span, "`mem` must be at least 1MiB"));
                }
                Some(bytes)
            }
            None => None,
        };
        let time = f.opt_str("time")?;
        if let (Some(t), Some(n)) = (&time, f.opt("time")) {
            if !is_slurm_time(t) {
                return Err(diag
                    .error(n.span, format!("`time` `{t}` is not a Slurm time limit"))
                    .with_help("write MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS"));
            }
        }
        let resources = Resources {
            cpus,
            mem,
            gpus: f.opt_u64("gpus")?,
            time,
            partition: f.opt_str("partition")?,
        };
        f.finish()?;
        Ok(resources)
    }
}

/// Whether `t` is one of the time formats `srun --time` accepts.
fn is_slurm_time(t: &str) -> bool {
    let (days, rest) = match t.split_once('-') {
        Some((d, r)) => (Some(d), r),
        None => (None, t),
    };
    let numbers = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let parts: Vec<&str> = rest.split(':').collect();
    days.is_none_or(numbers)
        && parts.iter().all(|p| numbers(p))
        && match days {
            Some(_) => parts.len() <= 3,
            None => parts.len() <= 3 && !(parts.len() == 1 && rest.is_empty()),
        }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slurm_time_formats() {
        for ok in ["30", "30:00", "2:00:00", "1-0", "1-02:00", "1-02:00:00"] {
            assert!(is_slurm_time(ok), "{ok}");
        }
        for bad in ["", "2h", "1:2:3:4", "-1", "1-", "a:00"] {
            assert!(!is_slurm_time(bad), "{bad}");
        }
    }
}
