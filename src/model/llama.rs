//! The llama forward pass for one token, with Q-Sparse before every projection.
//!
//! Reads top to bottom like the architecture: embed → for each layer (RMSNorm → q/k/v → RoPE →
//! grouped-query attention over the KV cache → o → residual; RMSNorm → gate/up → SiLU·up → down →
//! residual) → final norm → lm_head. Each projection's input goes through `Sparsifier::select`:
//! int8 absmax quantization for int8 weights, then Top-K by magnitude; q/k/v share one selection
//! (same input), gate/up share one. Attention scores and the lm_head stay dense by default.
//!
//! One deviation from plain absmax: the few largest activations of a vector (by default 32) are
//! kept out of the int8 quantization: as int16 at the same scale against I8 weights (one integer
//! pass), as f32 columns against T2 weights. Models trained without int8 activations have a
//! handful of massive outliers per vector; letting them set γ leaves everything else a few
//! levels. On SmolLM2 (data/english.txt, ctx 256) int8 weights cost +9.2% perplexity over f32
//! with plain absmax and +1.66% with 32 outliers; with every activation in f32 it is also +1.66%,
//! the int8 weights' own share. Builds that only reordered float sums elsewhere moved the figure
//! by a few tenths (16 outliers: +1.60% and +2.10%; 32 with f32 outlier sums: +1.48%): a
//! different rounding realization of the quantized activations.
//!
//! Here: the model, its run state and the single-token step. Beside it: `sparsify` (what a
//! projection keeps, and its product), `attend` (a layer's attention across the workers),
//! `prefill` (tokens in batches), `traffic` (what a pass read) and `pool` (the step on the rayon
//! pool).

use half::f16;
use half::slice::HalfBitsSliceExt;
use qsparse_kernels::activation;
use qsparse_kernels::attention::store_f16;
use qsparse_kernels::dense_q8::{matvec_rows_q8, BlockQ8};
use qsparse_kernels::{Format, Isa, NonFinite};

use super::config::{FfnActivation, ModelConfig};
use super::math::{rms_norm, rms_norm_in_place};
use super::profile::{Laps, Phase, Profile};
use super::weights::{Layer, Linear, LmHead, WeightFormat, Weights};
use crate::gguf::{DequantError, GgufFile};

mod attend;
mod pool;
mod prefill;
mod sparsify;
mod traffic;

use attend::{attend, Attention};
use pool::on_pool;
pub use prefill::PROMPT_BATCH;
pub use sparsify::{default_activation_outliers, Sparsity, DEFAULT_ACTIVATION_OUTLIERS};
use sparsify::{Selection, Sparsifier};
use traffic::share;
pub use traffic::Traffic;

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
    x: Vec<f32>,
    xb: Vec<f32>,
    /// q, k, v of one token, as the stacked q/k/v product writes them.
    qkv: Vec<f32>,
    att_out: Vec<f32>,
    attn_proj: Vec<f32>,
    /// gate then up (the stacked product); SiLU(gate)·up is formed in the gate half.
    gate_up: Vec<f32>,
    ffn_out: Vec<f32>,
    scores: Vec<f32>,
    pub logits: Vec<f32>,
    /// Keys and values in half precision (see `attention::KvHead`), held as their bits: a
    /// zeroed `Vec<u16>` comes from the OS untouched, its pages made resident as positions are
    /// written, where `vec![f16::ZERO; n]` wrote every entry at once (94 MB for SmolLM2's 4096
    /// positions before the first token). Viewed as halves through [`halves`].
    key_cache: Vec<u16>,
    value_cache: Vec<u16>,
    ctx: usize,
    /// This step's RoPE rotation (cos and ±sin per entry, see `Rope`).
    rope: Rope,
    sparsifier: Sparsifier,
    /// The lm_head input in Q8 blocks (a row-major head's input).
    head_input: BlockQ8,
    /// What the last forward pass read.
    pub traffic: Traffic,
    /// Time per phase, when enabled (single-token passes: decode steps and a prompt's last
    /// token; batched prompt steps are not timed).
    pub profile: Option<Profile>,
    /// Buffers of batched prompt evaluation.
    batch: prefill::BatchState,
}

impl RunState {
    pub fn new(config: &ModelConfig, format: WeightFormat, ctx: usize) -> RunState {
        let kv = config.n_kv_heads * config.head_dim;
        let q = config.n_heads * config.head_dim;
        RunState {
            x: vec![0.0; config.d_model],
            xb: vec![0.0; config.d_model],
            qkv: vec![0.0; q + 2 * kv],
            att_out: vec![0.0; q],
            attn_proj: vec![0.0; config.d_model],
            gate_up: vec![0.0; 2 * config.d_ff],
            ffn_out: vec![0.0; config.d_model],
            scores: vec![0.0; config.n_heads * ctx],
            logits: vec![0.0; config.vocab_size],
            key_cache: vec![0; config.n_layers * ctx * kv],
            value_cache: vec![0; config.n_layers * ctx * kv],
            ctx,
            rope: Rope::default(),
            sparsifier: Sparsifier {
                isa: Isa::best(),
                format,
                outliers: default_activation_outliers(format),
                sel: Selection::default(),
            },
            head_input: BlockQ8::default(),
            traffic: Traffic::default(),
            profile: None,
            batch: prefill::BatchState::new(config),
        }
    }

    /// Start timing every forward pass by phase (see [`Profile`]).
    pub fn enable_profile(&mut self) {
        self.profile = Some(Profile::default());
    }

    pub fn context_length(&self) -> usize {
        self.ctx
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
    pub config: ModelConfig,
    pub weights: Weights,
    pub file: GgufFile,
    rope_freqs: Vec<f32>,
}

impl Model {
    pub fn new(file: GgufFile, config: ModelConfig, weights: Weights) -> Model {
        // θ_i = base^(−2i/rope_dim): llama.cpp's "normal" RoPE rotates consecutive pairs
        // (x[2i], x[2i+1]); the GGUF converter permuted q/k rows to match it.
        let half = config.rope_dim / 2;
        let rope_freqs = (0..half)
            .map(|i| {
                config
                    .rope_base
                    .powf(-2.0 * i as f32 / config.rope_dim as f32)
            })
            .collect();
        Model {
            config,
            weights,
            file,
            rope_freqs,
        }
    }

    /// Run token `token` at position `pos` through the model; the next-token logits are left in
    /// `state.logits`.
    pub fn forward(
        &self,
        state: &mut RunState,
        token: u32,
        pos: usize,
        sparsity: Sparsity,
    ) -> Result<(), ForwardError> {
        on_pool(|| self.step(state, token, pos, sparsity))
    }

    /// Run the prompt `tokens` at positions pos0.. through the model, leaving the logits after
    /// the last one in `state.logits`: the tokens before it go through [`Model::feed`], batched
    /// and without the lm_head. Empty `tokens` do nothing.
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
    /// entries; `state.logits` is left as it was. Nobody reads their next-token distributions,
    /// so they skip the final norm and the lm_head (SmolLM2 int8: 32 of the 138 MB a step reads),
    /// and they go [`PROMPT_BATCH`] at a time, each weight read once per batch.
    /// On an error, the entries of the batches before the failing one are filled.
    pub fn feed(
        &self,
        state: &mut RunState,
        tokens: &[u32],
        pos0: usize,
        sparsity: Sparsity,
    ) -> Result<(), ForwardError> {
        for (i, chunk) in tokens.chunks(prefill::PROMPT_BATCH).enumerate() {
            self.feed_batch(state, chunk, pos0 + i * prefill::PROMPT_BATCH, sparsity)?;
        }
        Ok(())
    }

    fn step(
        &self,
        state: &mut RunState,
        token: u32,
        pos: usize,
        sparsity: Sparsity,
    ) -> Result<(), ForwardError> {
        let c = &self.config;
        if token as usize >= c.vocab_size {
            return Err(ForwardError::BadToken {
                token,
                vocab: c.vocab_size,
            });
        }
        if pos >= state.ctx {
            return Err(ForwardError::ContextFull {
                pos,
                ctx: state.ctx,
            });
        }
        let (hd, n_heads, n_kv) = (c.head_dim, c.n_heads, c.n_kv_heads);
        let kv_dim = n_kv * hd;
        let q_dim = n_heads * hd;
        let mut traffic = Traffic::default();
        let mut laps = Laps::start(state.profile.is_some());

        self.weights
            .embedding
            .row(&self.file, token, &mut state.x)?;
        self.rope_angles(pos, &mut state.rope);
        laps.mark(&mut state.profile, Phase::Embed);

        for (l, layer) in self.weights.layers.iter().enumerate() {
            let nonfinite = |source| ForwardError::NonFinite { layer: l, source };

            // Attention block.
            rms_norm(&mut state.xb, &state.x, &layer.attn_norm, c.rms_eps);
            traffic.record_input(&[0, 1, 2], &state.xb);
            laps.mark(&mut state.profile, Phase::Elementwise);
            state
                .sparsifier
                .select(&state.xb, sparsity.qkv, layer.wqkv.format())
                .map_err(nonfinite)?;
            laps.mark(&mut state.profile, Phase::Select);
            let read = state.sparsifier.matvec(&layer.wqkv, &mut state.qkv);
            laps.mark(&mut state.profile, Phase::Qkv);
            for (slot, rows) in [(0, q_dim), (1, kv_dim), (2, kv_dim)] {
                traffic.count(slot, share(read, rows, q_dim + 2 * kv_dim));
            }
            let isa = state.sparsifier.isa;
            let cache = halves_mut(&mut state.key_cache, &mut state.value_cache);
            self.rope_and_store(isa, l, pos, &state.rope, &mut state.qkv, cache, state.ctx);
            let cache = halves(&state.key_cache, &state.value_cache);
            let q = &state.qkv[..q_dim];
            let (scores, out) = (&mut state.scores, &mut state.att_out);
            self.attend_cached(isa, l, q, pos + 1, cache, state.ctx, scores, out);
            if let Some(w) = &layer.attn_sub_norm {
                rms_norm_in_place(&mut state.att_out, w, c.rms_eps);
            }
            traffic.record_input(&[3], &state.att_out);
            laps.mark(&mut state.profile, Phase::Attention);
            state
                .sparsifier
                .select(&state.att_out, sparsity.o, layer.wo.format())
                .map_err(nonfinite)?;
            laps.mark(&mut state.profile, Phase::Select);
            traffic.count(3, state.sparsifier.matvec(&layer.wo, &mut state.attn_proj));
            laps.mark(&mut state.profile, Phase::O);
            for (x, a) in state.x.iter_mut().zip(&state.attn_proj) {
                *x += a;
            }

            // Feed-forward block.
            rms_norm(&mut state.xb, &state.x, &layer.ffn_norm, c.rms_eps);
            traffic.record_input(&[4, 5], &state.xb);
            laps.mark(&mut state.profile, Phase::Elementwise);
            state
                .sparsifier
                .select(&state.xb, sparsity.gate_up, layer.w_gate_up.format())
                .map_err(nonfinite)?;
            laps.mark(&mut state.profile, Phase::Select);
            let read = state
                .sparsifier
                .matvec(&layer.w_gate_up, &mut state.gate_up);
            laps.mark(&mut state.profile, Phase::GateUp);
            traffic.count(4, share(read, c.d_ff, 2 * c.d_ff));
            traffic.count(5, share(read, c.d_ff, 2 * c.d_ff));
            let (gate, up) = state.gate_up.split_at_mut(c.d_ff);
            // One thread: eight lanes at a time it is ~1 µs here, less than a parallel region
            // costs (split over two workers with libm's exp it took 6 µs per SmolLM2 layer).
            gated_activation(c, layer, state.sparsifier.isa, gate, up);
            traffic.record_input(&[6], &state.gate_up[..c.d_ff]);
            laps.mark(&mut state.profile, Phase::Elementwise);
            state
                .sparsifier
                .select(
                    &state.gate_up[..c.d_ff],
                    sparsity.down,
                    layer.w_down.format(),
                )
                .map_err(nonfinite)?;
            laps.mark(&mut state.profile, Phase::Select);
            traffic.count(
                6,
                state.sparsifier.matvec(&layer.w_down, &mut state.ffn_out),
            );
            laps.mark(&mut state.profile, Phase::Down);
            for (x, f) in state.x.iter_mut().zip(&state.ffn_out) {
                *x += f;
            }
        }

        self.logits(state, sparsity, &mut traffic, &mut laps)?;
        if let Some(p) = state.profile.as_mut() {
            p.passes += 1;
        }
        state.traffic = traffic;
        Ok(())
    }

    /// The final norm and the lm_head: the next-token logits into `state.logits`.
    fn logits(
        &self,
        state: &mut RunState,
        sparsity: Sparsity,
        traffic: &mut Traffic,
        laps: &mut Laps,
    ) -> Result<(), ForwardError> {
        let c = &self.config;
        rms_norm(
            &mut state.xb,
            &state.x,
            &self.weights.output_norm,
            c.rms_eps,
        );
        traffic.record_input(&[7], &state.xb);
        laps.mark(&mut state.profile, Phase::Elementwise);
        let nonfinite = |source| ForwardError::NonFinite {
            layer: c.n_layers,
            source,
        };
        match &self.weights.lm_head {
            LmHead::Columns(head) => {
                state
                    .sparsifier
                    .select(&state.xb, sparsity.lm_head, head.format())
                    .map_err(nonfinite)?;
                laps.mark(&mut state.profile, Phase::Select);
                traffic.count(7, state.sparsifier.matvec(head, &mut state.logits));
            }
            LmHead::Rows(head) => {
                if sparsity.lm_head > 0.0 {
                    return Err(ForwardError::DenseHead);
                }
                state.head_input.quantize(&state.xb).map_err(nonfinite)?;
                laps.mark(&mut state.profile, Phase::Select);
                matvec_rows_q8(
                    state.sparsifier.isa,
                    head,
                    &state.head_input,
                    &mut state.logits,
                );
                let params = (head.d_out() * head.d_in()) as u64;
                traffic.count(7, (head.bytes() as u64, params));
            }
        }
        laps.mark(&mut state.profile, Phase::LmHead);
        Ok(())
    }

    /// The step's rotation of every rotated pair (pos·θ_i): once per step, shared by every head
    /// of every layer.
    fn rope_angles(&self, pos: usize, out: &mut Rope) {
        out.cos.clear();
        out.sin.clear();
        for &f in &self.rope_freqs {
            let (sin, cos) = (pos as f32 * f).sin_cos();
            out.cos.extend([cos, cos]);
            out.sin.extend([-sin, sin]);
        }
    }

    /// Rotate one token's queries and keys (its q/k/v product, in place) by `rope` and store its
    /// keys and values at `pos` of layer l's cache. The cache is head-major:
    /// [layer][kv head][position][head_dim].
    #[allow(clippy::too_many_arguments)]
    fn rope_and_store(
        &self,
        isa: Isa,
        l: usize,
        pos: usize,
        rope: &Rope,
        qkv: &mut [f32],
        (keys, values): (&mut [f16], &mut [f16]),
        ctx: usize,
    ) {
        let c = &self.config;
        let (hd, q_dim, kv_dim) = (
            c.head_dim,
            c.n_heads * c.head_dim,
            c.n_kv_heads * c.head_dim,
        );
        let (q, kv) = qkv.split_at_mut(q_dim);
        let (k, v) = kv.split_at_mut(kv_dim);
        self.rope(q, rope);
        self.rope(k, rope);
        let base = l * kv_dim * ctx;
        for (h, (k, v)) in k.chunks_exact(hd).zip(v.chunks_exact(hd)).enumerate() {
            let at = base + (h * ctx + pos) * hd;
            store_f16(isa, k, &mut keys[at..at + hd]);
            store_f16(isa, v, &mut values[at..at + hd]);
        }
    }

    /// Attention of one token's queries `q` over positions 0..`positions` of layer l's cache,
    /// into `out`.
    #[allow(clippy::too_many_arguments)]
    fn attend_cached(
        &self,
        isa: Isa,
        l: usize,
        q: &[f32],
        positions: usize,
        (keys, values): (&[f16], &[f16]),
        ctx: usize,
        scores: &mut [f32],
        out: &mut [f32],
    ) {
        let c = &self.config;
        let hd = c.head_dim;
        let kv_dim = c.n_kv_heads * hd;
        let cache = l * kv_dim * ctx..(l + 1) * kv_dim * ctx;
        let attention = Attention {
            q,
            keys: &keys[cache.clone()],
            values: &values[cache],
            positions,
            head_dim: hd,
            group: c.n_heads / c.n_kv_heads,
            scale: 1.0 / (hd as f32).sqrt(),
        };
        attend(isa, attention, scores, out);
    }

    /// Rotate each head's first rope_dim entries by the step's angles: consecutive pairs
    /// (llama), or entries i and i + rope_dim/2 (llama.cpp's NeoX form, which it uses for
    /// `bitnet`).
    fn rope(&self, v: &mut [f32], r: &Rope) {
        for head in v.chunks_exact_mut(self.config.head_dim) {
            if self.config.rope_neox {
                r.rotate_halves(&mut head[..r.cos.len()]);
            } else {
                r.rotate(&mut head[..r.cos.len()]);
            }
        }
    }
}

/// One step's RoPE rotation per entry: (a, b) -> (a·cos − b·sin, b·cos + a·sin) is
/// x·cos + swap(x)·sin with `cos` = (cos, cos) and `sin` = (−sin, sin) per pair (the same
/// roundings as the pairwise form: x − y is x + (−y) exactly). Eight entries at a time with a
/// pair swap the compiler turns into one shuffle: ~1 µs per SmolLM2 layer as pairs.
#[derive(Debug, Default)]
struct Rope {
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl Rope {
    /// The NeoX form: frequency i turns the pair (x[i], x[i + n/2]).
    fn rotate_halves(&self, x: &mut [f32]) {
        let (lo, hi) = x.split_at_mut(x.len() / 2);
        for (i, (a, b)) in lo.iter_mut().zip(hi.iter_mut()).enumerate() {
            let (c, s) = (self.cos[2 * i], self.sin[2 * i + 1]);
            let (x0, x1) = (*a, *b);
            *a = x0 * c - x1 * s;
            *b = x1 * c + x0 * s;
        }
    }

    fn rotate(&self, x: &mut [f32]) {
        let mut chunks = x.chunks_exact_mut(8);
        for ((x, c), s) in (&mut chunks)
            .zip(self.cos.chunks_exact(8))
            .zip(self.sin.chunks_exact(8))
        {
            let v: [f32; 8] = [x[0], x[1], x[2], x[3], x[4], x[5], x[6], x[7]];
            let swapped = [v[1], v[0], v[3], v[2], v[5], v[4], v[7], v[6]];
            for j in 0..8 {
                x[j] = v[j] * c[j] + swapped[j] * s[j];
            }
        }
        let done = x.len() / 8 * 8;
        for (j, pair) in x[done..].chunks_exact_mut(2).enumerate() {
            let (c, s) = (self.cos[done + 2 * j], self.sin[done + 2 * j + 1]);
            let (a, b) = (pair[0], pair[1]);
            pair[0] = a * c - b * s;
            pair[1] = b * c + a * s;
        }
    }
}

/// gate ← act(gate)·up, then BitNet's FFN sub-norm if the layer has one: the down
/// projection's input, in `gate`.
fn gated_activation(c: &ModelConfig, layer: &Layer, isa: Isa, gate: &mut [f32], up: &[f32]) {
    match c.ffn_activation {
        FfnActivation::Silu => activation::swiglu(isa, gate, up),
        FfnActivation::Relu2 => activation::relu2_glu(gate, up),
    }
    if let Some(w) = &layer.ffn_sub_norm {
        rms_norm_in_place(gate, w, c.rms_eps);
    }
}

/// The key and value caches as halves (stored as bits, see `RunState::key_cache`).
fn halves<'a>(keys: &'a [u16], values: &'a [u16]) -> (&'a [f16], &'a [f16]) {
    (keys.reinterpret_cast(), values.reinterpret_cast())
}

/// The key and value caches as halves, to write.
fn halves_mut<'a>(keys: &'a mut [u16], values: &'a mut [u16]) -> (&'a mut [f16], &'a mut [f16]) {
    (keys.reinterpret_cast_mut(), values.reinterpret_cast_mut())
}
