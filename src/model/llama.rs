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

use std::sync::atomic::{AtomicBool, Ordering};

use half::f16;
use half::slice::HalfBitsSliceExt;
use qsparse_kernels::activation;
use qsparse_kernels::attention::{self, store_f16, KvHead};
use qsparse_kernels::dense_q8::{matvec_rows_q8, BlockQ8};
use qsparse_kernels::outliers;
use qsparse_kernels::{
    check_finite, gather_matvec, keep_count, largest_f32, quantize_with, topk_f32, topk_i8, Format,
    Input, Isa, NonFinite, Sparse,
};

use super::config::ModelConfig;
use super::math::rms_norm;
use super::profile::{Laps, Phase, Profile};
use super::weights::{Linear, LmHead, WeightFormat, Weights};
use crate::gguf::{DequantError, GgufFile};

mod prefill;
pub use prefill::PROMPT_BATCH;

/// Sparsity ratio S per projection input (K = round((1−S)·d) entries kept).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sparsity {
    pub qkv: f32,
    pub o: f32,
    pub gate_up: f32,
    pub down: f32,
    /// The lm_head input; 0 (dense) unless asked for.
    pub lm_head: f32,
}

impl Sparsity {
    /// The same ratio for every projection (the lm_head stays dense).
    pub fn uniform(s: f32) -> Sparsity {
        Sparsity {
            qkv: s,
            o: s,
            gate_up: s,
            down: s,
            lm_head: 0.0,
        }
    }

    pub fn dense() -> Sparsity {
        Sparsity::uniform(0.0)
    }
}

/// Weight bytes read and weights used by one forward pass, per projection kind, and how sparse
/// the projections' inputs already were (exact zeros, e.g. after a ReLU) before any Top-K.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Traffic {
    pub bytes: [u64; 8],
    pub active_params: [u64; 8],
    /// Entries of the projection inputs that were exactly zero, and entries in all.
    pub zero_inputs: [u64; 8],
    pub inputs: [u64; 8],
}

impl Traffic {
    pub const NAMES: [&'static str; 8] = ["q", "k", "v", "o", "gate", "up", "down", "lm_head"];

    pub fn total_bytes(&self) -> u64 {
        self.bytes.iter().sum()
    }

    pub fn total_active_params(&self) -> u64 {
        self.active_params.iter().sum()
    }

    fn count(&mut self, slot: usize, (bytes, params): (u64, u64)) {
        self.bytes[slot] += bytes;
        self.active_params[slot] += params;
    }

    /// Count the exact zeros of `x`, the input of projection kinds `slots`.
    fn record_input(&mut self, slots: &[usize], x: &[f32]) {
        // As a sum of 0/1, which vectorizes (a filtered count did not: 169 against 69 ns for 576
        // entries, hot).
        let zeros = u64::from(x.iter().map(|&v| u32::from(v == 0.0)).sum::<u32>());
        for &s in slots {
            self.zero_inputs[s] += zeros;
            self.inputs[s] += x.len() as u64;
        }
    }

    /// Add `other`'s input counts (zeros and entries) to these, summing over forward passes.
    pub fn add_inputs(&mut self, other: &Traffic) {
        for k in 0..self.inputs.len() {
            self.zero_inputs[k] += other.zero_inputs[k];
            self.inputs[k] += other.inputs[k];
        }
    }

    /// Fraction of all projection inputs that were exactly zero before Top-K.
    pub fn natural_sparsity(&self) -> f64 {
        let n: u64 = self.inputs.iter().sum();
        self.zero_inputs.iter().sum::<u64>() as f64 / n.max(1) as f64
    }
}

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

/// The selected (and for int8 weights, quantized) input of a projection.
#[derive(Debug, Default)]
struct Selection {
    int: Sparse<i8>,
    float: Sparse<f32>,
    scale: f32,
    quantized: Vec<i8>,
    scratch: Vec<f32>,
    /// Int8 path: the largest activations, kept out of the quantization (index, value).
    outliers: Sparse<f32>,
    /// `largest_f32`'s working lists.
    outlier_scratch: outliers::Scratch,
    /// Int8 path with outliers against I8 weights: the kept int8 entries and the outliers in one
    /// int16 input (`int` then is not filled).
    wide: Sparse<i16>,
    /// Whether the last selection filled `wide`.
    is_wide: bool,
}

/// The outliers of an int16 input at the int8 scale γ/127: round(127·v/γ), within the range
/// `select` chose γ for (at most ±32767). A dense input (all d slots) holds the outliers' slots
/// as zeros: they take the values there. A sparse one does not hold them: they follow its
/// entries (the product does not need ascending indices; merging them into order made SmolLM2's
/// S = 0.5 products ~3% faster and the selection about as much slower, one profile).
fn add_outliers(out: &mut Sparse<i16>, d: usize, outliers: &Sparse<f32>, gamma: f32) {
    let inv = if gamma > 0.0 { 127.0 / gamma } else { 0.0 };
    // Round half to even by adding and subtracting 1.5·2^23 (exact within ±2^22): the same as
    // `round_ties_even`, which is a libm call on baseline x86-64.
    let wide = |v: f32| {
        let r = (v * inv).clamp(-32767.0, 32767.0);
        ((r + 12_582_912.0) - 12_582_912.0) as i16
    };
    let dense = out.len() == d;
    for (&i, &v) in outliers.indices.iter().zip(&outliers.values) {
        if dense {
            out.values[i as usize] = wide(v);
        } else {
            out.indices.push(i);
            out.values.push(wide(v));
        }
    }
}

/// Default number of activation outliers kept out of int8 quantization.
pub const DEFAULT_ACTIVATION_OUTLIERS: usize = 32;

/// Chooses K inputs per projection; owns the reusable buffers so no step allocates.
#[derive(Debug)]
struct Sparsifier {
    isa: Isa,
    format: WeightFormat,
    outliers: usize,
    sel: Selection,
}

impl Sparsifier {
    /// Select the inputs of `x` to keep at sparsity `s`, for a product with `target` weights
    /// (int8 activations take their outliers as int16 against int8 weights, in f32 against others).
    fn select(&mut self, x: &[f32], s: f32, target: Format) -> Result<(), NonFinite> {
        let k = keep_count(x.len(), s);
        let sel = &mut self.sel;
        match self.format {
            WeightFormat::Int8 => {
                // The m largest magnitudes are kept out of the int8 quantization; they are part
                // of the K kept. The rest is quantized by its own absmax γ (raised only if an
                // outlier would pass the int16 range below), the outliers' own slots become 0.
                let m = self.outliers.min(k);
                if m == 0 {
                    check_finite(x)?;
                }
                let rest = largest_f32(self.isa, x, m, &mut sel.outlier_scratch, &mut sel.outliers);
                // NaN and ±inf order above every finite magnitude, so with m > 0 a non-finite
                // input puts one among the outliers: no separate pass over x is needed.
                if sel.outliers.values.iter().any(|v| !v.is_finite()) {
                    check_finite(x)?;
                }
                let top = sel
                    .outliers
                    .values
                    .iter()
                    .fold(0.0f32, |a, v| a.max(v.abs()));
                // Outliers reach at most ±range at this scale, so that a row's int32 sum holds:
                // m·127·range + (k − m)·127·127 <= i32::MAX.
                let range = ((i32::MAX as usize / 127).saturating_sub((k - m) * 127) / m.max(1))
                    .clamp(127, 32767) as f32;
                let gamma = rest.max(top * (127.0 / range));
                sel.quantized.resize(x.len(), 0);
                quantize_with(self.isa, x, gamma, &mut sel.quantized);
                for &i in &sel.outliers.indices {
                    sel.quantized[i as usize] = 0;
                }
                sel.scale = gamma / 127.0;
                sel.is_wide = m > 0 && target == Format::I8;
                // Dense: every slot, the outliers' zeros too (they add nothing; `topk_i8` keeps
                // all d without a threshold pass). Int16 inputs are written straight from the
                // int8 ones (no int8 list in between).
                let kept = if k == x.len() { k } else { k - m };
                if sel.is_wide {
                    topk_i8(self.isa, &sel.quantized, kept, &mut sel.wide);
                } else {
                    topk_i8(self.isa, &sel.quantized, kept, &mut sel.int);
                }
                if sel.is_wide {
                    add_outliers(&mut sel.wide, x.len(), &sel.outliers, gamma);
                }
            }
            WeightFormat::F32 | WeightFormat::F16 => {
                check_finite(x)?;
                topk_f32(self.isa, x, k, &mut sel.scratch, &mut sel.float);
            }
        }
        Ok(())
    }

    /// y = W·x_selected; returns the bytes of weights read.
    fn matvec(&self, w: &Linear, y: &mut [f32]) -> (u64, u64) {
        let view = w.view();
        let (sel, o) = (&self.sel, &self.sel.outliers);
        match self.format {
            WeightFormat::Int8 => {
                debug_assert_eq!(sel.is_wide, !o.is_empty() && view.format() == Format::I8);
                let input = if sel.is_wide {
                    // One integer pass, the outliers as int16 at the same scale.
                    Input::I16 {
                        x: &sel.wide,
                        scale: sel.scale,
                    }
                } else if o.is_empty() {
                    Input::I8 {
                        x: &sel.int,
                        scale: sel.scale,
                    }
                } else {
                    Input::Mixed {
                        x: &sel.int,
                        scale: sel.scale,
                        exact: o,
                    }
                };
                gather_matvec(self.isa, &view, input, y);
            }
            _ => gather_matvec(self.isa, &view, Input::F32(&sel.float), y),
        }
        sel.read(self.format, w)
    }
}

impl Selection {
    /// The weight bytes and weights a product with `w` reads for this selection.
    fn read(&self, format: WeightFormat, w: &Linear) -> (u64, u64) {
        let kept = match format {
            WeightFormat::Int8 if self.is_wide => self.wide.len(),
            // Dense passes hold the outliers' (zero) int8 slots as well: count them once.
            WeightFormat::Int8 => (self.int.len() + self.outliers.len()).min(w.d_in()),
            _ => self.float.len(),
        };
        (w.view().bytes_read(kept) as u64, (kept * w.d_out()) as u64)
    }
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
                outliers: DEFAULT_ACTIVATION_OUTLIERS,
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
            activation::swiglu(state.sparsifier.isa, gate, up);
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

    /// Rotate consecutive pairs of each head's first rope_dim entries by the step's angles.
    fn rope(&self, v: &mut [f32], r: &Rope) {
        for head in v.chunks_exact_mut(self.config.head_dim) {
            r.rotate(&mut head[..r.cos.len()]);
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

/// One layer's attention inputs for the current token: its rotated queries and the layer's key
/// and value cache, head-major (each key/value head's positions one after another, `keys.len() /
/// n_kv` values per head), of which positions 0..`positions` are filled. Head-major, a head's keys
/// are one sequential stream: position-major (all heads of a position together), each head read
/// 128 of every 384 bytes, and as the weights streaming between two layers' attention evict the
/// cache, the kernel waited on strided misses. SmolLM2's attention phase (`bench --profile`, S =
/// 0.5, two interleaved pairs) went from 358-364 to 326-328 µs per token at ~33 positions and
/// from 738-896 to 641-658 at ~190.
struct Attention<'a> {
    q: &'a [f32],
    keys: &'a [f16],
    values: &'a [f16],
    positions: usize,
    head_dim: usize,
    /// Query heads per key/value head.
    group: usize,
    scale: f32,
}

/// Below this many multiply-adds per layer (heads × positions × head_dim), attention stays on one
/// thread (SmolLM2: below 15 positions). With the query heads split evenly, 8 Ki against 64 Ki:
/// the attention phase took 337-418 µs per token against 419-440 at 16 + 64 positions (3 pairs
/// of `qsparse bench --profile`); 0 and 8 Ki were alike, 32 Ki slower.
const PARALLEL_ATTENTION_MIN: usize = 8 * 1024;

/// Scaled dot-product attention of every query head over the cache, into `out`; `scores` holds
/// one row of ctx scores per query head. The kernel takes a key/value head with the query heads
/// that share it (reading each cached key and value once for all of them); long contexts split
/// the query heads evenly across the rayon pool, a key/value head's group split between two
/// workers where a share ends inside it (each query head's arithmetic is the same either way).
fn attend(isa: Isa, a: Attention, scores: &mut [f32], out: &mut [f32]) {
    let (hd, group, positions) = (a.head_dim, a.group, a.positions);
    let n_q = a.q.len() / hd;
    // Cache rows per key/value head.
    let rows = a.keys.len() / (n_q / group) / hd;
    let ctx = scores.len() / n_q;
    // Query heads q0 .. q0 + out.len() / hd, by key/value head.
    let heads = |q0: usize, scores: &mut [f32], out: &mut [f32]| {
        let q1 = q0 + out.len() / hd;
        let mut q = q0;
        while q < q1 {
            let kvh = q / group;
            let end = ((kvh + 1) * group).min(q1);
            let head = kvh * rows * hd..(kvh * rows + positions) * hd;
            let h = KvHead {
                queries: &a.q[q * hd..end * hd],
                keys: &a.keys[head.clone()],
                values: &a.values[head],
                stride: hd,
                offset: 0,
                head_dim: hd,
                scale: a.scale,
            };
            let (s, o) = (
                &mut scores[(q - q0) * ctx..(end - q0) * ctx],
                &mut out[(q - q0) * hd..(end - q0) * hd],
            );
            attention::attend(isa, h, s, ctx, o);
            q = end;
        }
    };
    let threads = rayon::current_num_threads();
    if a.q.len() * positions < PARALLEL_ATTENTION_MIN || threads == 1 {
        heads(0, scores, out);
    } else {
        // Split by key/value heads (3 on 2 workers for SmolLM2), one worker did two thirds of
        // the work: at ~1000 positions the attention phase took 3.6-3.7 ms per token against
        // 2.9-3.3 split evenly by query heads (3 interleaved pairs of `qsparse bench --profile`).
        use rayon::prelude::*;
        let per = n_q.div_ceil(threads);
        out.par_chunks_mut(per * hd)
            .zip(scores.par_chunks_mut(per * ctx))
            .enumerate()
            .for_each(|(c, (o, s))| heads(c * per, s, o));
    }
}

/// Runs `f` (a forward step) on a rayon pool worker, with the pool's other workers looking for
/// its parallel work meanwhile.
///
/// A step has ~150 parallel regions. Started from outside the rayon pool, each one hands its work
/// to sleeping workers and waits (10-25 µs here, `region_cost` example); run on a pool worker, a
/// region keeps one half on the calling thread and wakes one helper (~2 µs after a gap of 20 µs
/// or more). So the whole step moves into the pool once. Measured: int8 dense decode 66-83 tok/s
/// (median 77) against 61-71 (median 66), 6 pairs.
///
/// On the worker, the pool's other workers stay awake for the step's length, looking for its
/// parallel work (`keep_stealing`): between two regions (the serial stretches of norms, selection
/// and attention) a worker would otherwise fall asleep and take ~2 µs to wake for the next one.
/// Measured: dense decode faster in 6 of 6 interleaved pairs (median 72 against 62 tok/s), S =
/// 0.5 in 4 of 6.
fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_none() {
        return rayon::scope(|_| on_pool(f));
    }
    /// Ends the helpers' spinning when the step returns, and when it panics: rayon's join waits
    /// for the other half before it propagates a panic, so without this a panic would hang.
    struct Done<'a>(&'a AtomicBool);
    impl Drop for Done<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Release);
        }
    }
    let done = AtomicBool::new(false);
    let (result, ()) = rayon::join(
        || {
            let _done = Done(&done);
            f()
        },
        || keep_stealing(&done, rayon::current_num_threads().saturating_sub(1)),
    );
    result
}

/// Runs on `workers` pool threads (one join per extra worker, no allocation): each one executes
/// pending pool work as it appears and spins in between, until `done`. A job that is never
/// stolen runs after `done` on the joining thread and returns at once.
fn keep_stealing(done: &AtomicBool, workers: usize) {
    match workers {
        0 => {}
        1 => {
            while !done.load(Ordering::Acquire) {
                if rayon::yield_now() != Some(rayon::Yield::Executed) {
                    std::hint::spin_loop();
                }
            }
        }
        n => {
            rayon::join(|| keep_stealing(done, 1), || keep_stealing(done, n - 1));
        }
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

/// The part of a stacked product's traffic that belongs to `rows` of its `total` rows.
fn share((bytes, params): (u64, u64), rows: usize, total: usize) -> (u64, u64) {
    (
        bytes * rows as u64 / total as u64,
        params * rows as u64 / total as u64,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_non_finite_activation_is_named_by_its_first_position() {
        for (format, outliers) in [
            (WeightFormat::Int8, 32),
            (WeightFormat::Int8, 0),
            (WeightFormat::F32, 0),
        ] {
            for isa in qsparse_kernels::Isa::available() {
                let mut sp = Sparsifier {
                    isa,
                    format,
                    outliers,
                    sel: Selection::default(),
                };
                let mut x: Vec<f32> = (0..576).map(|i| (i as f32 * 0.37).sin()).collect();
                for s in [0.0, 0.5] {
                    for target in [Format::I8, Format::T2] {
                        assert!(sp.select(&x, s, target).is_ok());
                    }
                }
                x[500] = f32::NEG_INFINITY;
                x[501] = f32::NAN;
                for s in [0.0, 0.5] {
                    let e = sp.select(&x, s, Format::I8).unwrap_err();
                    assert_eq!(e.index, 500, "{format:?} outliers {outliers} {isa:?} S={s}");
                }
                x[7] = f32::NAN;
                let e = sp.select(&x, 0.5, Format::T2).unwrap_err();
                assert_eq!((e.index, e.value.is_nan()), (7, true));
            }
        }
    }

    #[test]
    fn a_reused_selection_equals_a_fresh_one_whatever_came_before() {
        let fresh = || Sparsifier {
            isa: Isa::best(),
            format: WeightFormat::Int8,
            outliers: 4,
            sel: Selection::default(),
        };
        let x = |d: usize, seed: f32| -> Vec<f32> {
            (0..d)
                .map(|i| (i as f32 * 0.37 + seed).sin() * (1.0 + (i % 7) as f32))
                .collect()
        };
        let mut reused = fresh();
        // Dense and sparse passes of two widths, into the int16 input (I8 weights) and the int8
        // one (T2 weights), in an order where each buffer holds something else before.
        for (d, s, target, seed) in [
            (40, 0.5, Format::I8, 0.1),
            (40, 0.0, Format::I8, 0.2),
            (17, 0.0, Format::I8, 0.3),
            (40, 0.0, Format::T2, 0.4),
            (17, 0.5, Format::I8, 0.5),
            (40, 0.5, Format::T2, 0.6),
            (40, 0.0, Format::I8, 0.7),
            (17, 0.5, Format::T2, 0.8),
        ] {
            let x = x(d, seed);
            let mut new = fresh();
            new.select(&x, s, target).unwrap();
            reused.select(&x, s, target).unwrap();
            let what = format!("d={d} S={s} {target:?}");
            assert_eq!(reused.sel.is_wide, new.sel.is_wide, "{what}");
            assert_eq!(reused.sel.is_wide, target == Format::I8, "{what}");
            assert_eq!(
                reused.sel.scale.to_bits(),
                new.sel.scale.to_bits(),
                "{what}"
            );
            assert_eq!(reused.sel.outliers, new.sel.outliers, "{what}");
            if new.sel.is_wide {
                assert_eq!(reused.sel.wide, new.sel.wide, "{what}");
                let want = if s == 0.0 { d } else { keep_count(d, s) };
                assert_eq!(new.sel.wide.len(), want, "{what}");
            } else {
                assert_eq!(reused.sel.int, new.sel.int, "{what}");
            }
        }
    }

    #[test]
    fn outliers_take_int16_values_rounded_half_to_even() {
        let wide = Sparse {
            indices: (0..40u32).collect(),
            values: (0..40).map(|i| (i as i8) - 20).collect::<Vec<i8>>(),
        };
        let outliers = Sparse {
            indices: vec![7, 16],
            values: vec![1000.0f32, -2000.5],
        };
        // Rounding: 1000·127/8 = 15875 exactly, −2000.5·127/8 = −31757.9375 -> −31758.
        let mut out = Sparse::default();
        widen(&wide, 40, &outliers, 8.0, &mut out);
        assert_eq!((out.values[7], out.values[16]), (15875, -31758));
        // Ties to even, as `round_ties_even` (γ = 127: the values themselves).
        let ties = Sparse {
            indices: vec![2, 3],
            values: vec![2.5f32, -3.5],
        };
        widen(&wide, 40, &ties, 127.0, &mut out);
        assert_eq!((out.values[2], out.values[3]), (2, -4));
    }

    /// The executor's int16 input from an int8 selection: its entries as `topk_i8` writes them
    /// (all d slots when dense), then the outliers.
    fn widen(
        int: &Sparse<i8>,
        d: usize,
        outliers: &Sparse<f32>,
        gamma: f32,
        out: &mut Sparse<i16>,
    ) {
        out.indices.clone_from(&int.indices);
        out.values.clear();
        out.values.extend(int.values.iter().map(|&v| i16::from(v)));
        add_outliers(out, d, outliers, gamma);
    }

    #[test]
    fn outliers_merge_into_the_int16_input_once_each() {
        // A dense selection holds the outliers' slots as zeros; a sparse one does not hold them.
        let outliers = Sparse {
            indices: vec![1, 4],
            values: vec![-30.0f32, 12.5],
        };
        let gamma = 2.0; // scale 127/2
        for (int, want_idx, want_val) in [
            (
                Sparse {
                    indices: vec![0, 1, 2, 3, 4, 5],
                    values: vec![5i8, 0, -7, 127, 0, 1],
                },
                vec![0u32, 1, 2, 3, 4, 5],
                vec![5i16, -1905, -7, 127, 794, 1],
            ),
            (
                Sparse {
                    indices: vec![2, 5],
                    values: vec![-7i8, 1],
                },
                vec![2, 5, 1, 4],
                vec![-7, 1, -1905, 794],
            ),
        ] {
            let mut out = Sparse::default();
            widen(&int, 6, &outliers, gamma, &mut out);
            assert_eq!(out.indices, want_idx);
            assert_eq!(out.values, want_val);
        }
    }

    /// Splitting the query heads across workers (a key/value head's group between two of them)
    /// changes no bit: each query head is computed the same way whoever runs it.
    #[test]
    fn parallel_attention_equals_the_serial_one() {
        let mut seed = 3u32;
        let mut rnd = || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as f32 / (1 << 23) as f32 - 1.0
        };
        // SmolLM2's heads: 9 query heads over 3 key/value heads of 64; enough positions to go
        // parallel.
        let (hd, n_q, n_kv, positions, ctx) = (64, 9, 3, 300, 320);
        let kv_dim = n_kv * hd;
        let q: Vec<f32> = (0..n_q * hd).map(|_| rnd()).collect();
        let mut half = || f16::from_f32(rnd());
        // Head-major, ctx rows per head of which `positions` are filled.
        let keys: Vec<f16> = (0..ctx * kv_dim).map(|_| half()).collect();
        let values: Vec<f16> = (0..ctx * kv_dim).map(|_| half()).collect();
        assert!(q.len() * positions >= PARALLEL_ATTENTION_MIN);
        let run = |threads: usize| {
            let (mut scores, mut out) = (vec![0f32; n_q * ctx], vec![0f32; n_q * hd]);
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let a = Attention {
                q: &q,
                keys: &keys,
                values: &values,
                positions,
                head_dim: hd,
                group: n_q / n_kv,
                scale: 0.125,
            };
            pool.install(|| attend(Isa::best(), a, &mut scores, &mut out));
            out
        };
        let serial = run(1);
        assert!(serial.iter().all(|v| v.is_finite()));
        for threads in [2, 3, 4] {
            let par = run(threads);
            assert!(
                serial
                    .iter()
                    .zip(&par)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{threads} threads"
            );
        }
    }
}
