//! Prompt evaluation in batches: up to [`PROMPT_BATCH`] prompt tokens go through each layer
//! together, so each projection reads its weights once for all of them
//! ([`gather_matvec_batch`]) instead of once per token. Decoding is one token at a time by nature;
//! a prompt is not, and token by token it ran at decode speed (memory-bound).
//!
//! Each token keeps its own selection (Top-K, outliers, int8 scale): the batch reads the union of
//! the tokens' kept columns, a token's value being 0 where it did not keep a column. The KV cache
//! entries come out bit for bit as token-by-token evaluation writes them (integer sums are
//! exact, float sums run each token's FMA chains in its own column order; everything else is the
//! same per-token code), which the tests check on logits. Ternary weights, which the batched
//! kernel does not take, run the tokens' products one after another: the same results, without
//! the saving.

use qsparse_kernels::dense_q8::matvec_rows_q8_batch;
use qsparse_kernels::{gather_matvec_batch, BatchInput, MAX_BATCH};

use super::*;

/// Prompt tokens per batched step.
pub const PROMPT_BATCH: usize = MAX_BATCH;

/// A batch's activations (token-major rows) and selections; allocated once with the run state.
#[derive(Debug)]
pub(super) struct BatchState {
    x: Vec<f32>,
    xb: Vec<f32>,
    qkv: Vec<f32>,
    att_out: Vec<f32>,
    /// The attention and feed-forward outputs (one at a time), before the residual add.
    proj: Vec<f32>,
    gate_up: Vec<f32>,
    ropes: Vec<Rope>,
    selections: Vec<Selection>,
    union: Union,
    /// What each token's pass read, as a single-token pass counts it.
    traffic: [Traffic; PROMPT_BATCH],
    /// Each token's next-token logits ([`Model::forward_batch`]; sized on first use).
    logits: Vec<f32>,
    /// Each token's quantized input of a row-major Q8 lm_head.
    head_inputs: Vec<BlockQ8>,
}

impl BatchState {
    pub(super) fn new(config: &ModelConfig) -> BatchState {
        let b = PROMPT_BATCH;
        let q = config.n_heads * config.head_dim;
        let kv = config.n_kv_heads * config.head_dim;
        BatchState {
            x: vec![0.0; b * config.d_model],
            xb: vec![0.0; b * config.d_model],
            qkv: vec![0.0; b * (q + 2 * kv)],
            att_out: vec![0.0; b * q],
            proj: vec![0.0; b * config.d_model],
            gate_up: vec![0.0; b * 2 * config.d_ff],
            ropes: (0..b).map(|_| Rope::default()).collect(),
            selections: (0..b).map(|_| Selection::default()).collect(),
            union: Union::default(),
            traffic: [Traffic::default(); PROMPT_BATCH],
            logits: Vec::new(),
            head_inputs: vec![BlockQ8::default(); b],
        }
    }
}

/// The batched kernel's input: the union of the tokens' kept columns with each token's value.
#[derive(Debug, Default)]
struct Union {
    columns: Vec<u32>,
    /// Int8-path values (int16 with outliers) and each token's scale γ/127.
    ints: Vec<i16>,
    scales: Vec<f32>,
    /// Float-path values.
    floats: Vec<f32>,
    /// Column-major [d_in][batch] scratch, 0 where a token did not keep the column.
    dense_ints: Vec<i16>,
    dense_floats: Vec<f32>,
    /// Plain int8 values (against ternary weights) and their scratch.
    int8s: Vec<i8>,
    dense_int8s: Vec<i8>,
}

impl Union {
    /// From int8-path selections (int16 with outliers, or plain int8).
    fn build_int(&mut self, selections: &[Selection], d_in: usize) {
        self.scales.clear();
        self.scales.extend(selections.iter().map(|sel| sel.scale));
        let scatter = |t: usize, sel: &Selection, dense: &mut [i16], b: usize| {
            if sel.is_wide {
                for (&j, &v) in sel.wide.indices.iter().zip(&sel.wide.values) {
                    dense[j as usize * b + t] = v;
                }
            } else {
                for (&j, &v) in sel.int.indices.iter().zip(&sel.int.values) {
                    dense[j as usize * b + t] = i16::from(v);
                }
            }
        };
        let (dense, values) = (&mut self.dense_ints, &mut self.ints);
        union_of(selections, d_in, dense, &mut self.columns, values, scatter);
    }

    /// From int8-path selections without outliers (plain int8 values, for ternary weights).
    fn build_int8(&mut self, selections: &[Selection], d_in: usize) {
        self.scales.clear();
        self.scales.extend(selections.iter().map(|sel| sel.scale));
        let scatter = |t: usize, sel: &Selection, dense: &mut [i8], b: usize| {
            for (&j, &v) in sel.int.indices.iter().zip(&sel.int.values) {
                dense[j as usize * b + t] = v;
            }
        };
        let (dense, values) = (&mut self.dense_int8s, &mut self.int8s);
        union_of(selections, d_in, dense, &mut self.columns, values, scatter);
    }

    /// From float-path selections. The columns come out ascending, each token's own order, so
    /// that its FMA chains run as in its own product.
    fn build_float(&mut self, selections: &[Selection], d_in: usize) {
        let scatter = |t: usize, sel: &Selection, dense: &mut [f32], b: usize| {
            for (&j, &v) in sel.float.indices.iter().zip(&sel.float.values) {
                dense[j as usize * b + t] = v;
            }
        };
        let (dense, values) = (&mut self.dense_floats, &mut self.floats);
        union_of(selections, d_in, dense, &mut self.columns, values, scatter);
    }
}

/// The columns (ascending) where some token's value is not 0, and their values column by column
/// (`values[p · b + t]`), through a column-major scratch that `scatter(t, selection, dense, b)`
/// fills with token t's kept values. A column whose values are all 0 adds nothing to any sum.
fn union_of<T: Copy + Default + PartialEq>(
    selections: &[Selection],
    d_in: usize,
    dense: &mut Vec<T>,
    columns: &mut Vec<u32>,
    values: &mut Vec<T>,
    scatter: impl Fn(usize, &Selection, &mut [T], usize),
) {
    let b = selections.len();
    dense.clear();
    dense.resize(d_in * b, T::default());
    for (t, sel) in selections.iter().enumerate() {
        scatter(t, sel, dense, b);
    }
    columns.clear();
    values.clear();
    for (j, column) in dense.chunks_exact(b).enumerate() {
        if column.iter().any(|&v| v != T::default()) {
            columns.push(j as u32);
            values.extend_from_slice(column);
        }
    }
}

/// The per-token state a batched projection works on.
struct Batch<'a> {
    selections: &'a mut [Selection],
    union: &'a mut Union,
    traffic: &'a mut [Traffic],
}

impl Sparsifier {
    /// For every token, select its input (the first d_in entries of row t of `xs`, rows of
    /// `stride`) and multiply: ys (token-major rows of d_out) = W·x_t. Each token's `traffic`
    /// counts its input and its reads of `w`, split over projection `slots` (slot, rows of w).
    #[allow(clippy::too_many_arguments)]
    fn project_batch(
        &mut self,
        w: &Linear,
        xs: &[f32],
        stride: usize,
        s: f32,
        batch: &mut Batch<'_>,
        slots: &[(usize, usize)],
        ys: &mut [f32],
    ) -> Result<(), NonFinite> {
        let d = w.d_in();
        // The projection kinds reading this input (at most q, k, v).
        let mut ids = [0; 3];
        for (id, &(slot, _)) in ids.iter_mut().zip(slots) {
            *id = slot;
        }
        for ((x, sel), traffic) in xs
            .chunks_exact(stride)
            .zip(batch.selections.iter_mut())
            .zip(batch.traffic.iter_mut())
        {
            traffic.record_input(&ids[..slots.len()], &x[..d]);
            std::mem::swap(&mut self.sel, sel);
            let r = self.select(&x[..d], s, w.format());
            std::mem::swap(&mut self.sel, sel);
            r?;
        }
        self.matvec_batch(w, batch.selections, batch.union, ys);
        for (sel, traffic) in batch.selections.iter().zip(batch.traffic.iter_mut()) {
            let read = sel.read(self.format, w);
            for &(slot, rows) in slots {
                traffic.count(slot, share(read, rows, w.d_out()));
            }
        }
        Ok(())
    }

    /// ys (token-major rows of d_out) = W·x_t for every token's selection.
    fn matvec_batch(
        &mut self,
        w: &Linear,
        selections: &mut [Selection],
        union: &mut Union,
        ys: &mut [f32],
    ) {
        let view = w.view();
        match (self.format, view.format()) {
            (WeightFormat::Int8 | WeightFormat::Ternary, Format::I8) => {
                union.build_int(selections, w.d_in());
                let input = BatchInput::Int {
                    indices: &union.columns,
                    values: &union.ints,
                    scales: &union.scales,
                };
                gather_matvec_batch(self.isa, &view, input, ys);
            }
            (WeightFormat::F32 | WeightFormat::F16, Format::F32 | Format::F16) => {
                union.build_float(selections, w.d_in());
                let input = BatchInput::Float {
                    indices: &union.columns,
                    values: &union.floats,
                    batch: selections.len(),
                };
                gather_matvec_batch(self.isa, &view, input, ys);
            }
            // Ternary weights with plain int8 activations (the T2 kernel multiplies int8 only),
            // when the tokens keep nearly the same columns. The T2 kernel runs near its compute
            // limit, so a batch pays for every column of the union for every token: on the
            // 2B4T-shaped model (`bench --prompt-tokens 64`, 2 alternated pairs) prefill went
            // 57-62 -> 78-81 tok/s dense, but 90-109 -> 73-85 at S = 0.5, whose unions hold
            // nearly all columns (twice each token's). Batched while the tokens keep on average
            // at least 1/1.3 of the columns, so that the union (at most all) is within 1.3x of it.
            (WeightFormat::Ternary, Format::T2)
                if selections
                    .iter()
                    .all(|sel| !sel.is_wide && sel.outliers.is_empty()) =>
            {
                let kept: usize = selections.iter().map(|sel| sel.int.len()).sum();
                if 13 * kept >= 10 * w.d_in() * selections.len() {
                    union.build_int8(selections, w.d_in());
                    let input = BatchInput::Ternary {
                        indices: &union.columns,
                        values: &union.int8s,
                        scales: &union.scales,
                    };
                    gather_matvec_batch(self.isa, &view, input, ys);
                } else {
                    self.matvec_each(w, selections, ys);
                }
            }
            // Ternary weights with activation outliers (f32 columns) one token at a time.
            _ => self.matvec_each(w, selections, ys),
        }
    }

    /// ys (token-major rows of d_out) = W·x_t, one token's product at a time.
    fn matvec_each(&mut self, w: &Linear, selections: &mut [Selection], ys: &mut [f32]) {
        for (sel, y) in selections.iter_mut().zip(ys.chunks_exact_mut(w.d_out())) {
            std::mem::swap(&mut self.sel, sel);
            self.matvec(w, y);
            std::mem::swap(&mut self.sel, sel);
        }
    }
}

impl Model {
    /// Run up to [`PROMPT_BATCH`] prompt tokens at positions pos0.. through the model together,
    /// only to fill their KV cache entries (see [`Model::feed_prompt`]).
    pub(super) fn feed_batch(
        &self,
        state: &mut RunState,
        tokens: &[u32],
        pos0: usize,
        sparsity: Sparsity,
    ) -> Result<(), ForwardError> {
        on_pool(|| self.batch_step(state, tokens, pos0, sparsity))
    }

    /// Run up to [`PROMPT_BATCH`] tokens at positions pos0.. through the model together, keeping
    /// each one's next-token logits and traffic: [`RunState::use_batch_token`] then puts token
    /// t's where [`Model::forward`] leaves them, bit for bit the same. For scoring a text, where
    /// every position's prediction is read.
    pub fn forward_batch(
        &self,
        state: &mut RunState,
        tokens: &[u32],
        pos0: usize,
        sparsity: Sparsity,
    ) -> Result<(), ForwardError> {
        on_pool(|| {
            self.batch_step(state, tokens, pos0, sparsity)?;
            let vocab = self.config.vocab_size;
            let mut logits = std::mem::take(&mut state.batch.logits);
            logits.resize(PROMPT_BATCH * vocab, 0.0);
            let result = self.batch_head(state, tokens.len(), sparsity, &mut logits);
            state.batch.logits = logits;
            result
        })
    }

    /// The final norm and the lm_head for the batch's b tokens, into token-major `logits`, the
    /// head read once for all of them (113 MB a token for SmolLM2's f32 head, 30 MB for the Q8
    /// one); each token's traffic counts what its own pass reads.
    fn batch_head(
        &self,
        state: &mut RunState,
        b: usize,
        sparsity: Sparsity,
        logits: &mut [f32],
    ) -> Result<(), ForwardError> {
        let c = &self.config;
        let d = c.d_model;
        let nonfinite = |source| ForwardError::NonFinite {
            layer: c.n_layers,
            source,
        };
        let RunState {
            batch: bs,
            sparsifier,
            ..
        } = state;
        let BatchState {
            x,
            xb,
            selections,
            union,
            traffic,
            head_inputs,
            ..
        } = bs;
        let xb = &mut xb[..b * d];
        norm_rows(xb, &x[..b * d], &self.weights.output_norm, c.rms_eps);
        let logits = &mut logits[..b * c.vocab_size];
        match &self.weights.lm_head {
            LmHead::Columns(head) => {
                let mut batch = Batch {
                    selections: &mut selections[..b],
                    union,
                    traffic: &mut traffic[..b],
                };
                let slots = [(7, c.vocab_size)];
                let s = sparsity.lm_head;
                sparsifier
                    .project_batch(head, xb, d, s, &mut batch, &slots, logits)
                    .map_err(nonfinite)
            }
            LmHead::Rows(head) => {
                if sparsity.lm_head > 0.0 {
                    return Err(ForwardError::DenseHead);
                }
                let params = (head.d_out() * head.d_in()) as u64;
                for ((x, q), traffic) in
                    xb.chunks_exact(d).zip(&mut *head_inputs).zip(&mut *traffic)
                {
                    traffic.record_input(&[7], x);
                    q.quantize(x).map_err(nonfinite)?;
                    traffic.count(7, (head.bytes() as u64, params));
                }
                matvec_rows_q8_batch(sparsifier.isa, head, &head_inputs[..b], logits);
                Ok(())
            }
        }
    }

    fn batch_step(
        &self,
        state: &mut RunState,
        tokens: &[u32],
        pos0: usize,
        sparsity: Sparsity,
    ) -> Result<(), ForwardError> {
        let c = &self.config;
        let b = tokens.len();
        assert!((1..=PROMPT_BATCH).contains(&b), "batch of {b} tokens");
        if let Some(&token) = tokens.iter().find(|&&t| t as usize >= c.vocab_size) {
            return Err(ForwardError::BadToken {
                token,
                vocab: c.vocab_size,
            });
        }
        if pos0 + b > state.ctx {
            return Err(ForwardError::ContextFull {
                pos: pos0.max(state.ctx),
                ctx: state.ctx,
            });
        }
        let (d, hd, n_kv) = (c.d_model, c.head_dim, c.n_kv_heads);
        let (q_dim, kv_dim) = (c.n_heads * hd, n_kv * hd);
        let qkv_dim = q_dim + 2 * kv_dim;
        let ctx = state.ctx;
        let RunState {
            batch: bs,
            sparsifier,
            key_cache,
            value_cache,
            scores,
            ..
        } = state;
        let isa = sparsifier.isa;
        let BatchState {
            x,
            xb,
            qkv,
            att_out,
            proj,
            gate_up,
            ropes,
            selections,
            union,
            traffic,
            ..
        } = bs;
        for (t, &token) in tokens.iter().enumerate() {
            self.weights
                .embedding
                .row(&self.file, token, &mut x[t * d..(t + 1) * d])?;
            self.rope_angles(pos0 + t, &mut ropes[t]);
            traffic[t] = Traffic::default();
        }
        let mut batch = Batch {
            selections: &mut selections[..b],
            union,
            traffic: &mut traffic[..b],
        };
        let (x, xb) = (&mut x[..b * d], &mut xb[..b * d]);
        let (qkv, att_out) = (&mut qkv[..b * qkv_dim], &mut att_out[..b * q_dim]);
        let (proj, gate_up) = (&mut proj[..b * d], &mut gate_up[..b * 2 * c.d_ff]);
        for (l, layer) in self.weights.layers.iter().enumerate() {
            let nonfinite = |source| ForwardError::NonFinite { layer: l, source };

            // Attention block.
            norm_rows(xb, x, &layer.attn_norm, c.rms_eps);
            let slots = [(0, q_dim), (1, kv_dim), (2, kv_dim)];
            sparsifier
                .project_batch(&layer.wqkv, xb, d, sparsity.qkv, &mut batch, &slots, qkv)
                .map_err(nonfinite)?;
            for (t, qkv) in qkv.chunks_exact_mut(qkv_dim).enumerate() {
                let cache = halves_mut(key_cache, value_cache);
                self.rope_and_store(isa, l, pos0 + t, &ropes[t], qkv, cache, ctx);
            }
            for (t, (qkv, out)) in qkv
                .chunks_exact(qkv_dim)
                .zip(att_out.chunks_exact_mut(q_dim))
                .enumerate()
            {
                // Causal: token t sees the positions up to its own.
                let cache = halves(key_cache, value_cache);
                self.attend_cached(isa, l, &qkv[..q_dim], pos0 + t + 1, cache, ctx, scores, out);
                if let Some(w) = &layer.attn_sub_norm {
                    rms_norm_in_place(out, w, c.rms_eps);
                }
            }
            let slots = [(3, d)];
            sparsifier
                .project_batch(
                    &layer.wo, att_out, q_dim, sparsity.o, &mut batch, &slots, proj,
                )
                .map_err(nonfinite)?;
            for (x, p) in x.iter_mut().zip(proj.iter()) {
                *x += p;
            }

            // Feed-forward block.
            norm_rows(xb, x, &layer.ffn_norm, c.rms_eps);
            let slots = [(4, c.d_ff), (5, c.d_ff)];
            let s = sparsity.gate_up;
            sparsifier
                .project_batch(&layer.w_gate_up, xb, d, s, &mut batch, &slots, gate_up)
                .map_err(nonfinite)?;
            for row in gate_up.chunks_exact_mut(2 * c.d_ff) {
                let (gate, up) = row.split_at_mut(c.d_ff);
                gated_activation(c, layer, isa, gate, up);
            }
            let (slots, s) = ([(6, d)], sparsity.down);
            sparsifier
                .project_batch(
                    &layer.w_down,
                    gate_up,
                    2 * c.d_ff,
                    s,
                    &mut batch,
                    &slots,
                    proj,
                )
                .map_err(nonfinite)?;
            for (x, p) in x.iter_mut().zip(proj.iter()) {
                *x += p;
            }
        }
        Ok(())
    }
}

/// RMSNorm of each row of `x` (rows of `w.len()`) into the same row of `out`.
fn norm_rows(out: &mut [f32], x: &[f32], w: &[f32], eps: f32) {
    for (o, x) in out.chunks_exact_mut(w.len()).zip(x.chunks_exact(w.len())) {
        rms_norm(o, x, w, eps);
    }
}

impl RunState {
    /// Put token t of the last [`Model::forward_batch`] where a single [`Model::forward`] leaves
    /// its results: its next-token logits in `logits`, what its pass read in `traffic`.
    pub fn use_batch_token(&mut self, t: usize) {
        let vocab = self.logits.len();
        self.logits
            .copy_from_slice(&self.batch.logits[t * vocab..(t + 1) * vocab]);
        self.traffic = self.batch.traffic[t];
    }
}
