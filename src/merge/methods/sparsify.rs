//! Sparsification of task vectors (mergekit `sparsify.py`): magnitude top-k
//! (TIES), random drop (DARE), outlier trimming (breadcrumbs) and
//! magnitude-ranked random drop (DELLA), computed chunk by chunk as keep masks.

use std::ops::Range;

use anyhow::Result;
use rayon::prelude::*;

use super::super::engine::Chunks;
use super::super::plan::JobInput;
use super::super::rng::MaskStream;
use super::super::select::{Selection, TopK};

/// Which sparsifier a method uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Keep the `density` fraction of largest magnitudes.
    Magnitude,
    /// Keep each entry with probability `density`.
    Bernoulli,
    /// Drop the `gamma` fraction of largest and enough smallest to keep `density`.
    Outliers,
    /// Keep with a probability that grows with the entry's magnitude rank in its row.
    Della,
}

/// The mask rule of one model in one tensor.
#[derive(Debug, Clone)]
enum Rule {
    /// Density ≥ 1: everything is kept.
    All,
    /// Top-k by magnitude, minus an optional top-k of outliers.
    Ranked { keep: TopK, drop: Option<TopK> },
    /// Independent draws with probability `density`.
    Random { density: f64, stream: MaskStream },
    /// DELLA's rank-dependent probability.
    Della {
        density: f64,
        epsilon: f64,
        stream: MaskStream,
    },
}

thread_local! {
    /// Mask buffers of finished chunks: fresh multi-megabyte allocations per
    /// chunk would cost a page fault and a zeroed page per 4 KiB.
    static SPARE_MASKS: std::cell::RefCell<Vec<Vec<u8>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Keep masks for every non-base model of a tensor.
#[derive(Debug)]
pub struct Masks {
    rules: Vec<Rule>,
    /// Ties seen so far per model and per top-k set (`keep`, `drop`).
    ties: Vec<[u64; 2]>,
}

impl Masks {
    /// Plans the masks of inputs `models` (indexes into the job's inputs) and
    /// runs the selection passes the ranked rules need.
    pub fn prepare(kind: Kind, chunks: &Chunks, base: usize, models: &[usize]) -> Result<Masks> {
        let n = (chunks.rows() * chunks.row_len()) as u64;
        let job = chunks.job;
        // (model position, selection requests) for the ranked rules.
        let mut requests: Vec<(usize, Vec<u64>)> = Vec::new();
        let mut rules = Vec::new();
        for (pos, &m) in models.iter().enumerate() {
            let input: &JobInput = &job.inputs[m];
            let density = input.params.density();
            let rule = if density >= 1.0 {
                Rule::All
            } else {
                match kind {
                    Kind::Bernoulli => Rule::Random {
                        density,
                        stream: input.stream,
                    },
                    Kind::Della => Rule::Della {
                        density,
                        epsilon: input
                            .params
                            .epsilon
                            .expect("the plan resolves della's `epsilon`"),
                        stream: input.stream,
                    },
                    Kind::Magnitude => {
                        requests.push((pos, vec![(density * n as f64) as u64]));
                        Rule::All
                    }
                    Kind::Outliers => {
                        let target = (density * n as f64) as i64;
                        let gamma = input
                            .params
                            .gamma
                            .expect("the plan resolves breadcrumbs' `gamma`");
                        let mut top = (gamma * n as f64) as i64;
                        let mut bottom = n as i64 - target - top;
                        if bottom < 0 {
                            top += bottom;
                            bottom = 0;
                        }
                        requests.push((pos, vec![(n as i64 - bottom) as u64, top.max(0) as u64]));
                        Rule::All
                    }
                }
            };
            rules.push(rule);
        }
        if !requests.is_empty() {
            let mut selections: Vec<Vec<Selection>> = requests
                .iter()
                .map(|(_, ks)| ks.iter().map(|&k| Selection::new(k)).collect())
                .collect();
            for _ in 0..2 {
                chunks.pass(|_, inputs| {
                    selections
                        .par_iter_mut()
                        .zip(&requests)
                        .for_each(|(sels, (pos, _))| {
                            let x = &inputs[models[*pos]];
                            let b = &inputs[base];
                            let mags: Vec<f32> =
                                x.iter().zip(b).map(|(x, b)| (x - b).abs()).collect();
                            for s in sels.iter_mut() {
                                s.observe(&mags);
                            }
                        });
                    Ok(())
                })?;
                for s in selections.iter_mut().flatten() {
                    if s.first_pass() {
                        s.end_first_pass();
                    }
                }
            }
            for ((pos, _), sels) in requests.iter().zip(selections) {
                let mut tops = sels.into_iter().map(Selection::finish);
                let keep = tops.next().expect("one request per ranked rule");
                let drop = tops.next().filter(|t| !t.empty);
                rules[*pos] = Rule::Ranked { keep, drop };
            }
        }
        Ok(Masks {
            ties: vec![[0; 2]; rules.len()],
            rules,
        })
    }

    /// Takes back the masks of a chunk once they are used, so the next
    /// chunk's (of this tensor or the next) reuse their memory.
    pub fn recycle(masks: Vec<Option<Vec<u8>>>) {
        SPARE_MASKS.with(|s| s.borrow_mut().extend(masks.into_iter().flatten()));
    }

    /// Starts a new pass over the tensor.
    pub fn restart(&mut self) {
        self.ties.iter_mut().for_each(|t| *t = [0; 2]);
    }

    /// Whether model position `pos` keeps everything (no mask needed).
    pub fn keeps_all(&self, pos: usize) -> bool {
        matches!(self.rules[pos], Rule::All)
    }

    /// The keep mask (1 = keep) of model position `pos` over a chunk of rows,
    /// `x` and `b` being the model's and the base's values for those rows.
    /// Chunks must be given in order within a pass.
    pub fn chunk(
        &mut self,
        pos: usize,
        rows: Range<usize>,
        row_len: usize,
        x: &[f32],
        b: &[f32],
    ) -> Vec<u8> {
        let row_len = row_len.max(1);
        // A reused buffer holds stale bytes: every rule below writes them all.
        let mut mask = SPARE_MASKS
            .with(|s| s.borrow_mut().pop())
            .unwrap_or_default();
        mask.resize(x.len(), 1);
        match &self.rules[pos] {
            Rule::All => mask.fill(1),
            Rule::Random { density, stream } => {
                let first = (rows.start * row_len) as u64;
                mask.par_chunks_mut(1 << 14).enumerate().for_each(|(c, m)| {
                    stream.fill_mask(first + (c << 14) as u64, *density, m);
                });
            }
            Rule::Della {
                density,
                epsilon,
                stream,
            } => {
                let (density, epsilon, stream) = (*density, *epsilon, *stream);
                mask.par_chunks_mut(row_len)
                    .zip(x.par_chunks(row_len).zip(b.par_chunks(row_len)))
                    .enumerate()
                    .for_each(|(r, (m, (x, b)))| {
                        let mut order: Vec<u32> = (0..x.len() as u32).collect();
                        order.sort_by_key(|&i| (x[i as usize] - b[i as usize]).abs().to_bits());
                        let span = (x.len().max(2) - 1) as f64;
                        let first = ((rows.start + r) * row_len) as u64;
                        for (rank, &i) in order.iter().enumerate() {
                            let p = density - epsilon + 2.0 * epsilon * (rank as f64 / span);
                            m[i as usize] = u8::from(stream.keep(first + i as u64, p));
                        }
                    });
            }
            Rule::Ranked { keep, drop } => {
                let keys: Vec<f32> = x.iter().zip(b).map(|(x, b)| (x - b).abs()).collect();
                let ties = &mut self.ties[pos];
                mask = keep.mask_chunk(&keys, row_len, &mut ties[0]);
                if let Some(drop) = drop {
                    let outliers = drop.mask_chunk(&keys, row_len, &mut ties[1]);
                    mask.iter_mut().zip(outliers).for_each(|(m, o)| *m &= 1 - o);
                }
            }
        }
        mask
    }
}
