//! The driver of a single-vector product: checks the input once, splits the work across the
//! rayon workers, and hands each tile's part to the run kernels ([`super::dispatch::Kernel`]).

use std::cell::RefCell;

use rayon::prelude::*;

use super::dispatch::Kernel;
use super::runs::for_each_segment;
use crate::isa::Isa;
use crate::layout::{ColumnTiles, Format, LINES_PER_TILE, LINE_BYTES};
use crate::topk::Sparse;

/// Below this many weight bytes per product, threading costs more than it saves
/// (`examples/cold_matvec.rs`; the executor's workers are awake, see `qsparse` `pool.rs`).
pub const PARALLEL_MIN_BYTES: usize = 96 * 1024;

/// The sparse activation a product consumes.
#[derive(Debug, Clone, Copy)]
pub enum Input<'a> {
    /// int8 activations (for T2 and I8 weights) with their dequantization factor γ/127.
    I8 {
        /// The activations.
        x: &'a Sparse<i8>,
        /// Their dequantization factor γ/127.
        scale: f32,
    },
    /// int8 activations plus a few columns whose activations are kept out of the int8 quantization
    /// (T2 and I8 weights): the executor's massive outliers, which would otherwise flatten
    /// everything else to a handful of levels. Row r gets s_r·(scale·Σ q·w + f_r), f_r = Σ v·w over
    /// `exact` summed in f32 in its order. With I8 weights [`Input::I16`] is the fast form.
    Mixed {
        /// The int8 activations.
        x: &'a Sparse<i8>,
        /// Their dequantization factor γ/127.
        scale: f32,
        /// The columns kept out of the quantization, in f32.
        exact: &'a Sparse<f32>,
    },
    /// int8-scale activations held as int16 (I8 weights only): a few entries beyond ±127 (the
    /// executor's activation outliers, quantized at the same scale) keep their precision in the
    /// one integer pass, whose `vpmaddwd` takes int16 as readily as int8. 32 outliers cost within
    /// ±5% this way and +16-31% as f32 columns (`Mixed`) on SmolLM2's gate/up and lm_head shapes
    /// (`examples/mixed_cost.rs`, 2 threads, 4 runs).
    I16 {
        /// The activations.
        x: &'a Sparse<i16>,
        /// Their dequantization factor γ/127.
        scale: f32,
    },
    /// f32 activations (for F16 and F32 weights).
    F32(&'a Sparse<f32>),
}

/// Whether every index is below `bound`: a max the compiler vectorizes. The early-exit `all` over
/// a chained iterator it replaces took 0.9% of a decode step's samples (`perf`, S = 0.5).
pub(crate) fn all_below(idx: &[u32], bound: u32) -> bool {
    idx.iter().fold(0, |m, &j| m.max(j)) < bound || idx.is_empty()
}

/// The f32 columns of a mixed input (none for the other kinds).
const NO_COLUMNS: (&[u32], &[f32]) = (&[], &[]);

impl<'a> Input<'a> {
    fn indices(&self) -> &[u32] {
        match self {
            Input::I8 { x, .. } | Input::Mixed { x, .. } => &x.indices,
            Input::I16 { x, .. } => &x.indices,
            Input::F32(x) => &x.indices,
        }
    }

    /// The integer activations and their scale (integer inputs only).
    fn integer(&self) -> Option<(Values<'a>, f32)> {
        match *self {
            Input::I8 { x, scale } | Input::Mixed { x, scale, .. } => {
                Some((Values::I8(&x.values), scale))
            }
            Input::I16 { x, scale } => Some((Values::I16(&x.values), scale)),
            Input::F32(_) => None,
        }
    }

    /// The f32 columns: `exact` of a mixed input, none otherwise.
    fn exact(&self) -> (&'a [u32], &'a [f32]) {
        match *self {
            Input::Mixed { exact, .. } => (&exact.indices, &exact.values),
            _ => NO_COLUMNS,
        }
    }
}

/// y = W·x for the kept entries of x. Threads: the current rayon pool (1 thread = serial).
///
/// Panics when `y` is not d_out long, when the input kind does not match the weight format, or
/// when an index is not below d_in: these are programming errors, checked once per call so the
/// kernels can read without bounds checks.
pub fn gather_matvec(isa: Isa, w: &ColumnTiles<'_>, input: Input<'_>, y: &mut [f32]) {
    assert_eq!(
        y.len(),
        w.d_out(),
        "gather_matvec: y has {} rows, W has {}",
        y.len(),
        w.d_out()
    );
    let idx = input.indices();
    let (exact_idx, exact_val) = input.exact();
    match input {
        Input::I8 { x, .. } | Input::Mixed { x, .. } => {
            assert_eq!(x.values.len(), idx.len(), "gather_matvec: ragged input")
        }
        Input::I16 { x, .. } => {
            assert_eq!(x.values.len(), idx.len(), "gather_matvec: ragged input")
        }
        Input::F32(x) => assert_eq!(x.values.len(), idx.len(), "gather_matvec: ragged input"),
    }
    assert_eq!(
        exact_idx.len(),
        exact_val.len(),
        "gather_matvec: ragged f32 columns"
    );
    assert!(
        matches!(
            (w.format(), input),
            (
                Format::T2 | Format::I8,
                Input::I8 { .. } | Input::Mixed { .. }
            ) | (Format::I8, Input::I16 { .. })
                | (Format::F16 | Format::F32, Input::F32(_))
        ),
        "gather_matvec: {:?} weights cannot take this input kind",
        w.format()
    );
    let d_in = w.d_in() as u32;
    assert!(
        all_below(idx, d_in) && all_below(exact_idx, d_in),
        "gather_matvec: an input index is >= d_in = {d_in}"
    );
    let kernel = Kernel::select(isa);

    let rpl = w.format().rows_per_line();
    let n_lines = w.n_lines();
    let threads = rayon::current_num_threads();
    let columns = idx.len() + exact_idx.len();
    if threads <= 1 || n_lines <= 1 || w.bytes_read(columns) < PARALLEL_MIN_BYTES {
        run_range(kernel, w, input, 0, y);
        return;
    }
    match input {
        // Integer products split the kept columns: each worker streams whole runs, a contiguous
        // share of every tile, and the int32 partial sums are added after. Splitting the rows
        // instead cuts every kept run in two (288-byte pieces on 576-row outputs), which DRAM
        // serves worse than the reduction costs (`qsparse bench --profile`, the products'
        // phases).
        Input::I8 { .. } | Input::Mixed { .. } | Input::I16 { .. }
            if n_lines < ROW_SPLIT_MIN_LINES =>
        {
            split_columns(kernel, w, input, threads, y)
        }
        // Float formats split the rows: splitting columns would change the order of each row's
        // FMA chain (results would depend on the thread count). Tall integer products (the
        // lm_head) too: each worker streams whole tiles and needs no partial sums to add.
        _ => {
            // One contiguous range of output lines per worker keeps each worker's reads in one
            // region.
            let per_task = n_lines.div_ceil(threads);
            y.par_chunks_mut(per_task * rpl)
                .enumerate()
                .for_each(|(c, ys)| run_range(kernel, w, input, c * per_task, ys));
        }
    }
}

/// Integer formats on several threads: the kept columns are split, not the rows. Each worker
/// then reads one contiguous stretch of every tile (its columns' runs lie side by side), a plain
/// sequential stream as in a row-major product, into its own int32 accumulators; the partial sums
/// are added exactly in integers, so the result does not depend on the split. The few f32
/// columns of a mixed input are split by rows instead (each worker sums its share of the rows
/// over all of them, in column order), so they too are independent of the split.
fn split_columns(
    kernel: Kernel,
    w: &ColumnTiles<'_>,
    input: Input<'_>,
    threads: usize,
    y: &mut [f32],
) {
    let (exact_idx, exact_val) = input.exact();
    let idx = input.indices();
    let (vals, scale) = input.integer().expect("integer input");
    let format = w.format();
    let rpl = format.rows_per_line();
    let rows = w.n_lines() * rpl;
    let per = idx.len().div_ceil(threads).max(1);
    let lines_per = w.n_lines().div_ceil(threads);
    let float_rows = if exact_idx.is_empty() {
        0
    } else {
        lines_per * rpl
    };
    // Taken out of the thread-local for the call, not borrowed: while this thread waits for the
    // workers below it may run other pool work, another product's split included.
    let (mut part_buf, mut float_buf) = PARTIALS.take();
    {
        // Zeroed by each worker for its own part (a 49152-row lm_head's partials are 400 KB).
        part_buf.resize(part_buf.len().max(threads * rows), 0);
        // One chunk per worker, even an empty input's (so the zip below keeps every worker).
        float_buf.clear();
        float_buf.resize(threads * float_rows.max(1), 0.0);
        part_buf[..threads * rows]
            .par_chunks_mut(rows)
            .zip(float_buf.par_chunks_mut(float_rows.max(1)))
            .enumerate()
            .for_each(|(t, (acc, fsum))| {
                acc.fill(0);
                let cols = (t * per).min(idx.len())..((t + 1) * per).min(idx.len());
                integer_sums(kernel, w, 0, &idx[cols.clone()], vals.range(cols), acc);
                if float_rows > 0 {
                    let line0 = (t * lines_per).min(w.n_lines());
                    let lines = ((t + 1) * lines_per).min(w.n_lines()) - line0;
                    float_sums(w, line0, exact_idx, exact_val, &mut fsum[..lines * rpl]);
                }
            });
        let bias = t2_bias(format, vals);
        let scales = w.row_scale();
        let (parts, floats) = (&part_buf[..threads * rows], &float_buf[..]);
        // Block by block, so that every loop below is a plain zip the compiler vectorizes: a
        // per-row sum over the workers' strided parts ran 6-7 cycles a row after the workers had
        // finished.
        let reduce = |r0: usize, ys: &mut [f32]| {
            const BLOCK: usize = 256;
            let mut sums = [0i32; BLOCK];
            for (b, ys) in ys.chunks_mut(BLOCK).enumerate() {
                let (at, n) = (r0 + b * BLOCK, ys.len());
                let sums = &mut sums[..n];
                sums.copy_from_slice(&parts[at..at + n]);
                for part in parts.chunks_exact(rows).skip(1) {
                    for (a, &p) in sums.iter_mut().zip(&part[at..at + n]) {
                        *a += p;
                    }
                }
                let scales = &scales[at..at + n];
                for ((o, &a), &s) in ys.iter_mut().zip(sums.iter()).zip(scales) {
                    *o = (a - bias) as f32 * (scale * s);
                }
                if float_rows > 0 {
                    for ((o, &f), &s) in ys.iter_mut().zip(&floats[at..at + n]).zip(scales) {
                        *o += s * f;
                    }
                }
            }
        };
        // Long outputs (the lm_head's 49152 rows) are reduced by every worker, a share each.
        if y.len() >= PARALLEL_REDUCE_MIN_ROWS {
            let per_rows = y.len().div_ceil(threads);
            y.par_chunks_mut(per_rows)
                .enumerate()
                .for_each(|(c, ys)| reduce(c * per_rows, ys));
        } else {
            reduce(0, y);
        }
    }
    PARTIALS.set((part_buf, float_buf));
}

/// From this many output lines (8 full tiles) integer products always split the rows: a tall
/// product (an int8 lm_head with a sparse input) has rows enough for both workers, and no
/// reduction (`qsparse bench --profile --lm-head-sparsity`).
const ROW_SPLIT_MIN_LINES: usize = 8 * LINES_PER_TILE;

/// From this many output rows the partial sums of a column split are added in parallel.
const PARALLEL_REDUCE_MIN_ROWS: usize = 4096;

/// The f32 columns' sums for the rows of output lines line0 .. line0 + out.len() / rows per line
/// of an integer-format matrix: out[r] = Σ_i w(r, idx[i])·val[i] in the order of `idx` (T2 codes
/// are the ternary values). Plain code the compiler vectorizes across a line's rows.
fn float_sums(w: &ColumnTiles<'_>, line0: usize, idx: &[u32], val: &[f32], out: &mut [f32]) {
    let format = w.format();
    let rpl = format.rows_per_line();
    out.fill(0.0);
    for_each_segment(w, line0, out.len() / rpl, |seg, n, at| {
        for s in 0..n {
            let o = &mut out[(at + s) * rpl..(at + s + 1) * rpl];
            for (&j, &v) in idx.iter().zip(val) {
                let start = seg.first + j as usize * seg.stride + s * LINE_BYTES;
                let line = &seg.tile[start..start + LINE_BYTES];
                match format {
                    Format::T2 => {
                        // Rows 32g + 8q + 0..8 sit in field q of bytes 8g + 0..8 (see `layout`):
                        // eight contiguous rows from eight contiguous bytes, which vectorizes.
                        for (o, bytes) in o.chunks_exact_mut(32).zip(line.chunks_exact(8)) {
                            for (q, o) in o.chunks_exact_mut(8).enumerate() {
                                for (o, &b) in o.iter_mut().zip(bytes) {
                                    *o += (f32::from((b >> (2 * q)) & 3) - 1.0) * v;
                                }
                            }
                        }
                    }
                    _ => {
                        for (o, &q) in o.iter_mut().zip(line) {
                            *o += f32::from(q as i8) * v;
                        }
                    }
                }
            }
        }
    });
}

thread_local! {
    /// Per-thread accumulators, reused across calls (no allocation per token once warm).
    static ACC_INT: RefCell<Vec<i32>> = const { RefCell::new(Vec::new()) };
    static ACC_FLOAT: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// The calling thread's per-worker accumulators of [`split_columns`],
    /// and the f32 sums of its mixed input's f32 columns (taken for a call, then put back).
    static PARTIALS: RefCell<(Vec<i32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// Output lines line0 .. line0 + ceil(y.len() / rows per line), into y.
fn run_range(kernel: Kernel, w: &ColumnTiles<'_>, input: Input<'_>, line0: usize, y: &mut [f32]) {
    let format = w.format();
    let rpl = format.rows_per_line();
    let lines = y.len().div_ceil(rpl);
    match input {
        Input::I8 { .. } | Input::Mixed { .. } | Input::I16 { .. } => {
            ACC_INT.with_borrow_mut(|acc| {
                acc.clear();
                acc.resize(lines * rpl, 0);
                let (val, scale) = input.integer().expect("integer input");
                integer_sums(kernel, w, line0, input.indices(), val, acc);
                let bias = t2_bias(format, val);
                let scales = &w.row_scale()[line0 * rpl..line0 * rpl + y.len()];
                for ((o, &a), &s) in y.iter_mut().zip(acc.iter()).zip(scales) {
                    *o = (a - bias) as f32 * (scale * s);
                }
                let (exact_idx, exact_val) = input.exact();
                if !exact_idx.is_empty() {
                    ACC_FLOAT.with_borrow_mut(|f| {
                        f.resize(lines * rpl, 0.0);
                        float_sums(w, line0, exact_idx, exact_val, &mut f[..lines * rpl]);
                        for ((o, &f), &s) in y.iter_mut().zip(f.iter()).zip(scales) {
                            *o += s * f;
                        }
                    });
                }
            })
        }
        Input::F32(x) => ACC_FLOAT.with_borrow_mut(|acc| {
            acc.clear();
            acc.resize(lines * rpl, 0.0);
            let (idx, val) = (x.indices.as_slice(), x.values.as_slice());
            for_each_segment(w, line0, lines, |seg, n, at| {
                let acc = &mut acc[at * rpl..(at + n) * rpl];
                kernel.float_runs(format, seg, n, idx, val, acc);
            });
            y.copy_from_slice(&acc[..y.len()]);
        }),
    }
}

/// The integer activations of a product: int8, or int16 for I8 weights.
#[derive(Debug, Clone, Copy)]
enum Values<'a> {
    I8(&'a [i8]),
    I16(&'a [i16]),
}

impl<'a> Values<'a> {
    fn range(self, r: std::ops::Range<usize>) -> Values<'a> {
        match self {
            Values::I8(v) => Values::I8(&v[r]),
            Values::I16(v) => Values::I16(&v[r]),
        }
    }
}

/// The exact int32 sums Σ_i code(r, idx[i])·val[i] of an integer-format matrix for the output
/// lines line0 .. line0 + acc.len() / rows per line, into `acc` (zeroed by the caller).
fn integer_sums(
    kernel: Kernel,
    w: &ColumnTiles<'_>,
    line0: usize,
    idx: &[u32],
    val: Values<'_>,
    acc: &mut [i32],
) {
    let format = w.format();
    let rpl = format.rows_per_line();
    for_each_segment(w, line0, acc.len() / rpl, |seg, n, at| {
        let acc = &mut acc[at * rpl..(at + n) * rpl];
        match (format, val) {
            (Format::T2, Values::I8(val)) => kernel.t2_runs(seg, n, idx, val, acc),
            (_, Values::I8(val)) => kernel.i8_runs(seg, n, idx, val, acc),
            (_, Values::I16(val)) => kernel.i8_runs_i16(seg, n, idx, val, acc),
        }
    });
}

/// T2 codes are t + 1: every row's sum carries +Σx, removed once per row.
fn t2_bias(format: Format, val: Values<'_>) -> i32 {
    match (format, val) {
        (Format::T2, Values::I8(val)) => val.iter().map(|&v| i32::from(v)).sum(),
        _ => 0,
    }
}
