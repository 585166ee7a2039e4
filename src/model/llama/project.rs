//! A projection of the forward pass, for every token of the pass at once: each token's input
//! selected (Top-K, and int8 quantization for integer weights: `select`), then one product.
//!
//! A single token (a decode step) multiplies its own selection. Several tokens (a prompt, up to
//! [`PROMPT_BATCH`]) read each weight once for all of them ([`gather_matvec_batch`]): the batch
//! reads the union of the tokens' kept columns, a token's value being 0 where it did not keep a
//! column. Every token's output comes out bit for bit as its own product gives it (integer sums
//! are exact, float sums run each token's FMA chains in its own column order), which the tests
//! check on logits.
//!
//! The call also records what it did: each token's input zeros and weight bytes ([`Traffic`]),
//! and the time of the selection and of the product ([`Profile`](crate::model::Profile)), so
//! that the forward pass itself holds no measuring code.

use qsparse_kernels::{batch_limit, gather_matvec_batch, BatchInput, Format, NonFinite, MAX_BATCH};

use rayon::prelude::*;

use super::sparsify::{Select, Selection, Sparsifier, Sparsity};
use super::traffic::Traffic;
use crate::model::config::ModelConfig;
use crate::model::profile::{Laps, Phase};
use crate::model::proj::Stack;
use crate::model::weights::{Linear, WeightFormat};

/// Prompt tokens per batched step.
pub const PROMPT_BATCH: usize = MAX_BATCH;

/// What a forward pass measures as it goes: each token's traffic, and the time per phase when
/// profiling.
pub(super) struct Meter<'a> {
    /// One per token of the pass.
    pub(super) traffic: &'a mut [Traffic],
    laps: Laps<'a>,
}

impl<'a> Meter<'a> {
    pub(super) fn new(traffic: &'a mut [Traffic], laps: Laps<'a>) -> Meter<'a> {
        traffic.fill(Traffic::default());
        Meter { traffic, laps }
    }

    /// Charge the time since the last lap to `phase`.
    pub(super) fn lap(&mut self, phase: Phase) {
        self.laps.mark(phase);
    }

    pub(super) fn finish(self) {
        let tokens = self.traffic.len();
        self.laps.finish(tokens);
    }
}

/// The projections of one forward pass: its tokens' selections and the pass's meter.
pub(super) struct Projector<'a> {
    pub(super) config: &'a ModelConfig,
    pub(super) sparsifier: Sparsifier,
    /// One per token of the pass.
    pub(super) selections: &'a mut [Selection],
    pub(super) union: &'a mut Union,
    pub(super) meter: Meter<'a>,
}

impl Projector<'_> {
    /// ys = W·x_t (+ the layer's bias) for every token t of the pass, x_t the first d_in entries of row t of `xs`
    /// (rows of `stride`) with the ratio `sparsity` gives `stack` dropped; `ys` holds
    /// token-major rows of d_out.
    /// The time since the last lap is charged to element-wise work (norms, residual adds, the
    /// activation: what a pass does between two projections).
    pub(super) fn project(
        &mut self,
        stack: Stack,
        w: &Linear,
        xs: &[f32],
        stride: usize,
        sparsity: &Sparsity,
        ys: &mut [f32],
    ) -> Result<(), NonFinite> {
        self.meter.lap(Phase::Elementwise);
        let (d, s) = (w.d_in(), sparsity.of(stack));
        let norms = match self.sparsifier.select {
            Select::Weighted => w.column_norms(),
            Select::Magnitude => &[],
        };
        // Each token's selection on its own worker: with activation outliers it is ~1 µs a
        // vector, a tenth of a batched prompt's time on one core (`bench --profile`).
        let (sparsifier, format) = (self.sparsifier, w.format());
        let one = |((x, sel), traffic): ((&[f32], &mut Selection), &mut Traffic)| {
            traffic.record_input(stack, &x[..d]);
            sparsifier.select(sel, &x[..d], s, format, norms)
        };
        if self.selections.len() == 1 {
            let tokens = xs.chunks_exact(stride).zip(self.selections.iter_mut());
            tokens
                .zip(self.meter.traffic.iter_mut())
                .try_for_each(one)?;
        } else {
            xs.par_chunks_exact(stride)
                .zip(self.selections.par_iter_mut())
                .zip(self.meter.traffic.par_iter_mut())
                .try_for_each(one)?;
        }
        self.meter.lap(Phase::Select);
        // As many tokens a product as the kernels take in one sweep of the weights.
        let per = batch_limit(self.sparsifier.isa, w.view().format());
        for (sels, ys) in self
            .selections
            .chunks_mut(per)
            .zip(ys.chunks_mut(per * w.d_out()))
        {
            match sels {
                [one] => {
                    self.sparsifier.matvec(one, w, ys);
                }
                many => matvec_batch(self.sparsifier, w, many, self.union, ys),
            }
        }
        if let Some(bias) = &w.bias {
            for y in ys.chunks_exact_mut(w.d_out()) {
                y.iter_mut().zip(bias).for_each(|(y, b)| *y += b);
            }
        }
        let format = self.sparsifier.format;
        for (sel, traffic) in self.selections.iter().zip(self.meter.traffic.iter_mut()) {
            traffic.count(self.config, stack, sel.read(format, w));
        }
        self.meter.lap(stack.phase());
        Ok(())
    }
}

/// ys (token-major rows of d_out) = W·x_t for every token's selection, each weight read once for
/// the batch where the kernels take the batch's input form.
fn matvec_batch(
    sp: Sparsifier,
    w: &Linear,
    selections: &mut [Selection],
    union: &mut Union,
    ys: &mut [f32],
) {
    let view = w.view();
    match (sp.format, view.format()) {
        (WeightFormat::Int8 | WeightFormat::Ternary, Format::I8) => {
            union.build_int(selections, w.d_in());
            let input = BatchInput::Int {
                indices: &union.columns,
                values: &union.ints,
                scales: &union.scales,
            };
            gather_matvec_batch(sp.isa, &view, input, ys);
        }
        (WeightFormat::F32 | WeightFormat::F16, Format::F32 | Format::F16) => {
            union.build_float(selections, w.d_in());
            let input = BatchInput::Float {
                indices: &union.columns,
                values: &union.floats,
                batch: selections.len(),
            };
            gather_matvec_batch(sp.isa, &view, input, ys);
        }
        // Ternary weights with plain int8 activations (the T2 kernels multiply int8 only).
        // The AVX2 T2 kernel runs near its compute limit, so a batch pays for every column of
        // the union for every token (`bench --prompt-tokens 64` on the 2B4T-shaped model:
        // faster dense, slower at S = 0.5, whose unions hold nearly all columns): batched
        // while the tokens keep on average at least 1/1.3 of the columns, so that the union (at
        // most all) is within 1.3x of it. The VNNI matrix product pays for the union too but is
        // fast enough to win anyway (S = 0.5 prompts 1.55x faster batched, `bench
        // --prompt-tokens 128 --sparsity 0.5`): always batched.
        (WeightFormat::Ternary, Format::T2)
            if selections
                .iter()
                .all(|sel| !sel.is_wide && sel.outliers.is_empty()) =>
        {
            let kept: usize = selections.iter().map(|sel| sel.int.len()).sum();
            let matrix_product = batch_limit(sp.isa, Format::T2) == MAX_BATCH;
            if matrix_product || 13 * kept >= 10 * w.d_in() * selections.len() {
                union.build_int8(selections, w.d_in());
                let input = BatchInput::Ternary {
                    indices: &union.columns,
                    values: &union.int8s,
                    scales: &union.scales,
                };
                gather_matvec_batch(sp.isa, &view, input, ys);
            } else {
                matvec_each(sp, w, selections, ys);
            }
        }
        // Ternary weights with activation outliers (f32 columns) one token at a time.
        _ => matvec_each(sp, w, selections, ys),
    }
}

/// ys (token-major rows of d_out) = W·x_t, one token's product at a time.
fn matvec_each(sp: Sparsifier, w: &Linear, selections: &[Selection], ys: &mut [f32]) {
    for (sel, y) in selections.iter().zip(ys.chunks_exact_mut(w.d_out())) {
        sp.matvec(sel, w, y);
    }
}

/// The batched kernel's input: the union of the tokens' kept columns with each token's value.
#[derive(Debug, Default)]
pub(super) struct Union {
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
