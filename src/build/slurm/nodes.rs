//! Fitting job requests to the partition's nodes before anything is
//! submitted.
//!
//! Slurm accepts a job that no node of its partition can ever run and leaves
//! it pending (reason `PartitionConfig`) for good; srun, and the build with
//! it, would wait forever. So before the first job, the coordinator asks
//! `sinfo` for each partition's nodes (CPUs, memory, GPUs) and:
//!
//! - fits a *default* (4 CPUs for a merge, the step's memory estimate) down
//!   to the node that can give the most of it: a merge on 2-CPU nodes runs
//!   with 2 threads rather than not at all;
//! - refuses, with an error naming the step and its `resources:` in the
//!   recipe, a request *written* in the recipe (or a GPU a `cuda` step needs)
//!   that no node can satisfy. Nothing is submitted then.
//!
//! Where `sinfo` cannot answer (no Slurm here, a controller that is down),
//! requests are submitted as they are; [`super::pending`] still fails a job
//! whose pending reason can never clear.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use super::JobRequest;
use crate::recipe::{Recipe, StepDef};
use crate::syntax::diag::{Diag, RecipeError};

/// One node of a partition, as `sinfo -N` reports its configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Node name.
    pub name: String,
    /// Partition name (without the `*` sinfo marks the default one with).
    pub partition: String,
    /// Whether this is the default partition.
    pub default: bool,
    /// CPUs.
    pub cpus: u64,
    /// Memory for jobs, MiB (`RealMemory`).
    pub mem_mib: u64,
    /// GPUs (`gpu` entries of its generic resources).
    pub gpus: u64,
}

/// The `sinfo` output format [`parse_sinfo`] reads: node, partition, CPUs,
/// memory (MiB), generic resources.
const SINFO_FORMAT: &str = "%N|%P|%c|%m|%G";

/// How long `sinfo` may take. It retries for a minute when its
/// configuration is missing and waits on a controller that is down; the
/// check is then skipped rather than the build held up.
const SINFO_TIMEOUT: Duration = Duration::from_secs(10);

/// Every node of every partition, from `sinfo`; the error says why `sinfo`
/// could not answer.
pub fn query() -> Result<Vec<Node>, String> {
    let child = Command::new("sinfo")
        .args(["-h", "-N", "-o", SINFO_FORMAT])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run `sinfo`: {e}"))?;
    let pid = child.id();
    let (sender, answer) = mpsc::channel();
    std::thread::spawn(move || sender.send(child.wait_with_output()).ok());
    let out = match answer.recv_timeout(SINFO_TIMEOUT) {
        Ok(out) => out.map_err(|e| format!("cannot run `sinfo`: {e}"))?,
        Err(_) => {
            // SAFETY: kill(2) of a child the waiting thread has not reaped
            // yet, so its pid cannot have been reused.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGKILL);
            }
            return Err(format!(
                "`sinfo` did not answer within {} s",
                SINFO_TIMEOUT.as_secs()
            ));
        }
    };
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!(
            "`sinfo` failed ({}): {}",
            out.status,
            err.lines().next().unwrap_or("").trim()
        ));
    }
    let nodes = parse_sinfo(&String::from_utf8_lossy(&out.stdout))?;
    if nodes.is_empty() {
        return Err("`sinfo` lists no nodes".to_owned());
    }
    Ok(nodes)
}

/// Parses lines of [`SINFO_FORMAT`].
pub fn parse_sinfo(text: &str) -> Result<Vec<Node>, String> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let fields: Vec<&str> = line.trim().split('|').collect();
            let [name, partition, cpus, mem, gres] = fields[..] else {
                return Err(format!("unexpected `sinfo` line `{line}`"));
            };
            let number = |what: &str, v: &str| {
                v.trim_end_matches('+')
                    .parse::<u64>()
                    .map_err(|_| format!("`sinfo` gives node `{name}` {what} `{v}`"))
            };
            Ok(Node {
                name: name.to_owned(),
                partition: partition.trim_end_matches('*').to_owned(),
                default: partition.ends_with('*'),
                cpus: number("CPUs", cpus)?,
                mem_mib: number("memory", mem)?,
                gpus: gpu_count(gres),
            })
        })
        .collect()
}

/// GPUs in a generic-resources field: `gpu:2`, `gpu:a100:4(S:0-1)`,
/// `gpu:1,mps:100`, `(null)`.
fn gpu_count(gres: &str) -> u64 {
    let mut depth = 0;
    let mut items = Vec::new();
    let mut start = 0;
    for (i, c) in gres.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&gres[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&gres[start..]);
    items
        .iter()
        .filter_map(|item| {
            let item = item.split('(').next().unwrap_or(item);
            let mut parts = item.split(':');
            (parts.next() == Some("gpu")).then(|| {
                parts
                    .next_back()
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or(1)
            })
        })
        .sum()
}

/// A request fitted to a partition, and what fitting changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fitted {
    /// The request to submit.
    pub request: JobRequest,
    /// One phrase per default that was lowered, e.g. `cpus 4 → 2`.
    pub lowered: Vec<String>,
}

/// The partition a request goes to: its own, else the default one.
fn partition_of<'n>(request: &JobRequest, nodes: &'n [Node]) -> Option<&'n str> {
    match &request.partition {
        Some(p) => nodes
            .iter()
            .find(|n| &n.partition == p)
            .map(|n| n.partition.as_str()),
        None => nodes
            .iter()
            .find(|n| n.default)
            .map(|n| n.partition.as_str()),
    }
}

/// Fits `request`, the request for `step`, to `nodes`. What the step's
/// `resources:` set (and the GPUs a `cuda` step needs) must fit some node as
/// is; defaults are lowered to the node that can give the most of them.
/// The error says what no node has.
pub fn fit(step: &StepDef, request: &JobRequest, nodes: &[Node]) -> Result<Fitted, String> {
    let partition = partition_of(request, nodes).ok_or_else(|| match &request.partition {
        Some(p) => format!("Slurm has no partition `{p}` (sinfo)"),
        None => "Slurm has no default partition (sinfo); set `slurm.partition` in .yibuild.yaml or `resources.partition`".to_owned(),
    })?;
    let nodes: Vec<&Node> = nodes.iter().filter(|n| n.partition == partition).collect();
    let written = &step.resources;
    let cpus_fixed = written.cpus.is_some();
    let mem_fixed = written.mem.is_some();
    let fits = |n: &Node| {
        (!cpus_fixed || request.cpus <= n.cpus)
            && (!mem_fixed || request.mem_mib <= n.mem_mib)
            && request.gpus <= n.gpus
    };
    let Some(best) = nodes.iter().filter(|n| fits(n)).max_by_key(|n| {
        let cpus = request.cpus.min(n.cpus);
        let mem = request.mem_mib.min(n.mem_mib);
        (cpus == request.cpus && mem == request.mem_mib, cpus, mem)
    }) else {
        return Err(refusal(request, &nodes, partition, cpus_fixed, mem_fixed));
    };
    let mut fitted = request.clone();
    let mut lowered = Vec::new();
    if fitted.cpus > best.cpus {
        lowered.push(format!("cpus {} → {}", fitted.cpus, best.cpus));
        fitted.cpus = best.cpus;
    }
    if fitted.mem_mib > best.mem_mib {
        lowered.push(format!("mem {}M → {}M", fitted.mem_mib, best.mem_mib));
        fitted.mem_mib = best.mem_mib;
    }
    Ok(Fitted {
        request: fitted,
        lowered,
    })
}

/// Why no node of `partition` can run `request`: each fixed amount beyond
/// the largest node's, or (each fitting some node) the combination.
fn refusal(
    request: &JobRequest,
    nodes: &[&Node],
    partition: &str,
    cpus_fixed: bool,
    mem_fixed: bool,
) -> String {
    let max = |f: fn(&Node) -> u64| nodes.iter().map(|n| f(n)).max().unwrap_or(0);
    let mut wants = Vec::new();
    if cpus_fixed && request.cpus > max(|n| n.cpus) {
        wants.push(format!(
            "{} CPUs, but its largest node has {}",
            request.cpus,
            max(|n| n.cpus)
        ));
    }
    if mem_fixed && request.mem_mib > max(|n| n.mem_mib) {
        wants.push(format!(
            "{} MiB of memory, but its largest node has {} MiB",
            request.mem_mib,
            max(|n| n.mem_mib)
        ));
    }
    if request.gpus > max(|n| n.gpus) {
        wants.push(match max(|n| n.gpus) {
            0 => format!("{} GPU(s), but none of its nodes has a GPU", request.gpus),
            m => format!("{} GPU(s), but its largest node has {m}", request.gpus),
        });
    }
    if wants.is_empty() {
        wants.push(format!(
            "{} CPUs, {} MiB and {} GPU(s) on one node, which none of its nodes has",
            request.cpus, request.mem_mib, request.gpus
        ));
    }
    format!(
        "no node of partition `{partition}` can run it: it asks for {} (sinfo)",
        wants.join("; and for ")
    )
}

/// The requests of `steps`, fitted to `nodes`; a recipe error (exit 2) at
/// the first step no node can run, naming its place in the recipe.
pub fn fit_all(
    recipe: &Recipe,
    requests: &BTreeMap<String, JobRequest>,
    nodes: &[Node],
) -> Result<BTreeMap<String, Fitted>, RecipeError> {
    let diag = Diag::new(&recipe.file, &recipe.text);
    requests
        .iter()
        .map(|(name, request)| {
            let step = recipe.step(name).expect("requests are for the recipe's steps");
            fit(step, request, nodes)
                .map(|f| (name.clone(), f))
                .map_err(|why| {
                    diag.error(step.span, format!("step `{name}` cannot run as a Slurm job: {why}"))
                        .with_help(if request.gpus > 0 && step.resources.gpus.is_none() {
                            "it computes on cuda: build with `--device cpu`, or send it to a partition with GPUs (`resources: {partition: ...}`)"
                        } else {
                            "lower its `resources:`, or send it to a partition with larger nodes (`resources: {partition: ...}`)"
                        })
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::options::SlurmConfig;
    use crate::steps::Device;
    use std::path::Path;

    const SINFO: &str = "small1|cpu*|2|3900|(null)\nsmall2|cpu*|2|7900|(null)\n\
                         g1|gpu|16|64000|gpu:a100:2(S:0-1),mps:100\ng2|gpu|32|128000|gpu:4\n";

    fn recipe(steps: &str) -> Recipe {
        let text =
            format!("yibuild: 1\nname: r\nsources:\n  base: ./base\n  a: ./a\nsteps:\n{steps}");
        Recipe::parse(Path::new("r.yaml"), &text).unwrap()
    }

    fn request(r: &Recipe, step: &str) -> JobRequest {
        JobRequest::for_step(
            r.step(step).unwrap(),
            &SlurmConfig::default(),
            Device::Cpu,
            2 << 30,
        )
    }

    #[test]
    fn reads_sinfo_nodes_and_gres() {
        let nodes = parse_sinfo(SINFO).unwrap();
        assert_eq!(
            nodes[0],
            Node {
                name: "small1".into(),
                partition: "cpu".into(),
                default: true,
                cpus: 2,
                mem_mib: 3900,
                gpus: 0
            }
        );
        assert_eq!(
            nodes.iter().map(|n| n.gpus).collect::<Vec<_>>(),
            [0, 0, 2, 4]
        );
        assert_eq!(gpu_count("gpu:1,gpu:tesla:2"), 3);
        assert_eq!(gpu_count("gpu"), 1);
        let err = parse_sinfo("n|p|two|100|(null)").unwrap_err();
        assert!(err.contains("CPUs `two`"), "{err}");
    }

    #[test]
    fn defaults_are_lowered_to_the_best_node() {
        let r = recipe(
            "  m:\n    merge: {merge_method: linear, models: [{model: base, parameters: {weight: 1}}, {model: a, parameters: {weight: 1}}]}\n",
        );
        let req = request(&r, "m");
        assert_eq!((req.cpus, req.mem_mib), (4, 2560));
        let nodes = parse_sinfo(SINFO).unwrap();
        let f = fit(r.step("m").unwrap(), &req, &nodes).unwrap();
        // Both nodes have 2 CPUs; the one with 7900 MiB takes 2560 whole.
        assert_eq!((f.request.cpus, f.request.mem_mib), (2, 2560));
        assert_eq!(f.lowered, ["cpus 4 → 2"]);
        let tiny = parse_sinfo("t|cpu*|1|1000|(null)").unwrap();
        let f = fit(r.step("m").unwrap(), &req, &tiny).unwrap();
        assert_eq!(f.lowered, ["cpus 4 → 1", "mem 2560M → 1000M"]);
        assert_eq!(f.request.step_mem_budget(), (1000 - 250) << 20);
    }

    #[test]
    fn written_requests_no_node_has_are_refused() {
        let r = recipe(
            "  p:\n    patch_config: {model: base, set: {a: 1}}\n    resources: {cpus: 8}\n  g:\n    patch_config: {model: base, set: {a: 1}}\n    resources: {gpus: 1, cpus: 24, mem: 100000MiB, partition: gpu}\n  n:\n    patch_config: {model: base, set: {a: 1}}\n    resources: {partition: nowhere}\n",
        );
        let nodes = parse_sinfo(SINFO).unwrap();
        let err = fit(r.step("p").unwrap(), &request(&r, "p"), &nodes).unwrap_err();
        assert_eq!(
            err,
            "no node of partition `cpu` can run it: it asks for 8 CPUs, but its largest node has 2 (sinfo)"
        );
        // 24 CPUs (g2 has 32) and 100000 MiB (g2 has 128000) fit g2.
        let f = fit(r.step("g").unwrap(), &request(&r, "g"), &nodes).unwrap();
        assert!(f.lowered.is_empty());
        let err = fit(r.step("n").unwrap(), &request(&r, "n"), &nodes).unwrap_err();
        assert!(err.contains("no partition `nowhere`"), "{err}");

        let mut requests = BTreeMap::new();
        requests.insert("p".to_owned(), request(&r, "p"));
        let err = fit_all(&r, &requests, &nodes).unwrap_err().to_string();
        assert!(err.contains("r.yaml:7:3"), "names the step's place: {err}");
        assert!(err.contains("step `p` cannot run as a Slurm job"), "{err}");
        assert!(err.contains("lower its `resources:`"), "{err}");
    }

    #[test]
    fn a_cuda_step_needs_a_gpu_node() {
        let text = "yibuild: 1\nname: r\nsources:\n  base: ./base\n  t: ./t.txt\nsteps:\n  e:\n    eval: {model: base, device: cuda, perplexity: {text: t}}\n";
        let r = Recipe::parse(Path::new("r.yaml"), text).unwrap();
        let nodes = parse_sinfo(SINFO).unwrap();
        let req = request(&r, "e");
        assert_eq!(req.gpus, 1);
        let err = fit(r.step("e").unwrap(), &req, &nodes).unwrap_err();
        assert!(
            err.contains("1 GPU(s), but none of its nodes has a GPU"),
            "{err}"
        );
    }
}
