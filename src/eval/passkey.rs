//! Passkey retrieval (Mohtashami & Jaggi 2023): a random 5-digit key hidden in
//! filler text at a random depth, then the question. Scored without sampling:
//! the model's log-probability of the key's tokens is compared with that of
//! distractor keys, all continuations sharing one pass over the prompt
//! ([`Batch`] branches). A trial is correct when the true key scores highest.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use super::{Backend, Batch};
use crate::fixtures::SplitMix;

const INTRO: &str = "There is an important info hidden inside a lot of irrelevant text. \
                     Find it and memorize them. I will quiz you about the important information there.";
/// The filler, one sentence at a time (the original repeats all five).
const FILLER: [&str; 5] = [
    "The grass is green.",
    "The sky is blue.",
    "The sun is yellow.",
    "Here we go.",
    "There and back again.",
];
const QUESTION: &str = "What is the pass key? The pass key is";

/// What to measure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasskeySpec {
    /// Target prompt lengths in tokens (prompt plus answer stays within each).
    pub lengths: Vec<usize>,
    /// Trials per length.
    pub trials: usize,
    /// Seed of keys, distractors and depths.
    pub seed: u64,
    /// Distractor keys per trial.
    pub distractors: usize,
}

/// Results at one length.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PasskeyLength {
    /// Requested length in tokens.
    pub length: usize,
    /// Trials run.
    pub trials: usize,
    /// Trials where the true key had the highest log-probability.
    pub correct: usize,
    /// `correct / trials`.
    pub accuracy: f64,
    /// Mean prompt length in tokens actually used (before the answer).
    pub mean_prompt_tokens: f64,
    /// Mean log-probability of the true key's tokens.
    pub mean_key_log_prob: f64,
}

/// Passkey results over every length.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PasskeyResult {
    /// The seed used.
    pub seed: u64,
    /// Candidates per trial (the key plus its distractors).
    pub candidates: usize,
    /// Per-length figures, in the order requested.
    pub lengths: Vec<PasskeyLength>,
}

/// One generated trial.
#[derive(Debug, Clone)]
struct Trial {
    prompt: String,
    key: u32,
    distractors: Vec<u32>,
}

/// `sentences` filler sentences, cycling through the five.
fn filler(sentences: usize) -> String {
    let parts: Vec<&str> = FILLER.iter().copied().cycle().take(sentences).collect();
    parts.join(" ")
}

fn prompt_text(key: u32, before: usize, after: usize) -> String {
    [
        INTRO.to_owned(),
        filler(before),
        format!("The pass key is {key}. Remember it. {key} is the pass key."),
        filler(after),
        QUESTION.to_owned(),
    ]
    .join("\n")
}

fn five_digits(rng: &mut SplitMix) -> u32 {
    10_000 + (rng.next_u64() % 90_000) as u32
}

/// The continuation tokens of `prompt` + " " + `key`, checked to extend the
/// prompt's own tokens.
fn continuation(
    encode: &dyn Fn(&str) -> Result<Vec<u32>>,
    prompt: &str,
    prompt_tokens: &[u32],
    key: u32,
) -> Result<Vec<u32>> {
    let full = encode(&format!("{prompt} {key}"))?;
    if full.len() <= prompt_tokens.len() || full[..prompt_tokens.len()] != *prompt_tokens {
        bail!("the tokenizer merges the passkey answer with the end of the question; cannot score it by continuation");
    }
    Ok(full[prompt_tokens.len()..].to_vec())
}

/// Builds a trial whose prompt plus answer fits in `length` tokens.
fn make_trial(
    encode: &dyn Fn(&str) -> Result<Vec<u32>>,
    length: usize,
    distractors: usize,
    rng: &mut SplitMix,
) -> Result<Trial> {
    if distractors >= 90_000 {
        bail!("{distractors} distractors per trial: there are only 90000 five-digit keys");
    }
    let key = five_digits(rng);
    let mut others = Vec::with_capacity(distractors);
    while others.len() < distractors {
        let d = five_digits(rng);
        if d != key && !others.contains(&d) {
            others.push(d);
        }
    }
    let depth = rng.uniform();
    // Answer allowance: a 5-digit key is at most 6 tokens in any tokenizer
    // that has digits; the exact count is checked after building.
    let answer = 6;
    let bare = encode(&prompt_text(key, 0, 0))?.len();
    let per_sentence = encode(&filler(20))?.len().div_ceil(20).max(1);
    if bare + answer > length {
        bail!(
            "passkey length {length} is too short: the prompt alone needs {} tokens",
            bare + answer
        );
    }
    let mut sentences = (length - bare - answer) / per_sentence + 1;
    loop {
        let before = (depth * sentences as f64).round() as usize;
        let prompt = prompt_text(key, before, sentences - before);
        if encode(&prompt)?.len() + answer <= length || sentences == 0 {
            return Ok(Trial {
                prompt,
                key,
                distractors: others,
            });
        }
        sentences -= 1;
    }
}

/// Runs passkey retrieval at every requested length. `encode` tokenizes with
/// the tokenizer's special tokens (BOS).
pub fn passkey(
    backend: &dyn Backend,
    encode: &dyn Fn(&str) -> Result<Vec<u32>>,
    spec: &PasskeySpec,
    progress: &dyn Fn(&str),
) -> Result<PasskeyResult> {
    let mut lengths = Vec::new();
    for &length in &spec.lengths {
        let mut rng = SplitMix(spec.seed ^ (length as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let (mut correct, mut prompt_tokens, mut key_lp) = (0, 0usize, 0f64);
        for _ in 0..spec.trials {
            let trial = make_trial(encode, length, spec.distractors, &mut rng)?;
            let prompt = encode(&trial.prompt)?;
            let candidates: Vec<Vec<u32>> = std::iter::once(trial.key)
                .chain(trial.distractors.iter().copied())
                .map(|k| continuation(encode, &trial.prompt, &prompt, k))
                .collect::<Result<_>>()?;
            let branches: Vec<Vec<u32>> = candidates
                .iter()
                .map(|c| c[..c.len() - 1].to_vec())
                .collect();
            let batch = Batch::with_branches(prompt.clone(), branches);
            let mut targets = Vec::new();
            for (b, cand) in candidates.iter().enumerate() {
                targets.push((prompt.len() - 1, cand[0]));
                for (j, &token) in cand.iter().enumerate().skip(1) {
                    targets.push((batch.branch_row(b, j - 1), token));
                }
            }
            let lps = backend.log_probs(&batch, &targets)?;
            let mut scores = Vec::with_capacity(candidates.len());
            let mut at = 0;
            for cand in &candidates {
                scores.push(lps[at..at + cand.len()].iter().sum::<f64>());
                at += cand.len();
            }
            if scores[1..].iter().all(|s| *s < scores[0]) {
                correct += 1;
            }
            prompt_tokens += prompt.len();
            key_lp += scores[0];
        }
        let n = spec.trials.max(1) as f64;
        progress(&format!(
            "passkey {length}: {correct}/{} correct",
            spec.trials
        ));
        lengths.push(PasskeyLength {
            length,
            trials: spec.trials,
            correct,
            accuracy: correct as f64 / n,
            mean_prompt_tokens: prompt_tokens as f64 / n,
            mean_key_log_prob: key_lp / n,
        });
    }
    Ok(PasskeyResult {
        seed: spec.seed,
        candidates: spec.distractors + 1,
        lengths,
    })
}
