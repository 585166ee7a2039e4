//! Generation over one KV cache that remembers which tokens it holds, so a follow-up prompt that
//! starts like the previous one (the next chat turn, a retried request) evaluates only what is
//! new. Used by `chat` and `serve`; streams text through a callback that can stop it.

use std::time::Instant;

use crate::model::{ForwardError, Model, RunState, Sparsity};
use crate::sample::{log_prob, top_candidates, Candidate, Sampler, SamplerConfig};
use crate::tokenizer::{StreamDecoder, Tokenizer};

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenerateParams {
    /// Tokens to generate at most.
    pub max_tokens: usize,
    /// How tokens are sampled.
    pub sampler: SamplerConfig,
    /// The Q-Sparse ratios.
    pub sparsity: Sparsity,
    /// Generation ends before the first occurrence of any of these strings (which is not
    /// returned).
    pub stop: Vec<String>,
    /// Report each generated token's log-probability and, at each step, this many of the most
    /// likely tokens (None: no log-probabilities).
    pub logprobs: Option<usize>,
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// End-of-sequence / end-of-turn token, or a stop string.
    Stop,
    /// `max_tokens` generated, or the context is full.
    Length,
    /// The text callback asked to stop (Ctrl-C, a client that went away).
    Cancelled,
}

impl Finish {
    /// OpenAI's `finish_reason`.
    pub fn reason(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
            Finish::Cancelled => "cancelled",
        }
    }
}

/// A finished generation.
#[derive(Debug, Clone)]
pub struct Generation {
    /// The generated text (without a stop string).
    pub text: String,
    /// Generated tokens (an end token included when it ended the generation).
    pub tokens: Vec<u32>,
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Prompt tokens actually evaluated (the rest were already in the cache).
    pub evaluated_prompt_tokens: usize,
    /// Why it ended.
    pub finish: Finish,
    /// Seconds spent on the prompt.
    pub prompt_s: f64,
    /// Seconds spent generating.
    pub generate_s: f64,
    /// Weight bytes and active parameters of one decoded token.
    pub weight_bytes_per_token: u64,
    /// Active parameters of one decoded token.
    pub active_params_per_token: u64,
    /// With `logprobs`: each generated token's log-probability, and the most likely candidates
    /// at its step.
    pub token_logprobs: Vec<f64>,
    /// See `token_logprobs`.
    pub top_logprobs: Vec<Vec<Candidate>>,
}

impl Generation {
    /// Decoding speed (tokens after the first per second).
    pub fn decode_tok_s(&self) -> f64 {
        self.tokens.len().saturating_sub(1).max(1) as f64 / self.generate_s.max(1e-9)
    }

    /// Prompt evaluation speed (evaluated tokens per second).
    pub fn prompt_tok_s(&self) -> f64 {
        self.evaluated_prompt_tokens as f64 / self.prompt_s.max(1e-9)
    }
}

/// Why a generation failed.
// Each variant's `#[error]` message is its documentation.
#[allow(missing_docs)]
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("the prompt has {tokens} tokens; the context holds {ctx} (and needs room to reply)")]
    PromptTooLong { tokens: usize, ctx: usize },
    #[error(transparent)]
    Forward(#[from] ForwardError),
}

/// A KV cache and the tokens it holds.
#[derive(Debug)]
pub struct Session<'m> {
    model: &'m Model,
    tokenizer: &'m Tokenizer,
    state: RunState,
    /// Tokens whose keys and values are in the cache, in positions 0..len.
    cached: Vec<u32>,
    /// The sparsity those entries were computed at (another sparsity invalidates them).
    cached_sparsity: Sparsity,
}

impl<'m> Session<'m> {
    /// A session on `model` with an empty KV cache in `state`.
    pub fn new(model: &'m Model, tokenizer: &'m Tokenizer, state: RunState) -> Session<'m> {
        Session {
            model,
            tokenizer,
            state,
            cached: Vec::new(),
            cached_sparsity: Sparsity::dense(),
        }
    }

    /// The positions its KV cache holds.
    pub fn context_length(&self) -> usize {
        self.state.context_length()
    }

    /// The model's tokenizer.
    pub fn tokenizer(&self) -> &'m Tokenizer {
        self.tokenizer
    }

    /// Run sparse steps selecting by `select`, with per-layer ratios (a calibrated profile) or
    /// uniform ones (None); if that changes how inputs are selected, the cache, computed the
    /// other way, is forgotten.
    pub fn set_selection(
        &mut self,
        select: crate::model::Select,
        layer_ratios: Option<std::sync::Arc<[[f32; 4]]>>,
    ) {
        let same_ratios = match (self.state.layer_ratios(), &layer_ratios) {
            (None, None) => true,
            (Some(a), Some(b)) => a[..] == b[..],
            _ => false,
        };
        if self.state.select() != select || !same_ratios {
            self.state.set_select(select);
            self.state.set_layer_ratios(layer_ratios);
            self.cached.clear();
        }
    }

    /// Forget the cache's contents.
    pub fn reset(&mut self) {
        self.cached.clear();
    }

    /// Generate a continuation of `prompt`. `on_text` receives the text as it becomes final
    /// (never half a character, never part of a stop string) — possibly empty, once per token —
    /// and returns false to stop.
    pub fn generate(
        &mut self,
        prompt: &[u32],
        params: &GenerateParams,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Generation, SessionError> {
        let ctx = self.context_length();
        if prompt.is_empty() {
            return Err(SessionError::EmptyPrompt);
        }
        if prompt.len() >= ctx {
            return Err(SessionError::PromptTooLong {
                tokens: prompt.len(),
                ctx,
            });
        }
        if params.sparsity != self.cached_sparsity {
            self.cached.clear();
            self.cached_sparsity = params.sparsity;
        }
        // Keep the common prefix, but always evaluate the prompt's last token: its logits are
        // what the first sampled token needs.
        let keep = common_prefix(&self.cached, prompt).min(prompt.len() - 1);
        self.cached.truncate(keep);

        let t = Instant::now();
        let (&last, rest) = prompt[keep..].split_last().expect("keep < prompt.len()");
        self.feed(rest, params.sparsity)?;
        self.forward(last, params.sparsity)?;
        let prompt_s = t.elapsed().as_secs_f64();

        let mut sampler = Sampler::new(params.sampler);
        let mut decoder = StreamDecoder::new();
        let mut stops = StopMatcher::new(&params.stop);
        let mut tokens = Vec::new();
        let mut finish = Finish::Length;
        let (mut bytes, mut active) = (
            self.state.traffic().total_bytes(),
            self.state.traffic().total_active_params(),
        );
        let (mut top_logprobs, mut token_logprobs) = (Vec::new(), Vec::new());
        let t = Instant::now();
        while tokens.len() < params.max_tokens {
            let next = sampler.sample(self.state.logits(), &self.cached);
            if let Some(n) = params.logprobs {
                let logits = self.state.logits();
                top_logprobs.push(top_candidates(logits, n));
                token_logprobs.push(log_prob(logits, next as usize));
            }
            tokens.push(next);
            if self.tokenizer.is_end(next) {
                finish = Finish::Stop;
                break;
            }
            let piece = decoder.push(self.tokenizer.token_bytes(next));
            let (ready, stopped) = stops.push(&piece);
            if !on_text(&ready) {
                finish = Finish::Cancelled;
                break;
            }
            if stopped {
                finish = Finish::Stop;
                break;
            }
            if tokens.len() == params.max_tokens {
                break;
            }
            if self.cached.len() >= ctx {
                break; // context full
            }
            self.forward(next, params.sparsity)?;
            bytes = self.state.traffic().total_bytes();
            active = self.state.traffic().total_active_params();
        }
        let generate_s = t.elapsed().as_secs_f64();
        if !stops.stopped {
            // Whatever the decoder and the stop matcher held back is final text now.
            let (mut tail, hit) = stops.push(&decoder.finish());
            if hit {
                finish = Finish::Stop;
            } else {
                tail += &stops.flush();
            }
            if !tail.is_empty() && finish != Finish::Cancelled {
                on_text(&tail);
            }
        }
        Ok(Generation {
            text: stops.text,
            tokens,
            prompt_tokens: prompt.len(),
            evaluated_prompt_tokens: prompt.len() - keep,
            finish,
            prompt_s,
            generate_s,
            weight_bytes_per_token: bytes,
            active_params_per_token: active,
            token_logprobs,
            top_logprobs,
        })
    }

    fn forward(&mut self, token: u32, sparsity: Sparsity) -> Result<(), ForwardError> {
        let pos = self.cached.len();
        // A failed step leaves the cache holding only what was evaluated before it.
        self.model.forward(&mut self.state, token, pos, sparsity)?;
        self.cached.push(token);
        Ok(())
    }

    /// As `forward`, for prompt tokens whose logits nobody reads (batched, no lm_head). After a
    /// failure the cache holds what was evaluated before these tokens.
    fn feed(&mut self, tokens: &[u32], sparsity: Sparsity) -> Result<(), ForwardError> {
        let pos = self.cached.len();
        self.model.feed(&mut self.state, tokens, pos, sparsity)?;
        self.cached.extend_from_slice(tokens);
        Ok(())
    }
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Holds back text that could be the start of a stop string, and cuts the text at the first
/// stop string.
#[derive(Debug)]
struct StopMatcher<'a> {
    stops: &'a [String],
    /// Text released so far.
    text: String,
    pending: String,
    stopped: bool,
}

impl<'a> StopMatcher<'a> {
    fn new(stops: &'a [String]) -> StopMatcher<'a> {
        StopMatcher {
            stops,
            text: String::new(),
            pending: String::new(),
            stopped: false,
        }
    }

    /// Add text; returns what can be released now and whether a stop string was found.
    fn push(&mut self, s: &str) -> (String, bool) {
        if self.stopped {
            return (String::new(), true);
        }
        self.pending.push_str(s);
        let first_stop = self
            .stops
            .iter()
            .filter(|st| !st.is_empty())
            .filter_map(|st| self.pending.find(st.as_str()))
            .min();
        let release = match first_stop {
            Some(at) => {
                self.stopped = true;
                at
            }
            None => {
                // Keep the longest suffix that is a proper prefix of some stop string.
                let held = self
                    .stops
                    .iter()
                    .map(|st| longest_suffix_prefix(&self.pending, st))
                    .max()
                    .unwrap_or(0);
                self.pending.len() - held
            }
        };
        let out: String = self.pending[..release].to_owned();
        if self.stopped {
            self.pending.clear();
        } else {
            self.pending.drain(..release);
        }
        self.text.push_str(&out);
        (out, self.stopped)
    }

    /// Release whatever is held back (the generation ended without completing a stop string).
    fn flush(&mut self) -> String {
        let out = std::mem::take(&mut self.pending);
        self.text.push_str(&out);
        out
    }
}

/// Length in bytes of the longest suffix of `text` that is a proper prefix of `stop`, on char
/// boundaries.
fn longest_suffix_prefix(text: &str, stop: &str) -> usize {
    let max = stop.len().saturating_sub(1).min(text.len());
    (1..=max)
        .rev()
        .find(|&n| {
            let start = text.len() - n;
            text.is_char_boundary(start) && stop.starts_with(&text[start..])
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (Vec<String>, String, bool) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut m = StopMatcher::new(&stops);
        let mut out = Vec::new();
        let mut stopped = false;
        for p in pieces {
            let (r, s) = m.push(p);
            out.push(r);
            if s {
                stopped = true;
                break;
            }
        }
        if !stopped {
            out.push(m.flush());
        }
        (out, m.text, stopped)
    }

    #[test]
    fn stop_strings_are_cut_even_across_pieces() {
        let (out, text, stopped) = run(&["\nUser:"], &["Hello", " there\n", "Us", "er: hi"]);
        assert!(stopped);
        assert_eq!(text, "Hello there");
        assert_eq!(out.concat(), "Hello there");
        // The newline was held back until it was known to start the stop string.
        assert_eq!(out[1], " there");
    }

    #[test]
    fn held_back_text_is_released_when_it_is_not_a_stop() {
        let (out, text, stopped) = run(&["END"], &["the E", "ND", "x"]);
        assert!(stopped);
        assert_eq!(text, "the ");
        let (out2, text2, stopped2) = run(&["END"], &["the E", "nd"]);
        assert!(!stopped2);
        assert_eq!(text2, "the End");
        assert_eq!(out2.concat(), "the End");
        assert_eq!(out.concat(), "the ");
    }

    #[test]
    fn multibyte_text_is_never_split() {
        let (_, text, stopped) = run(&["éx"], &["café", "é", "y"]);
        assert!(!stopped);
        assert_eq!(text, "cafééy");
        assert_eq!(longest_suffix_prefix("aé", "é!"), 'é'.len_utf8());
    }
}
