//! Timing the decode loop: what `bench` and `sweep` both report, measured the same way.

use std::time::Instant;

use crate::model::{ForwardError, Model, RunState, Sparsity, Traffic};
use crate::sample::argmax;

/// One timed run: `prompt` evaluated token by token, then `gen_tokens` greedy tokens decoded.
#[derive(Debug, Clone, Copy)]
pub struct DecodeRun {
    /// Prompt tokens evaluated per second.
    pub prefill_tok_s: f64,
    /// Tokens decoded per second.
    pub decode_tok_s: f64,
    /// What one decoded token read (every decode step reads the same at a fixed sparsity).
    pub traffic: Traffic,
}

/// Time one run from an empty KV cache. `state` needs room for `prompt.len() + gen_tokens`.
pub fn time_decode(
    model: &Model,
    state: &mut RunState,
    prompt: &[u32],
    gen_tokens: usize,
    sparsity: Sparsity,
) -> Result<DecodeRun, ForwardError> {
    let t = Instant::now();
    model.feed_prompt(state, prompt, 0, sparsity)?;
    let prefill = t.elapsed().as_secs_f64();
    let t = Instant::now();
    for i in 0..gen_tokens {
        let next = argmax(state.logits());
        model.forward(state, next, prompt.len() + i, sparsity)?;
    }
    let decode = t.elapsed().as_secs_f64();
    Ok(DecodeRun {
        prefill_tok_s: prompt.len() as f64 / prefill,
        decode_tok_s: gen_tokens as f64 / decode,
        traffic: *state.traffic(),
    })
}

/// The median of `v` (the upper one for an even count); NaN for an empty `v`.
pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
