//! Batched sparse column-gather matvec: y_t = W·x_t for several activation vectors at once (a
//! prompt's tokens), each kept column read once for all of them.
//!
//! Why: evaluating a prompt token by token reads every weight once per token, and a decode step
//! is bound by that traffic. A batch of B tokens reads the union of their kept columns once and
//! does B tokens' arithmetic per weight loaded, so prompt evaluation turns from memory-bound to
//! compute-bound. Each token keeps its own Top-K: a column in the union carries, per token, the
//! token's value or 0 where the token did not keep it. Every y_t equals, bit for bit, what
//! [`crate::gather_matvec`] computes for token t alone: integer sums are exact, and float sums
//! run the same FMA chain per row in the same column order (a 0 value adds w·0 = ±0, which
//! leaves a sum that is never −0 unchanged; the weights must be finite, as the executor's are).
//!
//! Work splits across the rayon workers by output lines (as sparse single-vector products do),
//! each worker sweeping its lines of every kept column's run into accumulators
//! `[line][token][rows]` (the B tokens' sums of one line side by side): compute-bound, so the
//! widest multiply the CPU has pays (`examples/batch_speed.rs`, `qsparse bench --prompt-tokens
//! 256`). With VNNI the batch goes four columns a multiply (`vpdpbusd`, int8 values only): every
//! value clamped to ±127 through that kernel, and each token's few activation outliers'
//! remainders (v − clamp(v)) in one more sweep, each vector over its own few columns
//! (`Int8Split`). The lines, not the union's columns, are split across the workers: a column
//! split's reduction would not be shared.

use std::cell::RefCell;

use rayon::prelude::*;

use super::dispatch::Kernel;
use super::driver::{all_below, PARALLEL_MIN_BYTES};
use super::runs::for_each_segment;
use crate::isa::Isa;
use crate::layout::{ColumnTiles, Format, MAX_LINE_ROWS};

use super::dispatch::RUN_BATCH;

/// The most tokens one batched product takes. With VNNI's four-column int8 kernel, a batch of 32
/// reads each weight once for 32 tokens, where one of 8 is bound by reading them (SmolLM2's
/// prompt: `qsparse bench --prompt-tokens 256`, `examples/batch_speed.rs`); the other kernels
/// take [`RUN_BATCH`] tokens at a time ([`batch_limit`]).
pub const MAX_BATCH: usize = 32;

/// The activations of a batch of B tokens: the union of their kept columns (`indices`, any order
/// for int8, ascending for floats as each token's own selection is) and, per column, every
/// token's value (`values[p · B + t]`, 0 where token t did not keep column `indices[p]`).
#[derive(Debug, Clone, Copy)]
pub enum BatchInput<'a> {
    /// Against int8 weights: int8-scale values held as int16 (outliers may exceed ±127) and each
    /// token's dequantization factor γ_t/127 (B = `scales.len()`).
    Int {
        /// The union of the tokens' kept columns.
        indices: &'a [u32],
        /// `values[p · batch + t]`: token t's int8-scale value at column `indices[p]` (int16 for
        /// outliers), 0 where it did not keep it.
        values: &'a [i16],
        /// Each token's scale γ/127.
        scales: &'a [f32],
    },
    /// Against ternary (T2) weights: int8 values (plain absmax, no outliers: the ternary kernel
    /// multiplies int8 only) and each token's γ_t/127.
    Ternary {
        /// The union of the tokens' kept columns.
        indices: &'a [u32],
        /// `values[p · batch + t]`: token t's int8 value at column `indices[p]`, 0 where it did not
        /// keep it.
        values: &'a [i8],
        /// Each token's scale γ/127.
        scales: &'a [f32],
    },
    /// Against f16 or f32 weights: f32 values of B = `batch` tokens.
    Float {
        /// The union of the tokens' kept columns.
        indices: &'a [u32],
        /// `values[p · batch + t]`: token t's value at column `indices[p]`, 0 where it did not keep
        /// it.
        values: &'a [f32],
        /// The number of tokens.
        batch: usize,
    },
}

impl BatchInput<'_> {
    fn indices(&self) -> &[u32] {
        match self {
            BatchInput::Int { indices, .. }
            | BatchInput::Ternary { indices, .. }
            | BatchInput::Float { indices, .. } => indices,
        }
    }

    fn batch(&self) -> usize {
        match self {
            BatchInput::Int { scales, .. } | BatchInput::Ternary { scales, .. } => scales.len(),
            BatchInput::Float { batch, .. } => *batch,
        }
    }

    fn n_values(&self) -> usize {
        match self {
            BatchInput::Int { values, .. } => values.len(),
            BatchInput::Ternary { values, .. } => values.len(),
            BatchInput::Float { values, .. } => values.len(),
        }
    }
}

thread_local! {
    /// Per-thread accumulators, reused across calls.
    static ACC: RefCell<Vec<i32>> = const { RefCell::new(Vec::new()) };
    static ACC_FLOAT: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// The calling thread's [`Int8Split`] (taken for a call, then put back).
    static SPLIT: RefCell<Int8Split> = RefCell::new(Int8Split::default());
}

/// An int8-scale batch for the four-column int8 kernel (`vpdpbusd`, AVX-512 VNNI), which
/// multiplies int8 values only: every value clamped to ±127 (`narrow`, all the union's columns),
/// and per vector the rest, v − clamp(v), nonzero only at its int16 activation outliers
/// (`residual_idx`, `residual`: a few columns a vector, summed by the kernel of each vector's
/// own columns); and per vector the 128·Σ clamp(v) the four-column kernel's sums carry (its
/// weights are offset by 128).
#[derive(Debug, Default)]
struct Int8Split {
    narrow: Vec<i8>,
    offset: [i32; MAX_BATCH],
    residual_idx: [Vec<u32>; MAX_BATCH],
    residual: [Vec<i16>; MAX_BATCH],
}

impl Int8Split {
    fn build(&mut self, kernel: Kernel, indices: &[u32], values: &[i16], batch: usize) {
        self.narrow.clear();
        self.narrow.resize(values.len(), 0);
        let mut sums = [0i32; MAX_BATCH];
        for (i, r) in self.residual_idx.iter_mut().zip(&mut self.residual) {
            i.clear();
            r.clear();
        }
        let (idx, res) = (&mut self.residual_idx, &mut self.residual);
        kernel.clamp_columns(values, batch, &mut self.narrow, &mut sums, |p, t| {
            let v = values[p * batch + t];
            idx[t].push(indices[p]);
            res[t].push(v - v.clamp(-127, 127));
        });
        self.offset = sums.map(|s| 128 * s);
    }
}

/// ys[t · d_out .. (t + 1) · d_out] = W·x_t for every token t of the batch. Threads: the current
/// rayon pool.
///
/// Panics when the input kind does not match the weights (int8-scale values for I8, int8 for T2,
/// floats for F16 and F32), when the batch is empty or larger than [`batch_limit`], when the sizes
/// disagree or when an index is not below d_in (programming errors, checked once so the kernels
/// can read without bounds checks).
pub fn gather_matvec_batch(isa: Isa, w: &ColumnTiles<'_>, x: BatchInput<'_>, ys: &mut [f32]) {
    assert!(
        matches!(
            (w.format(), x),
            (Format::I8, BatchInput::Int { .. })
                | (Format::T2, BatchInput::Ternary { .. })
                | (Format::F16 | Format::F32, BatchInput::Float { .. })
        ),
        "gather_matvec_batch: {:?} weights cannot take this input kind",
        w.format()
    );
    let batch = x.batch();
    assert!(
        (1..=MAX_BATCH).contains(&batch),
        "gather_matvec_batch: batch of {batch} (1..={MAX_BATCH})"
    );
    assert_eq!(
        x.n_values(),
        x.indices().len() * batch,
        "gather_matvec_batch: ragged input"
    );
    assert_eq!(
        ys.len(),
        batch * w.d_out(),
        "gather_matvec_batch: ys has {} values, want {batch} x {}",
        ys.len(),
        w.d_out()
    );
    let d_in = w.d_in() as u32;
    assert!(
        all_below(x.indices(), d_in),
        "gather_matvec_batch: an input index is >= d_in = {d_in}"
    );
    let limit = batch_limit(isa, w.format());
    assert!(
        batch <= limit,
        "gather_matvec_batch: batch of {batch}, more than the {limit} these kernels take"
    );
    let kernel = Kernel::select(isa);
    let int8_dot = matches!(x, BatchInput::Int { .. }) && kernel.has_int8_dot();
    // Taken out of the thread-local for the call, not borrowed: while this thread waits for the
    // workers it may run other pool work, another batched product included.
    let split = match x {
        BatchInput::Int {
            indices, values, ..
        } if int8_dot => {
            let mut split = SPLIT.take();
            split.build(kernel, indices, values, batch);
            Some(split)
        }
        _ => None,
    };
    let n_lines = w.n_lines();
    let d_out = w.d_out();
    let threads = rayon::current_num_threads();
    if threads <= 1 || n_lines <= 1 || w.bytes_read(x.indices().len()) < PARALLEL_MIN_BYTES {
        lines_range(kernel, w, x, split.as_ref(), 0, n_lines, |t, r0, y| {
            ys[t * d_out + r0..][..y.len()].copy_from_slice(y)
        });
    } else {
        // One contiguous range of output lines per worker, for every token.
        let per = n_lines.div_ceil(threads);
        let out = SharedRows(ys.as_mut_ptr());
        let split = split.as_ref();
        (0..n_lines.div_ceil(per)).into_par_iter().for_each(|c| {
            let out = &out;
            let (l0, l1) = (c * per, ((c + 1) * per).min(n_lines));
            lines_range(kernel, w, x, split, l0, l1, |t, r0, y| {
                // SAFETY: rows r0 .. r0 + y.len() of token t lie in ys (t < batch, r0 + y.len()
                // <= d_out) and belong to this worker's lines only: no other worker writes them.
                let dst =
                    unsafe { std::slice::from_raw_parts_mut(out.0.add(t * d_out + r0), y.len()) };
                dst.copy_from_slice(y);
            });
        });
    }
    if let Some(split) = split {
        SPLIT.set(split);
    }
}

/// The most tokens a batched product over `format` weights takes here (callers split larger
/// batches): [`MAX_BATCH`] against int8 or T2 weights with VNNI (the four-column matrix product),
/// [`RUN_BATCH`] otherwise.
pub fn batch_limit(isa: Isa, format: Format) -> usize {
    if matches!(format, Format::I8 | Format::T2) && Kernel::select(isa).has_int8_dot() {
        MAX_BATCH
    } else {
        RUN_BATCH
    }
}

/// The output's base pointer, shared by workers that write disjoint rows of it.
struct SharedRows(*mut f32);
// SAFETY: workers write only their own lines' rows through it (see gather_matvec_batch).
unsafe impl Sync for SharedRows {}

/// Output lines l0..l1 of every token, handed to `emit(token, first row, values)` line by line.
fn lines_range(
    kernel: Kernel,
    w: &ColumnTiles<'_>,
    x: BatchInput<'_>,
    split: Option<&Int8Split>,
    l0: usize,
    l1: usize,
    mut emit: impl FnMut(usize, usize, &[f32]),
) {
    let (batch, format) = (x.batch(), w.format());
    let rpl = format.rows_per_line();
    let d_out = w.d_out();
    let lines = l1 - l0;
    // Line l's rows of token t, from accumulators [line][token][rows].
    let mut emit_lines = |acc_row: &mut dyn FnMut(usize, usize, &mut [f32])| {
        let mut y = [0.0f32; MAX_LINE_ROWS];
        for l in 0..lines {
            let r0 = (l0 + l) * rpl;
            let rows = rpl.min(d_out - r0);
            for t in 0..batch {
                acc_row(l * batch + t, r0, &mut y[..rows]);
                emit(t, r0, &y[..rows]);
            }
        }
    };
    match x {
        BatchInput::Int { scales, .. } | BatchInput::Ternary { scales, .. } => {
            ACC.with_borrow_mut(|acc| {
                acc.clear();
                acc.resize(lines * batch * rpl, 0);
                let indices = x.indices();
                for_each_segment(w, l0, lines, |seg, n, at| {
                    let acc = &mut acc[at * batch * rpl..(at + n) * batch * rpl];
                    match (x, split) {
                        // The four-column kernel adds its sums in row order; each token's outlier
                        // remainders go onto its rows.
                        (BatchInput::Int { .. }, Some(sp)) => {
                            kernel.i8_runs_batch_int8(seg, n, indices, &sp.narrow, batch, acc);
                            let (idx, res) = (&sp.residual_idx[..batch], &sp.residual[..batch]);
                            kernel.i16_columns_each(seg, n, idx, res, acc);
                        }
                        (BatchInput::Int { values, .. }, None) => {
                            kernel.i8_runs_batch(seg, n, indices, values, batch, acc)
                        }
                        (BatchInput::Ternary { values, .. }, _) => {
                            kernel.t2_runs_batch(seg, n, indices, values, batch, acc)
                        }
                        (BatchInput::Float { .. }, _) => unreachable!("an integer input"),
                    }
                });
                // Ternary codes are t + 1: each token's Σx comes off every row (as in the
                // single product); the four-column int8 kernel's weights are w + 128: 128·Σx
                // over its columns.
                let mut bias = split.map_or([0i32; MAX_BATCH], |sp| sp.offset);
                if let BatchInput::Ternary { values, .. } = x {
                    for column in values.chunks_exact(batch) {
                        for (b, &v) in bias.iter_mut().zip(column) {
                            *b += i32::from(v);
                        }
                    }
                }
                let row_scale = w.row_scale();
                emit_lines(&mut |k, r0, y| {
                    let (scale, bias) = (scales[k % batch], bias[k % batch]);
                    let a = &acc[k * rpl..][..y.len()];
                    // The single-vector product's formula, so the results agree bit for bit.
                    for ((o, &a), &s) in y.iter_mut().zip(a).zip(&row_scale[r0..]) {
                        *o = (a - bias) as f32 * (scale * s);
                    }
                });
            })
        }
        BatchInput::Float {
            indices, values, ..
        } => ACC_FLOAT.with_borrow_mut(|acc| {
            acc.clear();
            acc.resize(lines * batch * rpl, 0.0);
            for_each_segment(w, l0, lines, |seg, n, at| {
                let acc = &mut acc[at * batch * rpl..(at + n) * batch * rpl];
                kernel.float_runs_batch(format, seg, n, indices, values, batch, acc);
            });
            emit_lines(&mut |k, _, y| {
                let n = y.len();
                y.copy_from_slice(&acc[k * rpl..][..n])
            });
        }),
    }
}
