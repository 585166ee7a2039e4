//! The llama forward pass, with Q-Sparse before every projection.
//!
//! Reads top to bottom like the architecture (`forward`): embed → for each layer (RMSNorm →
//! q/k/v → RoPE → grouped-query attention over the KV cache → o → residual; RMSNorm → gate/up →
//! act(gate)·up → down → residual) → final norm → lm_head. Each projection's input goes through
//! `Sparsifier::select`: int8 absmax quantization for integer weights, then Top-K by magnitude;
//! q/k/v share one selection (same input), gate/up share one. Attention scores and the lm_head
//! stay dense by default.
//!
//! One deviation from plain absmax: the few largest activations of a vector (by default 32) are
//! kept out of the int8 quantization: as int16 at the same scale against I8 weights (one integer
//! pass), as f32 columns against T2 weights. Models trained without int8 activations have a
//! handful of massive outliers per vector; letting them set γ leaves everything else a few
//! levels. On SmolLM2 with int8 weights, 32 outliers bring the activations' cost to about nothing
//! (`qsparse perplexity --weights int8 --act-outliers 0` against the default; docs/quality.md).
//!
//! Here: the model, its run state and the calls that run tokens. Beside it: `forward` (the
//! pass itself), `project` (a projection for every token of a pass, and what it measures),
//! `sparsify` (what a projection keeps, and its product), `attend` (a layer's attention across
//! the workers), `rope`, `kv_cache`, `traffic` (what a pass read) and `pool` (the pass on the
//! rayon pool).

use std::sync::Arc;

use qsparse_kernels::dense_q8::BlockQ8;
use qsparse_kernels::{Isa, NonFinite};

use super::config::ModelConfig;
use super::profile::Profile;
use super::weights::{WeightFormat, Weights};
use crate::gguf::{DequantError, GgufFile};

mod attend;
mod forward;
mod kv_cache;
mod pool;
mod project;
mod rope;
mod sparsify;
mod traffic;

use forward::Rows;
use kv_cache::KvCache;
use pool::on_pool;
use project::Union;
pub use project::PROMPT_BATCH;
use rope::Rope;
pub use sparsify::{default_activation_outliers, Select, Sparsity, DEFAULT_ACTIVATION_OUTLIERS};
use sparsify::{Selection, Sparsifier};
pub use traffic::Traffic;

/// Why a forward pass could not run (nothing is written to the KV cache past the failing batch).
// Each variant's `#[error]` message is its documentation.
#[allow(missing_docs)]
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("token id {token} is outside the vocabulary ({vocab} tokens)")]
    BadToken { token: u32, vocab: usize },
    #[error("position {pos} is beyond the context length {ctx}")]
    ContextFull { pos: usize, ctx: usize },
    #[error("layer {layer}: {source}")]
    NonFinite {
        layer: usize,
        #[source]
        source: NonFinite,
    },
    #[error(transparent)]
    Dequant(#[from] DequantError),
    #[error(
        "the lm_head was loaded for a dense input (row-major int8): a sparse lm_head input needs \
         the model loaded with HeadInput::Sparse"
    )]
    DenseHead,
}

/// Per-sequence state: activations, KV cache, selection buffers. Allocated once.
#[derive(Debug)]
pub struct RunState {
    rows: Rows,
    kv: KvCache,
    /// Attention's scratch: score rows, a batched pass's widened cache.
    attention_scratch: attend::Scratch,
    /// Each token's RoPE rotation.
    ropes: Vec<Rope>,
    sparsifier: Sparsifier,
    /// Each token's selected projection input.
    selections: Vec<Selection>,
    union: Union,
    /// Each token's input of a row-major Q8 lm_head.
    head_inputs: Vec<BlockQ8>,
    /// Each token's next-token logits (rows of vocab).
    logits: Vec<f32>,
    /// What each token's pass read.
    traffic: [Traffic; PROMPT_BATCH],
    /// The token of the last pass that [`RunState::logits`] and [`RunState::traffic`] show.
    current: usize,
    /// Time per phase, when enabled: single-token passes (decode steps and a prompt's last
    /// token).
    pub profile: Option<Profile>,
    /// Time per phase of the batched prompt passes (every prompt token but the last), when
    /// enabled.
    pub prompt_profile: Option<Profile>,
    /// Per-layer ratios [qkv, o, gate_up, down] that replace a sparse pass's uniform ones (a
    /// calibrated sparsity profile); dense passes stay dense.
    layer_ratios: Option<Arc<[[f32; 4]]>>,
}

impl RunState {
    /// A run state for up to `ctx` positions of `config`'s model with `format` weights.
    pub fn new(config: &ModelConfig, format: WeightFormat, ctx: usize) -> RunState {
        let b = PROMPT_BATCH;
        RunState {
            rows: Rows::new(config),
            kv: KvCache::new(config, ctx),
            attention_scratch: attend::Scratch::default(),
            ropes: (0..b).map(|_| Rope::default()).collect(),
            sparsifier: Sparsifier {
                isa: Isa::best(),
                format,
                outliers: default_activation_outliers(format),
                select: Select::Magnitude,
            },
            selections: (0..b).map(|_| Selection::default()).collect(),
            union: Union::default(),
            head_inputs: vec![BlockQ8::default(); b],
            logits: vec![0.0; b * config.vocab_size],
            traffic: [Traffic::default(); PROMPT_BATCH],
            current: 0,
            profile: None,
            prompt_profile: None,
            layer_ratios: None,
        }
    }

    /// Run sparse passes with per-layer ratios ([qkv, o, gate_up, down] for each layer, in
    /// order) instead of uniform ones; None goes back to uniform. A layer beyond the list runs
    /// at the uniform ratios.
    pub fn set_layer_ratios(&mut self, ratios: Option<Arc<[[f32; 4]]>>) {
        self.layer_ratios = ratios;
    }

    /// The per-layer ratios in use, if any (see [`RunState::set_layer_ratios`]).
    pub fn layer_ratios(&self) -> Option<&[[f32; 4]]> {
        self.layer_ratios.as_deref()
    }

    /// The next-token logits of the last token run with logits ([`Model::forward`]), or of the
    /// token [`Model::forward_each`] is reporting.
    pub fn logits(&self) -> &[f32] {
        let vocab = self.logits.len() / PROMPT_BATCH;
        &self.logits[self.current * vocab..(self.current + 1) * vocab]
    }

    /// What that token's pass read.
    pub fn traffic(&self) -> &Traffic {
        &self.traffic[self.current]
    }

    /// Start timing every forward pass by phase (see [`Profile`]).
    pub fn enable_profile(&mut self) {
        self.profile = Some(Profile::default());
        self.prompt_profile = Some(Profile::default());
    }

    /// The positions its KV cache holds.
    pub fn context_length(&self) -> usize {
        self.kv.ctx
    }

    /// Choose each projection's kept inputs by `select` (magnitude unless told).
    pub fn set_select(&mut self, select: Select) {
        self.sparsifier.select = select;
    }

    /// How projections' kept inputs are chosen.
    pub fn select(&self) -> Select {
        self.sparsifier.select
    }

    /// Run the kernels at `isa` (if this CPU has it) instead of the best level.
    pub fn set_isa(&mut self, isa: Isa) {
        if isa.is_available() {
            self.sparsifier.isa = isa;
        }
    }

    /// The instruction-set level the kernels run at.
    pub fn isa(&self) -> Isa {
        self.sparsifier.isa
    }

    /// How many of each vector's largest activations skip int8 quantization (int8 weights only;
    /// 0 is Q-Sparse's plain absmax).
    pub fn set_activation_outliers(&mut self, n: usize) {
        self.sparsifier.outliers = n;
    }
}

/// A loaded llama-family model: configuration, converted weights, and the mapped file (for the
/// token embedding).
#[derive(Debug)]
pub struct Model {
    /// Its configuration.
    pub config: ModelConfig,
    /// Its weights.
    pub weights: Weights,
    /// The file, mapped (the token embedding is read from it).
    pub file: GgufFile,
    /// θ_i = base^(−2i/rope_dim) of each rotated pair (scaled as the file asks).
    rope_freqs: Vec<f32>,
    /// LongRoPE's for contexts past the original length.
    rope_freqs_long: Option<Vec<f32>>,
}

impl Model {
    /// The RoPE frequencies of a run whose context holds `ctx` positions: LongRoPE's long
    /// factors past the original context length, as llama.cpp picks them.
    pub(super) fn rope_freqs_for(&self, ctx: usize) -> &[f32] {
        match &self.rope_freqs_long {
            Some(long) if ctx > self.config.rope_original_context => long,
            _ => &self.rope_freqs,
        }
    }

    /// A model of `config` with `weights`, from `file`.
    pub fn new(file: GgufFile, config: ModelConfig, weights: Weights) -> Model {
        // llama.cpp's "normal" RoPE rotates consecutive pairs (x[2i], x[2i+1]); the GGUF
        // converter permuted q/k rows to match it.
        // Linear scaling multiplies every frequency (`rope_freq_scale`); RoPE factors divide
        // each pair's (as ggml's `rope_ext` applies them).
        let freqs = |factors: Option<&[f32]>| -> Vec<f32> {
            let half = config.rope_dim / 2;
            (0..half)
                .map(|i| {
                    let theta = config
                        .rope_base
                        .powf(-2.0 * i as f32 / config.rope_dim as f32);
                    let factor = factors.map_or(1.0, |f| f[i]);
                    config.rope_freq_scale * theta / factor
                })
                .collect()
        };
        let rope_freqs = freqs(weights.rope_factors.as_deref());
        let rope_freqs_long = weights
            .rope_factors_long
            .as_deref()
            .map(|long| freqs(Some(long)));
        Model {
            config,
            weights,
            file,
            rope_freqs,
            rope_freqs_long,
        }
    }

    /// Run token `token` at position `pos` through the model; its next-token logits are then
    /// [`RunState::logits`].
    pub fn forward(
        &self,
        state: &mut RunState,
        token: u32,
        pos: usize,
        sparsity: Sparsity,
    ) -> Result<(), ForwardError> {
        state.current = 0;
        on_pool(|| self.pass(state, &[token], pos, sparsity, true))
    }

    /// Run the prompt `tokens` at positions pos0.. through the model, leaving the logits after
    /// the last one in [`RunState::logits`]: the tokens before it go through [`Model::feed`].
    /// Empty `tokens` do nothing.
    pub fn feed_prompt(
        &self,
        state: &mut RunState,
        tokens: &[u32],
        pos0: usize,
        sparsity: Sparsity,
    ) -> Result<(), ForwardError> {
        let Some((&last, rest)) = tokens.split_last() else {
            return Ok(());
        };
        self.feed(state, rest, pos0, sparsity)?;
        self.forward(state, last, pos0 + rest.len(), sparsity)
    }

    /// Run prompt tokens at positions pos0.. through the model only to fill their KV cache
    /// entries; [`RunState::logits`] is left as it was ([`RunState::traffic`] is not). Nobody
    /// reads their next-token distributions, so they skip the final norm and the lm_head
    /// (SmolLM2 int8: 32 of the 138 MB a step reads), and they go [`PROMPT_BATCH`] at a time,
    /// each weight read once per batch. On an error, the entries of the batches before the
    /// failing one are filled.
    pub fn feed(
        &self,
        state: &mut RunState,
        tokens: &[u32],
        pos0: usize,
        sparsity: Sparsity,
    ) -> Result<(), ForwardError> {
        on_pool(|| {
            for (i, chunk) in tokens.chunks(PROMPT_BATCH).enumerate() {
                self.pass(state, chunk, pos0 + i * PROMPT_BATCH, sparsity, false)?;
            }
            Ok(())
        })
    }

    /// Run `tokens` at positions pos0.. through the model, [`PROMPT_BATCH`] at a time, and call
    /// `on_token(i, state)` for each with its next-token logits and traffic in
    /// [`RunState::logits`] and [`RunState::traffic`]: bit for bit what [`Model::forward`] of
    /// token i gives. For scoring a text, where every position's prediction is read.
    pub fn forward_each(
        &self,
        state: &mut RunState,
        tokens: &[u32],
        pos0: usize,
        sparsity: Sparsity,
        on_token: &mut dyn FnMut(usize, &RunState),
    ) -> Result<(), ForwardError> {
        for (c, chunk) in tokens.chunks(PROMPT_BATCH).enumerate() {
            let i0 = c * PROMPT_BATCH;
            on_pool(|| self.pass(state, chunk, pos0 + i0, sparsity, true))?;
            for t in 0..chunk.len() {
                state.current = t;
                on_token(i0 + t, state);
            }
        }
        Ok(())
    }
}
