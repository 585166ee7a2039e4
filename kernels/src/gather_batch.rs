//! Batched sparse column-gather matvec for int8 weights: y_t = W·x_t for several activation
//! vectors at once (a prompt's tokens), each kept column read once for all of them.
//!
//! Why: evaluating a prompt token by token reads every weight once per token, and a decode step
//! is bound by that traffic. A batch of B tokens reads the union of their kept columns once and
//! does B tokens' arithmetic per weight loaded, so prompt evaluation turns from memory-bound to
//! compute-bound. Each token keeps its own Top-K: a column in the union carries, per token, the
//! token's value or 0 where the token did not keep it. Integer sums are exact, so every y_t
//! equals, bit for bit, what [`crate::gather_matvec`] computes for token t alone.
//!
//! Work splits across the rayon workers by output lines (as sparse single-vector products do),
//! each worker sweeping its lines of every kept column's run into accumulators
//! `[line][token][64 rows]` (the B tokens' sums of one line side by side). On the AVX2
//! development machine the kernel is bound by `vpmaddwd` (~6 token-weights a cycle per core):
//! 8 tokens take 1.33-1.57x less time per token than one at a time on SmolLM2's shapes
//! (`examples/batch_speed.rs`); on the executor's prompts, 1.48x (`qsparse bench`).

use std::cell::RefCell;

use rayon::prelude::*;

use crate::gather::{all_below, for_each_segment, Kernel, PARALLEL_MIN_BYTES};
use crate::isa::Isa;
use crate::layout::{ColumnTiles, Format, LINE_BYTES};

/// The most activation vectors one batched product takes: per token, 8 ran 3-14% faster than 4
/// on SmolLM2's shapes (`examples/batch_speed.rs`), the shared loading and widening of the weights
/// spread over more tokens.
pub const MAX_BATCH: usize = 8;

/// Rows of one int8 line.
const ROWS: usize = LINE_BYTES;

/// The activations of a batch of B tokens against int8 weights: the union of their kept columns
/// (`indices`, any order), `values[p · B + t]` = token t's int8-scale value at column
/// `indices[p]` (int16: outliers may exceed ±127; 0 where token t did not keep it), and each
/// token's dequantization factor γ_t/127 in `scales` (B = `scales.len()`).
#[derive(Debug, Clone, Copy)]
pub struct BatchInput<'a> {
    pub indices: &'a [u32],
    pub values: &'a [i16],
    pub scales: &'a [f32],
}

thread_local! {
    /// Per-thread accumulators, reused across calls.
    static ACC: RefCell<Vec<i32>> = const { RefCell::new(Vec::new()) };
}

/// ys[t · d_out .. (t + 1) · d_out] = W·x_t for every token t of the batch. Threads: the current
/// rayon pool.
///
/// Panics when the weights are not int8, when the batch is empty or larger than [`MAX_BATCH`],
/// when the sizes disagree or when an index is not below d_in (programming errors, checked once
/// so the kernels can read without bounds checks).
pub fn gather_matvec_batch(isa: Isa, w: &ColumnTiles<'_>, x: BatchInput<'_>, ys: &mut [f32]) {
    assert_eq!(
        w.format(),
        Format::I8,
        "gather_matvec_batch: int8 weights only"
    );
    let batch = x.scales.len();
    assert!(
        (1..=MAX_BATCH).contains(&batch),
        "gather_matvec_batch: batch of {batch} (1..={MAX_BATCH})"
    );
    assert_eq!(
        x.values.len(),
        x.indices.len() * batch,
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
        all_below(x.indices, d_in),
        "gather_matvec_batch: an input index is >= d_in = {d_in}"
    );
    let kernel = Kernel::select(isa);
    let n_lines = w.n_lines();
    let d_out = w.d_out();
    let threads = rayon::current_num_threads();
    if threads <= 1 || n_lines <= 1 || w.bytes_read(x.indices.len()) < PARALLEL_MIN_BYTES {
        lines_range(kernel, w, x, 0, n_lines, |t, r0, y| {
            ys[t * d_out + r0..][..y.len()].copy_from_slice(y)
        });
        return;
    }
    // One contiguous range of output lines per worker, for every token.
    let per = n_lines.div_ceil(threads);
    let out = SharedRows(ys.as_mut_ptr());
    (0..n_lines.div_ceil(per)).into_par_iter().for_each(|c| {
        let out = &out;
        let (l0, l1) = (c * per, ((c + 1) * per).min(n_lines));
        lines_range(kernel, w, x, l0, l1, |t, r0, y| {
            // SAFETY: rows r0 .. r0 + y.len() of token t lie in ys (t < batch, r0 + y.len() <=
            // d_out) and belong to this worker's lines only: no other worker writes them.
            let dst = unsafe { std::slice::from_raw_parts_mut(out.0.add(t * d_out + r0), y.len()) };
            dst.copy_from_slice(y);
        });
    });
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
    l0: usize,
    l1: usize,
    mut emit: impl FnMut(usize, usize, &[f32]),
) {
    let batch = x.scales.len();
    let d_out = w.d_out();
    let lines = l1 - l0;
    ACC.with_borrow_mut(|acc| {
        acc.clear();
        acc.resize(lines * batch * ROWS, 0);
        for_each_segment(w, l0, lines, |seg, n, at| {
            let acc = &mut acc[at * batch * ROWS..(at + n) * batch * ROWS];
            kernel.i8_runs_batch(seg, n, x.indices, x.values, batch, acc);
        });
        let scales = w.row_scale();
        let mut y = [0.0f32; ROWS];
        for l in 0..lines {
            let r0 = (l0 + l) * ROWS;
            let rows = ROWS.min(d_out - r0);
            for (t, &scale) in x.scales.iter().enumerate() {
                let a = &acc[(l * batch + t) * ROWS..][..rows];
                // The single-vector product's formula, so the results agree bit for bit.
                for ((o, &a), &s) in y.iter_mut().zip(a).zip(&scales[r0..r0 + rows]) {
                    *o = a as f32 * (scale * s);
                }
                emit(t, r0, &y[..rows]);
            }
        }
    });
}
