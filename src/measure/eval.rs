//! Scoring a model on text: the next-token predictions over non-overlapping windows, and their
//! mean negative log-likelihood — what `perplexity` and `sweep` report, computed the same way.

use crate::model::{ForwardError, Model, RunState, Sparsity};
use crate::sample::log_prob;

/// Number of whole windows of `ctx` tokens in `n_tokens`, at most `chunks`.
pub fn window_count(n_tokens: usize, ctx: usize, chunks: Option<usize>) -> usize {
    (n_tokens / ctx.max(1)).min(chunks.unwrap_or(usize::MAX))
}

/// A text cut into non-overlapping windows of `ctx` tokens, the first `chunks` of them (all
/// whole windows when `None`).
#[derive(Debug, Clone, Copy)]
pub struct Windows<'a> {
    /// The text's tokens.
    pub tokens: &'a [u32],
    /// Tokens per window.
    pub ctx: usize,
    /// At most this many windows (None: every whole window).
    pub chunks: Option<usize>,
}

impl Windows<'_> {
    /// The number of windows scored.
    pub fn count(&self) -> usize {
        window_count(self.tokens.len(), self.ctx, self.chunks)
    }
}

/// Run each of `windows` from an empty KV cache, and call
/// `on_prediction(logits, next_token)` for every one of a window's ctx−1 next-token predictions
/// (and `on_window(done, total)` after each window). `state` must have room for `ctx` positions.
pub fn for_each_prediction(
    model: &Model,
    state: &mut RunState,
    windows: Windows,
    sparsity: Sparsity,
    on_window: &mut dyn FnMut(usize, usize),
    on_prediction: &mut dyn FnMut(&RunState, u32),
) -> Result<(), ForwardError> {
    let (n, ctx) = (windows.count(), windows.ctx);
    for w in 0..n {
        let window = &windows.tokens[w * ctx..(w + 1) * ctx];
        // A few positions at a time: each weight is read once per batch, and every position's
        // logits come out as a token-by-token forward gives them.
        model.forward_each(state, window, 0, sparsity, &mut |i, state| {
            if let Some(&next) = window.get(i + 1) {
                on_prediction(state, next);
            }
        })?;
        on_window(w + 1, n);
    }
    Ok(())
}

/// Mean negative log-likelihood (log-softmax in f64) of the predictions of
/// [`for_each_prediction`], and their number.
pub fn mean_nll(
    model: &Model,
    mut state: RunState,
    tokens: &[u32],
    ctx: usize,
    chunks: Option<usize>,
    sparsity: Sparsity,
    on_window: &mut dyn FnMut(usize, usize),
) -> Result<(f64, usize), ForwardError> {
    let (mut nll, mut n) = (0.0f64, 0usize);
    let windows = Windows {
        tokens,
        ctx,
        chunks,
    };
    for_each_prediction(
        model,
        &mut state,
        windows,
        sparsity,
        on_window,
        &mut |s, next| {
            nll -= log_prob(s.logits(), next as usize);
            n += 1;
        },
    )?;
    Ok((nll / n.max(1) as f64, n))
}
