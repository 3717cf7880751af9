//! Every merge method on fixture models, checked against straightforward
//! whole-tensor implementations of mergekit's formulas written here in f64.
//! Outputs are bf16, so values must agree within bf16 rounding.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use yibuild::fixtures::{write_finetune, TinyLlama};
use yibuild::merge::rng::MaskStream;
use yibuild::merge::{merge_config_file, MergeOptions};
use yibuild::tensor::ModelTensors;

struct Models {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

fn tiny() -> TinyLlama {
    TinyLlama {
        hidden: 32,
        layers: 3,
        heads: 4,
        kv_heads: 2,
        intermediate: 48,
        vocab: 264,
        tokenizer_vocab: 264,
        ..Default::default()
    }
}

fn models() -> Models {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let base = tiny();
    base.write(&root.join("base")).unwrap();
    for (i, name) in ["a", "b", "c"].iter().enumerate() {
        write_finetune(&base, &root.join(name), 100 + i as u64, 0.3).unwrap();
    }
    Models { _dir: dir, root }
}

fn load(dir: &Path) -> BTreeMap<String, Vec<f64>> {
    let t = ModelTensors::open(dir).unwrap();
    t.names()
        .iter()
        .map(|n| {
            (
                n.clone(),
                t.read_f32(n).unwrap().into_iter().map(f64::from).collect(),
            )
        })
        .collect()
}

fn shape_of(dir: &Path, name: &str) -> Vec<usize> {
    ModelTensors::open(dir)
        .unwrap()
        .info(name)
        .unwrap()
        .shape
        .clone()
}

/// Runs a merge of `config` (model names are folders under the fixture root)
/// and returns the output folder.
fn run(m: &Models, name: &str, config: &str) -> PathBuf {
    let path = m.root.join(format!("{name}.yml"));
    let out = m.root.join(format!("out-{name}"));
    let cwd_config = config.replace("MODELS/", &format!("{}/", m.root.display()));
    std::fs::write(&path, cwd_config).unwrap();
    let opts = MergeOptions {
        seed: 7,
        threads: 2,
        chunk_elements: Some(1000),
        ..MergeOptions::default()
    };
    merge_config_file(&path, &out, &opts, &|_| {}).unwrap();
    out
}

/// Compares every output tensor with `expected(name, base, others)`.
fn check(
    m: &Models,
    out: &Path,
    others: &[&str],
    expected: impl Fn(&str, &[f64], &[Vec<f64>]) -> Vec<f64>,
) {
    let base = load(&m.root.join("base"));
    let inputs: Vec<BTreeMap<String, Vec<f64>>> =
        others.iter().map(|o| load(&m.root.join(o))).collect();
    let got = load(out);
    assert_eq!(got.len(), base.len());
    for (name, values) in &got {
        let xs: Vec<Vec<f64>> = inputs.iter().map(|i| i[name].clone()).collect();
        let want = expected(name, &base[name], &xs);
        assert_eq!(values.len(), want.len(), "{name}");
        for (e, (g, w)) in values.iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() <= w.abs() / 128.0 + 1e-5,
                "{name}[{e}]: got {g}, expected {w}"
            );
        }
    }
}

fn stream(m: &Models, tensor: &str, model: &str) -> MaskStream {
    MaskStream::new(7, tensor, &format!("{}/{model}", m.root.display()), 0)
}

/// TIES-style election with weights applied first.
fn elect(base: &[f64], wd: &[Vec<f64>], w: &[f64], normalize: bool) -> Vec<f64> {
    (0..base.len())
        .map(|e| {
            let s: f64 = wd.iter().map(|v| v[e]).sum();
            let (mut mixed, mut div) = (0.0, 0.0);
            for (v, w) in wd.iter().zip(w) {
                if (s >= 0.0 && v[e] > 0.0) || (s < 0.0 && v[e] < 0.0) {
                    mixed += v[e];
                    div += w;
                }
            }
            if div == 0.0 {
                div = 1.0;
            }
            base[e] + if normalize { mixed / div } else { mixed }
        })
        .collect()
}

/// Keeps the k largest |x|, ties broken by position.
fn top_k_mask(x: &[f64], k: usize) -> Vec<bool> {
    let mut idx: Vec<usize> = (0..x.len()).collect();
    idx.sort_by(|&a, &b| {
        (x[b].abs() as f32)
            .total_cmp(&(x[a].abs() as f32))
            .then(a.cmp(&b))
    });
    let mut keep = vec![false; x.len()];
    idx[..k].iter().for_each(|&i| keep[i] = true);
    keep
}

fn l1_rescale(delta: &[f64], keep: &[bool]) -> Vec<f64> {
    let all: f64 = delta.iter().map(|d| d.abs()).sum();
    let kept: f64 = delta
        .iter()
        .zip(keep)
        .filter(|(_, k)| **k)
        .map(|(d, _)| d.abs())
        .sum();
    let f = if all >= 1e-7 && kept >= 1e-7 {
        all / kept
    } else {
        1.0
    };
    delta
        .iter()
        .zip(keep)
        .map(|(d, k)| if *k { d * f } else { 0.0 })
        .collect()
}

fn deltas(base: &[f64], xs: &[Vec<f64>]) -> Vec<Vec<f64>> {
    xs.iter()
        .map(|x| x.iter().zip(base).map(|(x, b)| x - b).collect())
        .collect()
}

const GTA: &str = "merge_method: METHOD
base_model: MODELS/base
models:
  - model: MODELS/a
    parameters: {weight: 0.75, density: 0.5}
  - model: MODELS/b
    parameters: {weight: 0.5, density: 0.7}
dtype: bfloat16
";

#[test]
fn linear_and_task_arithmetic() {
    let m = models();
    let out = run(
        &m,
        "linear",
        "merge_method: linear\nmodels:\n  - model: MODELS/a\n    parameters: {weight: 0.6}\n  - model: MODELS/b\n    parameters: {weight: 0.2}\n",
    );
    check(&m, &out, &["a", "b"], |_, _, xs| {
        (0..xs[0].len())
            .map(|e| (0.6 * xs[0][e] + 0.2 * xs[1][e]) / 0.8)
            .collect()
    });
    let config = GTA.replace("METHOD", "task_arithmetic") + "parameters: {lambda: 0.9}\n";
    let out = run(&m, "ta", &config);
    check(&m, &out, &["a", "b"], |_, b, xs| {
        let d = deltas(b, xs);
        (0..b.len())
            .map(|e| b[e] + 0.9 * (0.75 * d[0][e] + 0.5 * d[1][e]))
            .collect()
    });
}

#[test]
fn ties_and_dare() {
    let m = models();
    let out = run(&m, "ties", &GTA.replace("METHOD", "ties"));
    check(&m, &out, &["a", "b"], |_, b, xs| {
        let d = deltas(b, xs);
        let wd: Vec<Vec<f64>> = d
            .iter()
            .zip([(0.75, 0.5), (0.5, 0.7)])
            .map(|(d, (w, dens))| {
                let keep = top_k_mask(d, (dens * d.len() as f64) as usize);
                d.iter()
                    .zip(keep)
                    .map(|(d, k)| if k { w * d } else { 0.0 })
                    .collect()
            })
            .collect();
        elect(b, &wd, &[0.75, 0.5], true)
    });
    for (method, consensus) in [("dare_ties", true), ("dare_linear", false)] {
        let out = run(&m, method, &GTA.replace("METHOD", method));
        check(&m, &out, &["a", "b"], |name, b, xs| {
            let d = deltas(b, xs);
            let wd: Vec<Vec<f64>> = d
                .iter()
                .zip([("a", 0.75, 0.5), ("b", 0.5, 0.7)])
                .map(|(d, (model, w, dens))| {
                    let s = stream(&m, name, model);
                    let keep: Vec<bool> = (0..d.len()).map(|e| s.keep(e as u64, dens)).collect();
                    l1_rescale(d, &keep).iter().map(|v| w * v).collect()
                })
                .collect();
            if consensus {
                elect(b, &wd, &[0.75, 0.5], false)
            } else {
                (0..b.len()).map(|e| b[e] + wd[0][e] + wd[1][e]).collect()
            }
        });
    }
}

#[test]
fn breadcrumbs_keep_the_middle_band_even_for_small_tensors() {
    let m = models();
    for (method, consensus) in [("breadcrumbs", false), ("breadcrumbs_ties", true)] {
        let out = run(&m, method, &GTA.replace("METHOD", method));
        check(&m, &out, &["a", "b"], |_, b, xs| {
            let d = deltas(b, xs);
            let wd: Vec<Vec<f64>> = d
                .iter()
                .zip([(0.75, 0.5), (0.5, 0.7)])
                .map(|(d, (w, dens))| {
                    let n = d.len() as i64;
                    let mut top = (0.01 * n as f64) as i64;
                    let mut bottom = n - (dens * n as f64) as i64 - top;
                    if bottom < 0 {
                        top += bottom;
                        bottom = 0;
                    }
                    let keep = top_k_mask(d, (n - bottom) as usize);
                    let outliers = top_k_mask(d, top as usize);
                    d.iter()
                        .enumerate()
                        .map(|(e, v)| if keep[e] && !outliers[e] { w * v } else { 0.0 })
                        .collect()
                })
                .collect();
            if consensus {
                elect(b, &wd, &[0.75, 0.5], false)
            } else {
                (0..b.len()).map(|e| b[e] + wd[0][e] + wd[1][e]).collect()
            }
        });
    }
    // mergekit zeroes a whole task vector when gamma·numel < 1 (a 32-element
    // norm here); the norms must still move towards the fine-tunes.
    let out = load(&m.root.join("out-breadcrumbs"));
    let base = load(&m.root.join("base"));
    let norm = "model.norm.weight";
    assert!(out[norm]
        .iter()
        .zip(&base[norm])
        .any(|(o, b)| (o - b).abs() > 1e-3));
}

#[test]
fn della() {
    let m = models();
    for (method, consensus) in [("della", true), ("della_linear", false)] {
        let config = GTA.replace("METHOD", method) + "parameters: {epsilon: 0.1}\n";
        let out = run(&m, method, &config);
        let dir = m.root.join("base");
        check(&m, &out, &["a", "b"], |name, b, xs| {
            let shape = shape_of(&dir, name);
            let row_len = if shape.len() == 1 {
                shape[0]
            } else {
                shape[1..].iter().product()
            };
            let d = deltas(b, xs);
            let wd: Vec<Vec<f64>> = d
                .iter()
                .zip([("a", 0.75, 0.5), ("b", 0.5, 0.7)])
                .map(|(d, (model, w, dens))| {
                    let s = stream(&m, name, model);
                    let mut keep = vec![false; d.len()];
                    for (r, row) in d.chunks(row_len).enumerate() {
                        let mut order: Vec<usize> = (0..row.len()).collect();
                        order.sort_by_key(|&i| (row[i].abs() as f32).to_bits());
                        for (rank, &i) in order.iter().enumerate() {
                            let p = dens - 0.1 + 0.2 * rank as f64 / (row.len() - 1) as f64;
                            keep[r * row_len + i] = s.keep((r * row_len + i) as u64, p);
                        }
                    }
                    l1_rescale(d, &keep).iter().map(|v| w * v).collect()
                })
                .collect();
            if consensus {
                elect(b, &wd, &[0.75, 0.5], true)
            } else {
                (0..b.len()).map(|e| b[e] + wd[0][e] + wd[1][e]).collect()
            }
        });
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[test]
fn slerp_nuslerp_and_nearswap() {
    let m = models();
    let out = run(
        &m,
        "slerp",
        "merge_method: slerp\nbase_model: MODELS/base\nmodels:\n  - model: MODELS/base\n  - model: MODELS/a\nparameters:\n  t:\n    - filter: mlp\n      value: [0, 1]\n    - value: 0.3\n",
    );
    let dir = m.root.join("base");
    check(&m, &out, &["a"], |name, v0, xs| {
        let v1 = &xs[0];
        let t = if name.contains("mlp") {
            let layer: f64 = name.split('.').nth(2).unwrap().parse().unwrap();
            layer / 2.0
        } else {
            0.3
        };
        let _ = &dir;
        let (n0, n1) = (dot(v0, v0).sqrt(), dot(v1, v1).sqrt());
        let c = dot(v0, v1) / (n0 * n1);
        let (s0, s1) = if c.abs() > 0.9995 {
            (1.0 - t, t)
        } else {
            let th = c.acos();
            (((1.0 - t) * th).sin() / th.sin(), (t * th).sin() / th.sin())
        };
        v0.iter().zip(v1).map(|(a, b)| s0 * a + s1 * b).collect()
    });
    let out = run(
        &m,
        "nuslerp",
        "merge_method: nuslerp\nbase_model: MODELS/base\nmodels:\n  - model: MODELS/a\n    parameters: {weight: 1.0}\n  - model: MODELS/b\n    parameters: {weight: 3.0}\n",
    );
    check(&m, &out, &["a", "b"], |_, b, xs| {
        let d = deltas(b, xs);
        let t = 0.75;
        let th = (dot(&d[0], &d[1]) / (dot(&d[0], &d[0]).sqrt() * dot(&d[1], &d[1]).sqrt())).acos();
        (0..b.len())
            .map(|e| {
                b[e] + (((1.0 - t) * th).sin() * d[0][e] + (t * th).sin() * d[1][e]) / th.sin()
            })
            .collect()
    });
    let out = run(
        &m,
        "nearswap",
        "merge_method: nearswap\nbase_model: MODELS/base\nmodels:\n  - model: MODELS/a\nparameters: {t: 0.01}\n",
    );
    check(&m, &out, &["a"], |_, b, xs| {
        (0..b.len())
            .map(|e| {
                let w = (0.01 / (b[e] - xs[0][e]).abs().max(1e-6)).clamp(0.0, 1.0);
                w * xs[0][e] + (1.0 - w) * b[e]
            })
            .collect()
    });
}

#[test]
fn multislerp_karcher_and_model_stock() {
    let m = models();
    let three = "models:\n  - model: MODELS/a\n    parameters: {weight: 0.5}\n  - model: MODELS/b\n    parameters: {weight: 0.3}\n  - model: MODELS/c\n    parameters: {weight: 0.2}\n";
    let out = run(
        &m,
        "multislerp",
        &format!("merge_method: multislerp\nbase_model: MODELS/base\n{three}"),
    );
    check(&m, &out, &["a", "b", "c"], |_, b, xs| {
        let d = deltas(b, xs);
        let w = [0.5, 0.3, 0.2];
        let norms: Vec<f64> = d.iter().map(|v| dot(v, v).sqrt()).collect();
        let units: Vec<Vec<f64>> = d
            .iter()
            .zip(&norms)
            .map(|(v, n)| v.iter().map(|x| x / (n + 1e-8)).collect())
            .collect();
        let mut mean: Vec<f64> = (0..b.len())
            .map(|e| (0..3).map(|i| w[i] * units[i][e]).sum())
            .collect();
        let mn = dot(&mean, &mean).sqrt();
        mean.iter_mut().for_each(|x| *x /= mn);
        let mut tangent = vec![0.0; b.len()];
        for i in 0..3 {
            let c = dot(&units[i], &mean);
            for e in 0..b.len() {
                tangent[e] += w[i] * (units[i][e] - c * mean[e]);
            }
        }
        let tn = dot(&tangent, &tangent).sqrt() + 1e-8;
        let scale: f64 = (0..3).map(|i| w[i] * norms[i]).sum();
        (0..b.len())
            .map(|e| b[e] + scale * (mean[e] * tn.cos() + tangent[e] * tn.sin() / tn))
            .collect()
    });
    let out = run(&m, "karcher", "merge_method: karcher\nmodels:\n  - model: MODELS/a\n  - model: MODELS/b\nparameters: {max_iter: 50, tol: 1.0e-9}\n");
    check(&m, &out, &["a", "b"], |_, _, xs| {
        // The Karcher mean of two directions is their normalized midpoint.
        let norms: Vec<f64> = xs.iter().map(|v| dot(v, v).sqrt()).collect();
        let mid: Vec<f64> = (0..xs[0].len())
            .map(|e| xs[0][e] / norms[0] + xs[1][e] / norms[1])
            .collect();
        let mn = dot(&mid, &mid).sqrt();
        let scale = (norms[0] + norms[1]) / 2.0;
        mid.iter().map(|x| scale * x / mn).collect()
    });
    let out = run(
        &m,
        "model_stock",
        &format!(
            "merge_method: model_stock\nbase_model: MODELS/base\n{}",
            three
                .replace("parameters: {weight: 0.5}", "")
                .replace("parameters: {weight: 0.3}", "")
                .replace("parameters: {weight: 0.2}", "")
        ),
    );
    check(&m, &out, &["a", "b", "c"], |_, b, xs| {
        let d = deltas(b, xs);
        let mut cos = 0.0;
        for (i, j) in [(0, 1), (0, 2), (1, 2)] {
            cos += dot(&d[i], &d[j]) / (dot(&d[i], &d[i]).sqrt() * dot(&d[j], &d[j]).sqrt());
        }
        cos /= 3.0;
        let t = 3.0 * cos / (1.0 + 2.0 * cos);
        (0..b.len())
            .map(|e| t * (xs[0][e] + xs[1][e] + xs[2][e]) / 3.0 + (1.0 - t) * b[e])
            .collect()
    });
}

#[test]
fn sce_ram_and_passthrough() {
    let m = models();
    let out = run(&m, "sce", "merge_method: sce\nbase_model: MODELS/base\nmodels:\n  - model: MODELS/a\n  - model: MODELS/b\n  - model: MODELS/c\nparameters: {select_topk: 0.5}\n");
    check(&m, &out, &["a", "b", "c"], |_, b, xs| {
        let d = deltas(b, xs);
        let var: Vec<f64> = (0..b.len())
            .map(|e| {
                let mean = (d[0][e] + d[1][e] + d[2][e]) / 3.0;
                d.iter().map(|v| (v[e] - mean).powi(2)).sum::<f64>() / 3.0
            })
            .collect();
        let k = (var.iter().filter(|v| **v as f32 != 0.0).count() as f64 * 0.5) as usize;
        let keep = top_k_mask(&var, k);
        let masked: Vec<Vec<f64>> = d
            .iter()
            .map(|v| {
                v.iter()
                    .zip(&keep)
                    .map(|(x, k)| if *k { *x } else { 0.0 })
                    .collect()
            })
            .collect();
        let sq: Vec<f64> = masked.iter().map(|v| dot(v, v)).collect();
        let total: f64 = sq.iter().sum();
        let w: Vec<f64> = sq.iter().map(|s| s / total).collect();
        (0..b.len())
            .map(|e| {
                let s: f64 = masked.iter().map(|v| v[e]).sum();
                let (mut acc, mut div) = (0.0, 0.0);
                for (v, w) in masked.iter().zip(&w) {
                    if (s >= 0.0 && v[e] > 0.0) || (s < 0.0 && v[e] < 0.0) {
                        acc += w * v[e];
                        div += w;
                    }
                }
                b[e] + acc / f64::max(div, 1e-6)
            })
            .collect()
    });
    for (method, extra) in [
        ("ram", ""),
        (
            "ramplus_tl",
            "parameters: {r: 0.5, alpha: 0.8, epsilon: 0.01}\n",
        ),
    ] {
        let eps = if extra.is_empty() { 1e-5 } else { 0.01 };
        let out = run(&m, method, &format!("merge_method: {method}\nbase_model: MODELS/base\nmodels:\n  - model: MODELS/a\n  - model: MODELS/b\n{extra}"));
        check(&m, &out, &["a", "b"], |_, b, xs| {
            let d = deltas(b, xs);
            let nz = |i: usize, e: usize| (d[i][e] as f32).abs() > eps as f32;
            let count = |e: usize| (0..2).filter(|&i| nz(i, e)).count();
            let mut lambda = [1.0, 1.0];
            if !extra.is_empty() {
                for (i, l) in lambda.iter_mut().enumerate() {
                    let shared = (0..b.len()).filter(|&e| nz(i, e) && count(e) > 1).count() as f64;
                    let unique = (0..b.len()).filter(|&e| nz(i, e) && count(e) == 1).count() as f64;
                    *l = 1.0 + 0.5 * (shared / unique.max(eps)).clamp(0.0, 0.8);
                }
            }
            (0..b.len())
                .map(|e| {
                    let c = count(e);
                    b[e] + (0..2)
                        .filter(|&i| nz(i, e))
                        .map(|i| {
                            if c == 1 {
                                d[i][e] * lambda[i]
                            } else {
                                d[i][e] / c as f64
                            }
                        })
                        .sum::<f64>()
                })
                .collect()
        });
    }
    // A frankenmerge: layers 0-1 of `a`, then layers 1-2 of `b` with o_proj zeroed.
    let out = run(
        &m,
        "passthrough",
        "merge_method: passthrough\nslices:\n  - sources:\n      - model: MODELS/a\n        layer_range: [0, 2]\n  - sources:\n      - model: MODELS/b\n        layer_range: [1, 3]\n        parameters:\n          scale:\n            - filter: o_proj\n              value: 0\n            - value: 1\n",
    );
    let got = load(&out);
    let (a, b) = (load(&m.root.join("a")), load(&m.root.join("b")));
    assert_eq!(got.len(), a.len() + 9);
    assert_eq!(
        got["model.layers.1.mlp.up_proj.weight"],
        a["model.layers.1.mlp.up_proj.weight"]
    );
    assert_eq!(
        got["model.layers.3.mlp.up_proj.weight"],
        b["model.layers.2.mlp.up_proj.weight"]
    );
    assert!(got["model.layers.2.self_attn.o_proj.weight"]
        .iter()
        .all(|v| *v == 0.0));
    assert_eq!(
        got["model.embed_tokens.weight"],
        a["model.embed_tokens.weight"]
    );
    assert_eq!(got["lm_head.weight"], b["lm_head.weight"]);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["num_hidden_layers"], 4);
    assert!(out.join("tokenizer.json").is_file());
    assert!(out.join("mergekit_config.yml").is_file());
    assert!(std::fs::read_to_string(out.join("README.md"))
        .unwrap()
        .contains("Passthrough"));
}
