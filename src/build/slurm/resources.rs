//! What a step asks Slurm for: the job request resolved from the step's
//! `resources:` ([`Resources`]) with per-kind defaults.

use crate::recipe::StepDef;
use crate::steps::{Device, StepContext};

use crate::build::options::SlurmConfig;

/// The resources one job asks for, defaults applied.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct JobRequest {
    /// `--cpus-per-task`.
    pub cpus: u64,
    /// `--mem`, in MiB.
    pub mem_mib: u64,
    /// `--gres=gpu:N` when above zero.
    pub gpus: u64,
    /// `--time`, if any.
    pub time: Option<String>,
    /// `--partition`, if any.
    pub partition: Option<String>,
    /// `--account`, if any (from the project settings).
    pub account: Option<String>,
}

/// Memory a job gets beyond the step's own estimate: the yibuild process, its
/// mapped inputs' page tables, the allocator.
const HEADROOM_MIB: u64 = 512;

/// The smallest default job, in MiB.
const MIN_DEFAULT_MIB: u64 = 1024;

/// Steps that compute over whole models get several CPUs by default; steps
/// that copy or rewrite small files get one.
fn default_cpus(kind: &str) -> u64 {
    match kind {
        "merge" | "quantize" | "eval" | "tokenizer" => 4,
        _ => 1,
    }
}

/// Whether the step computes on a GPU: a step whose device resolved to
/// `cuda` when the recipe was parsed (its own `device:`, else `--device`,
/// else this machine's). Other steps never ask for GPUs.
fn wants_gpu(step: &StepDef) -> bool {
    step.step.params().get("device").and_then(|d| d.as_str()) == Some("cuda")
}

impl JobRequest {
    /// The request for `step`: what its `resources:` say, else the project's
    /// `slurm:` settings, else defaults for its kind. Memory defaults to the
    /// step's own estimate (at the job's thread count) plus headroom.
    pub fn for_step(
        step: &StepDef,
        config: &SlurmConfig,
        device: Device,
        mem_budget: u64,
    ) -> JobRequest {
        let r = &step.resources;
        let cpus = r.cpus.unwrap_or_else(|| default_cpus(step.step.kind()));
        let mem_mib = match r.mem {
            Some(bytes) => bytes.div_ceil(1 << 20),
            None => {
                let inputs = Default::default();
                let probe = StepContext {
                    name: &step.name,
                    recipe_name: "",
                    inputs: &inputs,
                    out_dir: std::path::Path::new(""),
                    threads: cpus as usize,
                    mem_budget,
                    device,
                    log: &|_: &str| {},
                };
                let estimate = step.step.memory_estimate(&probe).div_ceil(1 << 20);
                (estimate + HEADROOM_MIB).max(MIN_DEFAULT_MIB)
            }
        };
        JobRequest {
            cpus,
            mem_mib,
            gpus: r.gpus.unwrap_or_else(|| u64::from(wants_gpu(step))),
            time: r.time.clone().or_else(|| config.time.clone()),
            partition: r.partition.clone().or_else(|| config.partition.clone()),
            account: config.account.clone(),
        }
    }

    /// The memory budget the step itself is given inside the job.
    pub fn step_mem_budget(&self) -> u64 {
        let headroom = HEADROOM_MIB.min(self.mem_mib / 4);
        (self.mem_mib - headroom) << 20
    }

    /// The `srun` options for this request.
    pub fn srun_args(&self) -> Vec<String> {
        let mut args = vec![
            "--nodes=1".to_owned(),
            "--ntasks=1".to_owned(),
            format!("--cpus-per-task={}", self.cpus),
            format!("--mem={}M", self.mem_mib),
        ];
        if self.gpus > 0 {
            args.push(format!("--gres=gpu:{}", self.gpus));
        }
        if let Some(t) = &self.time {
            args.push(format!("--time={t}"));
        }
        if let Some(p) = &self.partition {
            args.push(format!("--partition={p}"));
        }
        if let Some(a) = &self.account {
            args.push(format!("--account={a}"));
        }
        args
    }

    /// One line for `yibuild plan`: `cpus=4 mem=2048M gpus=0 time=- partition=-`.
    pub fn describe(&self) -> String {
        format!(
            "cpus={} mem={}M gpus={} time={} partition={}",
            self.cpus,
            self.mem_mib,
            self.gpus,
            self.time.as_deref().unwrap_or("-"),
            self.partition.as_deref().unwrap_or("-"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recipe::Recipe;
    use crate::syntax::diag::RecipeError;
    use std::path::Path;

    fn recipe(steps: &str) -> Result<Recipe, RecipeError> {
        let text = format!(
            "yibuild: 1\nname: r\nsources:\n  base: ./base\n  text: ./t.txt\nsteps:\n{steps}"
        );
        Recipe::parse(Path::new("r.yaml"), &text)
    }

    #[test]
    fn written_resources_override_defaults() {
        let r = recipe(
            "  p:\n    patch_config: { model: base, set: { a: 1 } }\n    resources: { cpus: 3, mem: 6GiB, gpus: 2, time: \"1-02:00:00\", partition: big }\n",
        )
        .unwrap();
        let config = SlurmConfig {
            account: Some("lab".into()),
            partition: Some("default".into()),
            ..Default::default()
        };
        let req = JobRequest::for_step(r.step("p").unwrap(), &config, Device::Cpu, 2 << 30);
        assert_eq!(
            req.srun_args(),
            [
                "--nodes=1",
                "--ntasks=1",
                "--cpus-per-task=3",
                "--mem=6144M",
                "--gres=gpu:2",
                "--time=1-02:00:00",
                "--partition=big",
                "--account=lab"
            ]
        );
        assert_eq!(req.step_mem_budget(), (6144 - 512) << 20);
    }

    #[test]
    fn defaults_follow_the_kind_and_the_project() {
        let r = recipe(
            "  p:\n    patch_config: { model: base, set: { a: 1 } }\n  e:\n    eval: { model: base, device: cuda, perplexity: { text: text } }\n  a:\n    eval: { model: base, perplexity: { text: text } }\n",
        )
        .unwrap();
        let config = SlurmConfig {
            partition: Some("cpu".into()),
            time: Some("30".into()),
            ..Default::default()
        };
        let p = JobRequest::for_step(r.step("p").unwrap(), &config, Device::Auto, 2 << 30);
        assert_eq!(
            p.describe(),
            "cpus=1 mem=1024M gpus=0 time=30 partition=cpu"
        );
        let e = JobRequest::for_step(r.step("e").unwrap(), &config, Device::Cpu, 2 << 30);
        assert_eq!((e.cpus, e.gpus), (4, 1), "device: cuda asks for a GPU");
        // `auto` follows `--device`, given when the recipe is parsed.
        let text = "yibuild: 1\nname: r\nsources:\n  base: ./base\n  text: ./t.txt\nsteps:\n  a:\n    eval: { model: base, perplexity: { text: text } }\n";
        for (device, gpus) in [(Device::Cpu, 0), (Device::Cuda, 1)] {
            let opts = crate::recipe::ParseOptions {
                device,
                ..Default::default()
            };
            let r = Recipe::parse_with(Path::new("r.yaml"), text, &opts).unwrap();
            let a = r.step("a").unwrap();
            assert_eq!(
                JobRequest::for_step(a, &config, Device::Auto, 2 << 30).gpus,
                gpus
            );
        }
    }

    #[test]
    fn bad_resources_name_the_place() {
        let err = recipe(
            "  p:\n    patch_config: { model: base, set: { a: 1 } }\n    resources: { cpu: 3 }\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("r.yaml:9:18"), "{err}");
        assert!(err.contains("did you mean `cpus`"), "{err}");
        let err = recipe(
            "  p:\n    patch_config: { model: base, set: { a: 1 } }\n    resources:\n      time: 2h\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("r.yaml:10:13"), "{err}");
        assert!(err.contains("not a Slurm time limit"), "{err}");
        let err = recipe(
            "  p:\n    patch_config: { model: base, set: { a: 1 } }\n    resources: { mem: lots }\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("`mem` must be a size"), "{err}");
    }
}
