//! Perplexity under two published protocols, so numbers can be compared with
//! the tools that define them (the same model gives different numbers under
//! each; see the eval reference notes, section 3).
//!
//! - `llama.cpp` (`llama-perplexity`): disjoint chunks of `context` tokens, the
//!   chunk's first token overwritten with BOS when the tokenizer adds one, and
//!   only the second half scored: logits at positions `context/2 ..= context-2`
//!   predict the next token. At least `2 × context` tokens are required and the
//!   remainder after the last whole chunk is dropped.
//! - `strided` (the transformers guide "Perplexity of fixed-length models"):
//!   windows of up to `context` tokens starting every `stride` tokens; each
//!   window scores only the tokens no earlier window scored, so every token
//!   after the first is scored once with at least `context - stride` tokens of
//!   context. The count here is the exact number of scored tokens (the guide
//!   weights later windows by one token fewer, a difference it calls negligible).

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use super::{Backend, Batch};

/// Which protocol to follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Protocol {
    /// `llama-perplexity`'s chunked, second-half scoring.
    #[serde(rename = "llama.cpp")]
    LlamaCpp,
    /// The transformers guide's sliding window.
    #[serde(rename = "strided")]
    Strided,
}

impl Protocol {
    /// Parses the recipe spelling.
    pub fn parse(name: &str) -> Option<Protocol> {
        match name {
            "llama.cpp" | "llamacpp" => Some(Protocol::LlamaCpp),
            "strided" | "hf-strided" => Some(Protocol::Strided),
            _ => None,
        }
    }

    /// The recipe and results spelling.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::LlamaCpp => "llama.cpp",
            Protocol::Strided => "strided",
        }
    }
}

/// What to measure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PerplexitySpec {
    /// Scoring protocol.
    pub protocol: Protocol,
    /// Window length in tokens.
    pub context: usize,
    /// Distance between window starts (strided only; defaults to `context`).
    pub stride: Option<usize>,
    /// Use at most this many tokens of the text.
    pub max_tokens: Option<usize>,
}

/// Every number a perplexity run produced, with the protocol that defines it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PerplexityResult {
    /// Protocol name.
    pub protocol: Protocol,
    /// Window length.
    pub context: usize,
    /// Window stride (strided protocol).
    pub stride: Option<usize>,
    /// The BOS token id placed at the start (of the text, or of every chunk
    /// under llama.cpp), if the tokenizer adds one.
    pub bos_token_id: Option<u32>,
    /// Tokens in the whole text, BOS included.
    pub tokens_in_text: usize,
    /// Tokens the windows covered.
    pub tokens_used: usize,
    /// Forward passes run.
    pub windows: usize,
    /// Tokens run through the model (the sum of window lengths).
    pub tokens_processed: usize,
    /// Tokens whose log-probability was scored.
    pub scored_tokens: usize,
    /// Σ −ln p over scored tokens.
    pub nll_sum: f64,
    /// Mean negative log-likelihood (nats per token).
    pub mean_nll: f64,
    /// exp(mean_nll).
    pub perplexity: f64,
    /// llama.cpp's standard error: ppl · sqrt(var(nll) / (n − 1)).
    pub perplexity_uncertainty: f64,
}

/// The windows a protocol evaluates over `n` tokens: `(start, len, first
/// scored position)`, where scored positions run from that one to `len − 2`
/// and predict the token after them.
fn windows(spec: &PerplexitySpec, n: usize) -> Result<Vec<(usize, usize, usize)>> {
    let ctx = spec.context;
    match spec.protocol {
        Protocol::LlamaCpp => {
            if ctx < 4 {
                bail!(
                    "perplexity context {ctx} is too small for the llama.cpp protocol (at least 4)"
                );
            }
            if n < 2 * ctx {
                bail!(
                    "the text has {n} tokens; the llama.cpp protocol needs at least \
                     2 × context = {} tokens",
                    2 * ctx
                );
            }
            Ok((0..n / ctx).map(|c| (c * ctx, ctx, ctx / 2)).collect())
        }
        Protocol::Strided => {
            let stride = spec.stride.unwrap_or(ctx);
            if ctx < 2 || stride == 0 || stride > ctx {
                bail!("strided perplexity needs context ≥ 2 and 1 ≤ stride ≤ context (got context {ctx}, stride {stride})");
            }
            if n < ctx {
                bail!("the text has {n} tokens, shorter than one context of {ctx} tokens");
            }
            let mut out = Vec::new();
            let (mut begin, mut prev_end) = (0, 0);
            loop {
                let end = (begin + ctx).min(n);
                let first_target = prev_end.max(begin + 1);
                out.push((begin, end - begin, first_target - begin - 1));
                prev_end = end;
                if end == n {
                    return Ok(out);
                }
                begin += stride;
            }
        }
    }
}

/// Measures the perplexity of `tokens` (the whole text, tokenized with the
/// tokenizer's special tokens). `bos` is the tokenizer's BOS id when it adds
/// one; `progress` receives one line per few windows.
pub fn perplexity(
    backend: &dyn Backend,
    tokens: &[u32],
    bos: Option<u32>,
    spec: &PerplexitySpec,
    progress: &dyn Fn(&str),
) -> Result<PerplexityResult> {
    let tokens_in_text = tokens.len();
    let tokens = &tokens[..spec.max_tokens.unwrap_or(usize::MAX).min(tokens.len())];
    let plan = windows(spec, tokens.len())?;
    let (mut nll, mut nll2, mut count) = (0f64, 0f64, 0usize);
    let report_every = plan.len().div_ceil(10).max(1);
    for (w, &(start, len, first)) in plan.iter().enumerate() {
        let mut window = tokens[start..start + len].to_vec();
        if spec.protocol == Protocol::LlamaCpp {
            if let Some(b) = bos {
                window[0] = b;
            }
        }
        let targets: Vec<(usize, u32)> = (first..len - 1)
            .map(|j| (j, tokens[start + j + 1]))
            .collect();
        for lp in backend.log_probs(&Batch::window(window), &targets)? {
            nll -= lp;
            nll2 += lp * lp;
        }
        count += targets.len();
        if (w + 1) % report_every == 0 || w + 1 == plan.len() {
            progress(&format!(
                "perplexity [{}/{}] {:.4}",
                w + 1,
                plan.len(),
                (nll / count as f64).exp()
            ));
        }
    }
    let mean = nll / count as f64;
    let var = nll2 / count as f64 - mean * mean;
    let ppl = mean.exp();
    let uncertainty = if var > 0.0 && count > 1 {
        ppl * (var / (count - 1) as f64).sqrt()
    } else {
        0.0
    };
    let tokens_used = plan.last().map_or(0, |&(s, l, _)| s + l);
    Ok(PerplexityResult {
        protocol: spec.protocol,
        context: spec.context,
        stride: match spec.protocol {
            Protocol::Strided => Some(spec.stride.unwrap_or(spec.context)),
            Protocol::LlamaCpp => None,
        },
        bos_token_id: bos,
        tokens_in_text,
        tokens_used,
        windows: plan.len(),
        tokens_processed: plan.iter().map(|&(_, l, _)| l).sum(),
        scored_tokens: count,
        nll_sum: nll,
        mean_nll: mean,
        perplexity: ppl,
        perplexity_uncertainty: uncertainty,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(protocol: Protocol, context: usize, stride: Option<usize>) -> PerplexitySpec {
        PerplexitySpec {
            protocol,
            context,
            stride,
            max_tokens: None,
        }
    }

    #[test]
    fn llama_cpp_windows_score_the_second_half_of_whole_chunks() {
        let w = windows(&spec(Protocol::LlamaCpp, 8, None), 27).unwrap();
        assert_eq!(w, vec![(0, 8, 4), (8, 8, 4), (16, 8, 4)]);
        let err = windows(&spec(Protocol::LlamaCpp, 8, None), 15).unwrap_err();
        assert!(err.to_string().contains("has 15 tokens"), "{err}");
    }

    #[test]
    fn strided_windows_score_every_token_once() {
        let w = windows(&spec(Protocol::Strided, 8, Some(4)), 18).unwrap();
        assert_eq!(w, vec![(0, 8, 0), (4, 8, 3), (8, 8, 3), (12, 6, 3)]);
        let scored: usize = w.iter().map(|&(_, l, f)| l - 1 - f).sum();
        assert_eq!(scored, 17);
        let err = windows(&spec(Protocol::Strided, 8, None), 7).unwrap_err();
        assert!(
            err.to_string().contains("shorter than one context"),
            "{err}"
        );
    }
}
