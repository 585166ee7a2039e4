//! The forward pass, written once: a batch of tokens (one when decoding, up to
//! [`PROMPT_BATCH`] of a prompt) through every layer and, when their predictions are wanted, the
//! final norm and the lm_head. Each projection's input goes through Top-K in
//! [`Projector::project`], which also counts its bytes and times it.

use qsparse_kernels::activation;
use qsparse_kernels::dense_q8::{matvec_rows_q8, matvec_rows_q8_batch, BlockQ8};
use qsparse_kernels::{Isa, NonFinite};

use super::attend::{attend, Attention, Scratch};
use super::kv_cache::KvCache;
use super::project::{Meter, Projector, PROMPT_BATCH};
use super::rope::Rope;
use super::{ForwardError, Model, RunState, Sparsity};
use crate::model::config::{FfnActivation, ModelConfig};
use crate::model::math::{rms_norm, rms_norm_in_place};
use crate::model::profile::{Laps, Phase};
use crate::model::proj::Stack;
use crate::model::weights::{Layer, LmHead};

/// The activations of up to [`PROMPT_BATCH`] tokens, one row per token.
#[derive(Debug)]
pub(super) struct Rows {
    /// The residual stream.
    x: Vec<f32>,
    /// A normed copy of it: the input of q/k/v, of gate/up and of the lm_head.
    xb: Vec<f32>,
    /// q, k, v of each token, as the stacked q/k/v product writes them.
    qkv: Vec<f32>,
    att_out: Vec<f32>,
    /// The attention and feed-forward outputs (one at a time), before the residual add.
    proj: Vec<f32>,
    /// gate then up (the stacked product); act(gate)·up is formed in the gate half.
    gate_up: Vec<f32>,
}

impl Rows {
    pub(super) fn new(c: &ModelConfig) -> Rows {
        let b = PROMPT_BATCH;
        let (q, kv) = (c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim);
        Rows {
            x: vec![0.0; b * c.d_model],
            xb: vec![0.0; b * c.d_model],
            qkv: vec![0.0; b * (q + 2 * kv)],
            att_out: vec![0.0; b * q],
            proj: vec![0.0; b * c.d_model],
            gate_up: vec![0.0; b * 2 * c.d_ff],
        }
    }
}

impl Model {
    /// Run `tokens` (1..=[`PROMPT_BATCH`]) at positions pos0.. through the model: their keys and
    /// values into the cache and, when `predict`, each one's next-token logits into row t of
    /// `state.logits`. Each token's traffic is left in `state.traffic[t]`; when profiling, a
    /// single-token pass is timed into `state.profile`, a batched one into
    /// `state.prompt_profile`.
    pub(super) fn pass(
        &self,
        state: &mut RunState,
        tokens: &[u32],
        pos0: usize,
        sparsity: Sparsity,
        predict: bool,
    ) -> Result<(), ForwardError> {
        let c = &self.config;
        let b = tokens.len();
        assert!((1..=PROMPT_BATCH).contains(&b), "a pass of {b} tokens");
        if let Some(&token) = tokens.iter().find(|&&t| t as usize >= c.vocab_size) {
            let vocab = c.vocab_size;
            return Err(ForwardError::BadToken { token, vocab });
        }
        let ctx = state.kv.ctx;
        if pos0 + b > ctx {
            let pos = pos0.max(ctx);
            return Err(ForwardError::ContextFull { pos, ctx });
        }
        let RunState {
            rows,
            kv,
            attention_scratch,
            ropes,
            sparsifier,
            selections,
            union,
            head_inputs,
            logits,
            traffic,
            profile,
            prompt_profile,
            layer_ratios,
            ..
        } = state;
        let laps = Laps::start(if b == 1 { profile } else { prompt_profile }.as_mut());
        let mut pass = Pass {
            model: self,
            isa: sparsifier.isa,
            sparsity,
            pos0,
            p: Projector {
                config: c,
                sparsifier: *sparsifier,
                selections: &mut selections[..b],
                union,
                meter: Meter::new(&mut traffic[..b], laps),
            },
            layer_ratios: layer_ratios.as_deref(),
            rows: rows.first(c, b),
            kv,
            ropes: &mut ropes[..b],
            attention_scratch,
        };
        pass.embed(tokens)?;
        for (l, layer) in self.weights.layers.iter().enumerate() {
            pass.layer(l, layer)
                .map_err(|source| ForwardError::NonFinite { layer: l, source })?;
        }
        if predict {
            let logits = &mut logits[..b * c.vocab_size];
            pass.head(logits, &mut head_inputs[..b])?;
        }
        pass.p.meter.finish();
        Ok(())
    }
}

/// One forward pass under way: the model, the tokens' rows and the run state's parts it works
/// on.
struct Pass<'a> {
    model: &'a Model,
    isa: Isa,
    sparsity: Sparsity,
    /// Per-layer ratios replacing a sparse pass's uniform ones.
    layer_ratios: Option<&'a [[f32; 4]]>,
    /// The first token's position.
    pos0: usize,
    p: Projector<'a>,
    rows: Batch<'a>,
    kv: &'a mut KvCache,
    ropes: &'a mut [Rope],
    attention_scratch: &'a mut Scratch,
}

/// The rows of the pass's tokens (see [`Rows`]).
struct Batch<'a> {
    x: &'a mut [f32],
    xb: &'a mut [f32],
    qkv: &'a mut [f32],
    att_out: &'a mut [f32],
    proj: &'a mut [f32],
    gate_up: &'a mut [f32],
}

impl Rows {
    /// The rows of the first b tokens.
    fn first(&mut self, c: &ModelConfig, b: usize) -> Batch<'_> {
        let (d, q_dim) = (c.d_model, c.n_heads * c.head_dim);
        Batch {
            x: &mut self.x[..b * d],
            xb: &mut self.xb[..b * d],
            qkv: &mut self.qkv[..b * Stack::Qkv.shape(c).1],
            att_out: &mut self.att_out[..b * q_dim],
            proj: &mut self.proj[..b * d],
            gate_up: &mut self.gate_up[..b * 2 * c.d_ff],
        }
    }
}

impl Pass<'_> {
    /// Each token's embedding into x, and its position's rotation.
    fn embed(&mut self, tokens: &[u32]) -> Result<(), ForwardError> {
        let m = self.model;
        let rows = self.rows.x.chunks_exact_mut(m.config.d_model);
        for (t, (&token, row)) in tokens.iter().zip(rows).enumerate() {
            m.weights.embedding.row(&m.file, token, row)?;
            let freqs = m.rope_freqs_for(self.kv.ctx);
            self.ropes[t].at(self.pos0 + t, freqs, m.config.rope_attn_factor);
        }
        self.p.meter.lap(Phase::Embed);
        Ok(())
    }

    /// One transformer block.
    fn layer(&mut self, l: usize, layer: &Layer) -> Result<(), NonFinite> {
        let c = &self.model.config;
        let (d, ff, q_dim) = (c.d_model, c.d_ff, c.n_heads * c.head_dim);
        let s = match self.layer_ratios.and_then(|r| r.get(l)) {
            Some(&ratios) if !self.sparsity.is_dense() => self.sparsity.with_layer(ratios),
            _ => self.sparsity,
        };
        let r = &mut self.rows;

        // Attention block: x += o(attention(rope(q), rope(k), v)) of norm(x).
        norm_rows(r.xb, r.x, &layer.attn_norm, c.rms_eps);
        self.p
            .project(Stack::Qkv, &layer.wqkv, r.xb, d, &s, r.qkv)?;
        self.attention(l, layer);
        let r = &mut self.rows;
        self.p
            .project(Stack::O, &layer.wo, r.att_out, q_dim, &s, r.proj)?;
        add(r.x, r.proj);

        // Feed-forward block: x += down(act(gate)·up) of norm(x).
        norm_rows(r.xb, r.x, &layer.ffn_norm, c.rms_eps);
        let gate_up = &layer.w_gate_up;
        self.p
            .project(Stack::GateUp, gate_up, r.xb, d, &s, r.gate_up)?;
        for row in r.gate_up.chunks_exact_mut(2 * ff) {
            let (gate, up) = row.split_at_mut(ff);
            gated_activation(c, layer, self.isa, gate, up);
        }
        let down = &layer.w_down;
        self.p
            .project(Stack::Down, down, r.gate_up, 2 * ff, &s, r.proj)?;
        add(r.x, r.proj);
        Ok(())
    }

    /// Layer l's attention for every token of the pass: its queries and keys rotated, its keys
    /// and values stored (Qwen3 norms each query and key head first), then its queries over the
    /// cache up to its own position (causal), into `att_out` (and BitNet's sub-norm there).
    fn attention(&mut self, l: usize, layer: &Layer) {
        let c = &self.model.config;
        let (hd, q_dim) = (c.head_dim, c.n_heads * c.head_dim);
        let r = &mut self.rows;
        let qkv_rows = r.qkv.chunks_exact_mut(Stack::Qkv.shape(c).1);
        for (t, qkv) in qkv_rows.enumerate() {
            let (q, kv_new) = qkv.split_at_mut(q_dim);
            let (k, v) = kv_new.split_at_mut(kv_new.len() / 2);
            if let (Some(qn), Some(kn)) = (&layer.q_norm, &layer.k_norm) {
                q.chunks_exact_mut(hd)
                    .for_each(|h| rms_norm_in_place(h, qn, c.rms_eps));
                k.chunks_exact_mut(hd)
                    .for_each(|h| rms_norm_in_place(h, kn, c.rms_eps));
            }
            self.ropes[t].apply(q, hd, c.rope_neox);
            self.ropes[t].apply(k, hd, c.rope_neox);
            self.kv.store(self.isa, l, self.pos0 + t, k, v);
        }
        let (keys, values) = self.kv.layer(l);
        let attention = Attention {
            q: r.qkv,
            q_stride: Stack::Qkv.shape(c).1,
            keys,
            values,
            positions: self.pos0 + 1,
            tokens: r.att_out.len() / q_dim,
            n_heads: c.n_heads,
            head_dim: hd,
            group: c.n_heads / c.n_kv_heads,
            scale: 1.0 / (hd as f32).sqrt(),
        };
        attend(
            self.isa,
            attention,
            self.kv.ctx,
            self.attention_scratch,
            r.att_out,
        );
        if let Some(w) = &layer.attn_sub_norm {
            r.att_out
                .chunks_exact_mut(q_dim)
                .for_each(|out| rms_norm_in_place(out, w, c.rms_eps));
        }
        self.p.meter.lap(Phase::Attention);
    }

    /// The final norm and the lm_head: each token's next-token logits into its row of
    /// `logits`, the head read once for all of them.
    fn head(&mut self, logits: &mut [f32], inputs: &mut [BlockQ8]) -> Result<(), ForwardError> {
        let (m, c) = (self.model, &self.model.config);
        let r = &mut self.rows;
        norm_rows(r.xb, r.x, &m.weights.output_norm, c.rms_eps);
        let nonfinite = |source| ForwardError::NonFinite {
            layer: c.n_layers,
            source,
        };
        let s = &self.sparsity;
        let logits_of = match &m.weights.lm_head {
            LmHead::Columns(head) => self
                .p
                .project(Stack::LmHead, head, r.xb, c.d_model, s, logits)
                .map_err(nonfinite),
            LmHead::Rows(_) if s.lm_head > 0.0 => Err(ForwardError::DenseHead),
            LmHead::Rows(head) => {
                // A row-major Q8 head takes every input, quantized in blocks of 32.
                let meter = &mut self.p.meter;
                meter.lap(Phase::Elementwise);
                let read = (head.bytes() as u64, (head.d_out() * head.d_in()) as u64);
                let tokens = r.xb.chunks_exact(c.d_model).zip(&mut *inputs);
                for ((x, q), traffic) in tokens.zip(meter.traffic.iter_mut()) {
                    traffic.record_input(Stack::LmHead, x);
                    q.quantize(x).map_err(nonfinite)?;
                    traffic.count(c, Stack::LmHead, read);
                }
                meter.lap(Phase::Select);
                match &*inputs {
                    [one] => matvec_rows_q8(self.isa, head, one, logits),
                    many => matvec_rows_q8_batch(self.isa, head, many, logits),
                }
                meter.lap(Phase::LmHead);
                Ok(())
            }
        };
        logits_of?;
        if let Some(bias) = &m.weights.output_bias {
            logits
                .chunks_exact_mut(c.vocab_size)
                .for_each(|row| add(row, bias));
        }
        Ok(())
    }
}

/// gate ← act(gate)·up, then BitNet's FFN sub-norm if the layer has one: the down
/// projection's input, in `gate`. One thread: eight lanes at a time it is ~1 µs a SmolLM2
/// layer, less than a parallel region costs.
fn gated_activation(c: &ModelConfig, layer: &Layer, isa: Isa, gate: &mut [f32], up: &[f32]) {
    match c.ffn_activation {
        FfnActivation::Silu => activation::swiglu(isa, gate, up),
        FfnActivation::Relu2 => activation::relu2_glu(gate, up),
    }
    if let Some(w) = &layer.ffn_sub_norm {
        rms_norm_in_place(gate, w, c.rms_eps);
    }
}

/// RMSNorm of each row of `x` (rows of `w.len()`) into the same row of `out`.
fn norm_rows(out: &mut [f32], x: &[f32], w: &[f32], eps: f32) {
    for (o, x) in out.chunks_exact_mut(w.len()).zip(x.chunks_exact(w.len())) {
        rms_norm(o, x, w, eps);
    }
}

/// The residual add: x += y.
fn add(x: &mut [f32], y: &[f32]) {
    for (x, y) in x.iter_mut().zip(y) {
        *x += y;
    }
}
