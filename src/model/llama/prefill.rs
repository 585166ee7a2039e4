//! Prompt evaluation in batches: up to [`PROMPT_BATCH`] prompt tokens go through each layer
//! together, so each projection reads its weights once for all of them
//! ([`gather_matvec_batch`]) instead of once per token. Decoding is one token at a time by nature;
//! a prompt is not, and token by token it ran at decode speed (memory-bound).
//!
//! Each token keeps its own selection (Top-K, outliers, int8 scale): the batch reads the union of
//! the tokens' kept columns, a token's value being 0 where it did not keep a column. The KV cache
//! entries come out bit for bit as token-by-token evaluation writes them (integer sums are
//! exact; everything else is the same per-token code), which the tests check on logits.
//! Weights other than int8 (and int8 weights of formats the batched kernel does not take) run
//! the tokens' products one after another: the same results, without the saving.

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
        }
    }
}

/// The batched kernel's input: the union of the tokens' kept columns with each token's value.
#[derive(Debug, Default)]
struct Union {
    columns: Vec<u32>,
    values: Vec<i16>,
    scales: Vec<f32>,
    /// Column-major [d_in][batch] values, 0 where a token did not keep the column.
    dense: Vec<i16>,
}

impl Union {
    /// From int8-path selections (int16 with outliers, or plain int8).
    fn build(&mut self, selections: &[Selection], d_in: usize) {
        let b = selections.len();
        self.dense.clear();
        self.dense.resize(d_in * b, 0);
        self.scales.clear();
        for (t, sel) in selections.iter().enumerate() {
            if sel.is_wide {
                for (&j, &v) in sel.wide.indices.iter().zip(&sel.wide.values) {
                    self.dense[j as usize * b + t] = v;
                }
            } else {
                for (&j, &v) in sel.int.indices.iter().zip(&sel.int.values) {
                    self.dense[j as usize * b + t] = i16::from(v);
                }
            }
            self.scales.push(sel.scale);
        }
        self.columns.clear();
        self.values.clear();
        for (j, column) in self.dense.chunks_exact(b).enumerate() {
            if column.iter().any(|&v| v != 0) {
                self.columns.push(j as u32);
                self.values.extend_from_slice(column);
            }
        }
    }
}

impl Sparsifier {
    /// For every token, select its input (the first d_in entries of row t of `xs`, rows of
    /// `stride`) and multiply: ys (token-major rows of d_out) = W·x_t.
    #[allow(clippy::too_many_arguments)]
    fn project_batch(
        &mut self,
        w: &Linear,
        xs: &[f32],
        stride: usize,
        s: f32,
        selections: &mut [Selection],
        union: &mut Union,
        ys: &mut [f32],
    ) -> Result<(), NonFinite> {
        for (x, sel) in xs.chunks_exact(stride).zip(selections.iter_mut()) {
            std::mem::swap(&mut self.sel, sel);
            let r = self.select(&x[..w.d_in()], s, w.format());
            std::mem::swap(&mut self.sel, sel);
            r?;
        }
        self.matvec_batch(w, selections, union, ys);
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
        if self.format == WeightFormat::Int8 && w.format() == Format::I8 {
            union.build(selections, w.d_in());
            let input = BatchInput {
                indices: &union.columns,
                values: &union.values,
                scales: &union.scales,
            };
            gather_matvec_batch(self.isa, &w.view(), input, ys);
        } else {
            for (sel, y) in selections.iter_mut().zip(ys.chunks_exact_mut(w.d_out())) {
                std::mem::swap(&mut self.sel, sel);
                self.matvec(w, y);
                std::mem::swap(&mut self.sel, sel);
            }
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
        for (t, &token) in tokens.iter().enumerate() {
            self.weights
                .embedding
                .row(&self.file, token, &mut bs.x[t * d..(t + 1) * d])?;
            self.rope_angles(pos0 + t, &mut bs.ropes[t]);
        }
        let sels = &mut bs.selections[..b];
        for (l, layer) in self.weights.layers.iter().enumerate() {
            let nonfinite = |source| ForwardError::NonFinite { layer: l, source };

            // Attention block.
            norm_rows(
                &mut bs.xb[..b * d],
                &bs.x[..b * d],
                &layer.attn_norm,
                c.rms_eps,
            );
            let qkv = &mut bs.qkv[..b * qkv_dim];
            let (xb, u) = (&bs.xb[..b * d], &mut bs.union);
            sparsifier
                .project_batch(&layer.wqkv, xb, d, sparsity.qkv, sels, u, qkv)
                .map_err(nonfinite)?;
            let base = l * kv_dim * ctx;
            for (t, qkv) in qkv.chunks_exact_mut(qkv_dim).enumerate() {
                let (q, kv) = qkv.split_at_mut(q_dim);
                let (k, v) = kv.split_at_mut(kv_dim);
                self.rope(q, &bs.ropes[t]);
                self.rope(k, &bs.ropes[t]);
                for (h, (k, v)) in k.chunks_exact(hd).zip(v.chunks_exact(hd)).enumerate() {
                    let at = base + (h * ctx + pos0 + t) * hd;
                    store_f16(isa, k, &mut key_cache[at..at + hd]);
                    store_f16(isa, v, &mut value_cache[at..at + hd]);
                }
            }
            let cache = base..base + kv_dim * ctx;
            for (t, (qkv, out)) in qkv
                .chunks_exact(qkv_dim)
                .zip(bs.att_out.chunks_exact_mut(q_dim))
                .enumerate()
            {
                // Causal: token t sees the positions up to its own.
                let attention = Attention {
                    q: &qkv[..q_dim],
                    keys: &key_cache[cache.clone()],
                    values: &value_cache[cache.clone()],
                    positions: pos0 + t + 1,
                    head_dim: hd,
                    group: c.n_heads / n_kv,
                    scale: 1.0 / (hd as f32).sqrt(),
                };
                attend(isa, attention, scores, out);
            }
            let proj = &mut bs.proj[..b * d];
            let (att, u) = (&bs.att_out[..b * q_dim], &mut bs.union);
            sparsifier
                .project_batch(&layer.wo, att, q_dim, sparsity.o, sels, u, proj)
                .map_err(nonfinite)?;
            for (x, p) in bs.x.iter_mut().zip(proj.iter()) {
                *x += p;
            }

            // Feed-forward block.
            norm_rows(
                &mut bs.xb[..b * d],
                &bs.x[..b * d],
                &layer.ffn_norm,
                c.rms_eps,
            );
            let gate_up = &mut bs.gate_up[..b * 2 * c.d_ff];
            let (xb, u) = (&bs.xb[..b * d], &mut bs.union);
            sparsifier
                .project_batch(&layer.w_gate_up, xb, d, sparsity.gate_up, sels, u, gate_up)
                .map_err(nonfinite)?;
            for row in gate_up.chunks_exact_mut(2 * c.d_ff) {
                let (gate, up) = row.split_at_mut(c.d_ff);
                activation::swiglu(isa, gate, up);
            }
            let u = &mut bs.union;
            sparsifier
                .project_batch(
                    &layer.w_down,
                    gate_up,
                    2 * c.d_ff,
                    sparsity.down,
                    sels,
                    u,
                    proj,
                )
                .map_err(nonfinite)?;
            for (x, p) in bs.x.iter_mut().zip(proj.iter()) {
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
