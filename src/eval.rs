//! Scoring a model on text: mean negative log-likelihood of next-token predictions, the quantity
//! `perplexity` and `sweep` report.

use crate::model::{ForwardError, Model, RunState, Sparsity};
use crate::sample::log_prob;

/// Mean negative log-likelihood over non-overlapping windows of `ctx` tokens of `tokens` (each
/// from an empty KV cache, every one of its ctx−1 predictions scored), and the number of
/// predictions. `state` must have room for `ctx` positions.
pub fn mean_nll(
    model: &Model,
    mut state: RunState,
    tokens: &[u32],
    ctx: usize,
    chunks: Option<usize>,
    sparsity: Sparsity,
    on_window: &mut dyn FnMut(usize, usize),
) -> Result<(f64, usize), ForwardError> {
    let windows = (tokens.len() / ctx).min(chunks.unwrap_or(usize::MAX));
    let (mut nll, mut n) = (0.0f64, 0usize);
    for w in 0..windows {
        let window = &tokens[w * ctx..(w + 1) * ctx];
        for (pos, &t) in window.iter().enumerate() {
            model.forward(&mut state, t, pos, sparsity)?;
            if let Some(&next) = window.get(pos + 1) {
                nll -= log_prob(&state.logits, next as usize);
                n += 1;
            }
        }
        on_window(w + 1, windows);
    }
    Ok((nll / n.max(1) as f64, n))
}
