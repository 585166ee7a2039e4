//! Sparse column-gather matvec: y = W·x_sparse, reading only the weight columns of the kept
//! inputs. The dense product is the same kernel with every column kept.
//!
//! One driver serves every format and ISA. It checks the input once; splits the work across the
//! rayon workers (small products stay on one thread) — dense-ish integer products by kept
//! columns, each worker streaming one contiguous stretch of every tile and the int32 partial sums
//! added exactly; sparse or tall ones and float formats by output lines, so no reduction reorders
//! a row's sum — and, per tile, hands the per-format, per-ISA *run kernel* the kept columns. A run
//! kernel sweeps each kept column's run (the column's lines for the tile, see `layout`) from first
//! line to last, four columns at a time, prefetching the next four runs line by line, and adds
//! into per-row accumulators that stay in L1: DRAM sees long sequential reads and skipped columns
//! cost nothing. Integer formats accumulate exactly in integers and apply (γ/127)·scale_i once per
//! row; float formats keep one FMA chain per row in column order, so SIMD and scalar agree bit
//! for bit.

use std::cell::RefCell;

use rayon::prelude::*;

use crate::isa::Isa;
use crate::layout::{ColumnTiles, Format, LINES_PER_TILE, LINE_BYTES, MAX_LINE_ROWS};
use crate::topk::Sparse;

/// Below this many weight bytes per product, threading costs more than it saves. (Lowered from
/// 256 KB: a cold 576 x 576 int8 product at S = 0.5, 166 KB, took 24.3 µs on two threads against
/// 25.7 on one, `examples/cold_matvec.rs`; a small gain, and the executor's workers are awake.)
pub const PARALLEL_MIN_BYTES: usize = 96 * 1024;

/// The sparse activation a product consumes.
#[derive(Debug, Clone, Copy)]
pub enum Input<'a> {
    /// int8 activations (for T2 and I8 weights) with their dequantization factor γ/127.
    I8 { x: &'a Sparse<i8>, scale: f32 },
    /// int8 activations plus a few columns whose activations are kept out of the int8 quantization
    /// (T2 and I8 weights): the executor's massive outliers, which would otherwise flatten
    /// everything else to a handful of levels. Row r gets s_r·(scale·Σ q·w + f_r), f_r = Σ v·w over
    /// `exact` summed in f32 in its order. With I8 weights [`Input::I16`] is the fast form.
    Mixed {
        x: &'a Sparse<i8>,
        scale: f32,
        exact: &'a Sparse<f32>,
    },
    /// int8-scale activations held as int16 (I8 weights only): a few entries beyond ±127 (the
    /// executor's activation outliers, quantized at the same scale) keep their precision in the
    /// one integer pass, whose `vpmaddwd` takes int16 as readily as int8. 32 outliers cost within
    /// ±5% this way and +16-31% as f32 columns (`Mixed`) on SmolLM2's gate/up and lm_head shapes
    /// (`examples/mixed_cost.rs`, 2 threads, 4 runs).
    I16 { x: &'a Sparse<i16>, scale: f32 },
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

/// One output line of one batch: the line of column j starts at `tile[first + j * stride]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Lines<'a> {
    pub tile: &'a [u8],
    pub first: usize,
    pub stride: usize,
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
        // serves worse than the reduction costs. On the AVX2 development machine the rows won at
        // S = 0.5; on the Zen4 machines the columns win (SmolLM2 int8 at S = 0.5, `qsparse bench
        // --profile`, 3 interleaved pairs: down 600-640 µs a token against 833-869, q/k/v 462-479
        // against 482-509, o 303-329 against 336-354; decode 260-272 tok/s against 221-234).
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
        // Block by block, so that every loop below is a plain zip the compiler vectorizes. A
        // per-row sum over the workers' strided parts ran 6-7 cycles a row after the workers had
        // finished (SmolLM2 dense: 2.3 µs per 576-row product, 9.3 per 3072-row one, ~0.5 ms a
        // token); the blocked form made dense decode 2.7% faster (11 interleaved rounds).
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

/// From this many output lines (8 full tiles) integer products always split the rows:
/// SmolLM2's lm_head (576 x 49152 int8) took 1.61-1.71 ms per token against 1.69-1.94 split by
/// columns (3 interleaved pairs of `qsparse bench --profile`).
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
    /// int16 partial sums of the T2 kernels.
    static T2_SCRATCH: RefCell<Vec<i16>> = const { RefCell::new(Vec::new()) };
    /// int32 sums of the four-column int8 kernel, in its interleaved row order.
    static I8_SCRATCH: RefCell<Vec<i32>> = const { RefCell::new(Vec::new()) };
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
            (Format::T2, Values::I8(val)) => T2_SCRATCH.with_borrow_mut(|scratch| {
                scratch.resize(scratch.len().max(n * MAX_LINE_ROWS), 0);
                kernel.t2_runs(seg, n, idx, val, acc, scratch)
            }),
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

/// Calls `f(segment, n, at)` for each tile's part of the output lines line0 .. line0 + lines:
/// `segment` addresses its first line (column j's run part starts at first + j·stride), `n` is
/// its number of lines and `at` its first line relative to line0.
pub(crate) fn for_each_segment(
    w: &ColumnTiles<'_>,
    line0: usize,
    lines: usize,
    mut f: impl FnMut(Lines<'_>, usize, usize),
) {
    let mut line = line0;
    let end = line0 + lines;
    while line < end {
        let t = line / LINES_PER_TILE;
        let (s0, s1) = (
            line % LINES_PER_TILE,
            (end - t * LINES_PER_TILE).min(w.tile_lines(t)),
        );
        let seg = Lines {
            tile: w.tile(t),
            first: s0 * LINE_BYTES,
            stride: w.tile_lines(t) * LINE_BYTES,
        };
        f(seg, s1 - s0, line - line0);
        line = t * LINES_PER_TILE + s1;
    }
}

/// Helpers of the x86 run kernels: the group of four kept columns being swept, and prefetching
/// the next group's runs line by line.
#[cfg(target_arch = "x86_64")]
pub(crate) mod runs {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_NTA, _MM_HINT_T1};

    use super::Lines;
    use crate::layout::{LINES_PER_TILE, LINE_BYTES};

    /// The start of each kept column's run for the group of four at position p (p < idx.len());
    /// past the end, the group repeats the first column.
    #[inline(always)]
    pub unsafe fn runs4(l: &Lines<'_>, idx: &[u32], p: usize) -> [*const u8; 4] {
        let base = l.tile.as_ptr();
        let mut c = [base; 4];
        for (q, c) in c.iter_mut().enumerate() {
            let at = if p + q < idx.len() { p + q } else { p };
            // SAFETY: at < idx.len(); indices are < d_in, so the run lies inside the tile.
            *c = unsafe { base.add(l.first + *idx.get_unchecked(at) as usize * l.stride) };
        }
        c
    }

    /// The runs and activations of the group of four at position p; past the end, the group is
    /// padded with the first column times zero (exact for integer sums; float kernels never use the
    /// padding).
    #[inline(always)]
    pub unsafe fn group4<T: Copy + Default>(
        l: &Lines<'_>,
        idx: &[u32],
        val: &[T],
        p: usize,
    ) -> ([*const u8; 4], [T; 4]) {
        let mut v = [T::default(); 4];
        for (q, v) in v.iter_mut().enumerate() {
            if p + q < idx.len() {
                // SAFETY: p + q < idx.len() == val.len().
                *v = unsafe { *val.get_unchecked(p + q) };
            }
        }
        // SAFETY: p < idx.len().
        (unsafe { runs4(l, idx, p) }, v)
    }

    /// The runs of the group at position p, if any.
    #[inline(always)]
    pub unsafe fn next_runs(l: &Lines<'_>, idx: &[u32], p: usize) -> Option<[*const u8; 4]> {
        // SAFETY: runs4 is called only with p < idx.len().
        (p < idx.len()).then(|| unsafe { runs4(l, idx, p) })
    }

    /// How far ahead of the group being computed its runs are requested into L2: about this many
    /// bytes of kept runs. The hardware prefetchers do not keep up with four interleaved run
    /// streams that start and stop, and a one-group lead (under 2.5 KB on 576-row outputs) leaves
    /// most of each DRAM latency exposed. On the Zen4 machines (SmolLM2 int8, `qsparse bench`, 2
    /// threads, two alternated rounds) an 8 KB lead took decode from 137 to 190-204 tok/s dense
    /// and from 170-196 to 245-260 at S = 0.5; 4-24 KB all measured within the noise of it, and
    /// the lead into L1 (`T0`) or as `NTA` gained far less (`examples/cold_matvec.rs`: 1536 x 576
    /// dense 82 µs with no lead, 32 into L2, 78 into L1, 56 as NTA).
    const FAR_BYTES: usize = 8192;

    /// Kept columns from a group to the one it requests into L2, by run length in lines: whole
    /// groups of four, about [`FAR_BYTES`] of runs.
    const FAR_LEAD: [usize; LINES_PER_TILE + 1] = {
        let mut t = [0; LINES_PER_TILE + 1];
        let mut n = 0;
        while n <= LINES_PER_TILE {
            let n1 = if n == 0 { 1 } else { n };
            t[n] = 4 * FAR_BYTES.div_ceil(4 * n1 * LINE_BYTES);
            n += 1;
        }
        t
    };

    /// What the group being computed prefetches, line by line as it sweeps its own runs: the next
    /// group's lines (non-temporal, so they arrive in L1 just in time without displacing the
    /// step's reused data from L2) and the lines of the group about [`FAR_BYTES`] further on
    /// (into L2, so their DRAM latency is hidden well before they are needed).
    pub struct Prefetch {
        next: Option<[*const u8; 4]>,
        far: Option<[*const u8; 4]>,
    }

    impl Prefetch {
        /// For the group computed just before position `p`, in a segment of `n` lines a run.
        #[inline(always)]
        pub unsafe fn before(l: &Lines<'_>, idx: &[u32], p: usize, n: usize) -> Prefetch {
            // A table, not a division per group: runs are at most LINES_PER_TILE lines.
            let lead = FAR_LEAD[n.min(LINES_PER_TILE)];
            // SAFETY: next_runs checks its position against idx.len().
            unsafe {
                Prefetch {
                    next: next_runs(l, idx, p),
                    far: next_runs(l, idx, p + lead),
                }
            }
        }

        /// Prefetches line s of the runs ahead (s < n).
        #[inline(always)]
        pub unsafe fn line(&self, s: usize) {
            if let Some(runs) = self.next {
                for r in runs {
                    // SAFETY: prefetching is a hint; the address is inside the run's tile.
                    unsafe { _mm_prefetch::<_MM_HINT_NTA>(r.add(LINE_BYTES * s) as *const i8) };
                }
            }
            if let Some(runs) = self.far {
                for r in runs {
                    // SAFETY: as above.
                    unsafe { _mm_prefetch::<_MM_HINT_T1>(r.add(LINE_BYTES * s) as *const i8) };
                }
            }
        }
    }
}

/// The run kernels chosen for one product: decided once per call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kernel {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512 {
        vnni: bool,
        gfni: bool,
    },
    #[cfg(target_arch = "aarch64")]
    Neon,
}

#[cfg(target_arch = "aarch64")]
use crate::gather_neon as neon;
#[cfg(target_arch = "x86_64")]
use crate::{gather_avx2 as avx2, gather_avx512 as avx512};

/// `$e` with the const `$B` = `batch` (1..=8: [`crate::gather_batch::MAX_BATCH`]), so that each
/// batch size runs a kernel compiled for it.
macro_rules! by_batch {
    ($batch:expr, $B:ident => $e:expr) => {
        by_batch!(@arms $batch, $B, $e; 1, 2, 3, 4, 5, 6, 7)
    };
    (@arms $batch:expr, $B:ident, $e:expr; $($n:literal),*) => {{
        const _: () = assert!(crate::gather_batch::MAX_BATCH == 8, "an arm per batch");
        match $batch {
            $($n => {
                const $B: usize = $n;
                $e
            })*
            _ => {
                const $B: usize = 8;
                $e
            }
        }
    }};
}

impl Kernel {
    /// The kernels for `isa`, if this CPU has it (else the scalar reference).
    pub(crate) fn select(isa: Isa) -> Kernel {
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 if crate::isa::x86::v4().is_some() => Kernel::Avx512 {
                vnni: crate::isa::x86::has_vnni(),
                gfni: crate::isa::x86::has_gfni(),
            },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 if crate::isa::x86::v3().is_some() => Kernel::Avx2,
            #[cfg(target_arch = "aarch64")]
            Isa::Neon if pulp::aarch64::Neon::try_new().is_some() => Kernel::Neon,
            _ => Kernel::Scalar,
        }
    }

    /// acc[line][r] += Σ_p x_p · (t + 1)(row, column idx[p]) over `n` lines of T2 weights,
    /// sweeping each kept column's run in order. `scratch` holds n · 256 int16 partial sums.
    fn t2_runs(
        self,
        l: Lines<'_>,
        n: usize,
        idx: &[u32],
        val: &[i8],
        acc: &mut [i32],
        scratch: &mut [i16],
    ) {
        // SAFETY (SIMD arms): `select` returned this kernel only after its pulp token proved the
        // CPU features (AVX-512 implies AVX2, whose T2 kernels it uses; `gfni` was detected);
        // every index is < d_in (checked in gather_matvec), so every run lies in the tile; acc
        // holds n · 256 rows.
        let _ = &scratch;
        match self {
            Kernel::Scalar => scalar::t2_runs(l, n, idx, val, acc),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 { gfni: true, .. } => unsafe {
                avx2::t2_runs_gfni(l, n, idx, val, acc, scratch)
            },
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 | Kernel::Avx512 { .. } => unsafe {
                avx2::t2_runs(l, n, idx, val, acc, scratch)
            },
            #[cfg(target_arch = "aarch64")]
            Kernel::Neon => unsafe { neon::t2_runs(l, n, idx, val, acc) },
        }
    }

    /// acc[line][r] += Σ_p x_p · w(row, column idx[p]) over `n` lines of int8 weights, sweeping
    /// each kept column's run in order (a few columns at a time) so DRAM streams whole runs.
    fn i8_runs(self, l: Lines<'_>, n: usize, idx: &[u32], val: &[i8], acc: &mut [i32]) {
        // SAFETY (SIMD arms): as in t2_line; acc holds n · 64 rows.
        match self {
            Kernel::Scalar => scalar::i8_runs(l, n, idx, val, acc),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => unsafe { avx2::i8_runs::<1, _>(l, n, idx, val, acc) },
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 { vnni: true, .. } => unsafe {
                avx512::i8_runs_vnni::<1, _>(l, n, idx, val, acc)
            },
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 { vnni: false, .. } => unsafe {
                avx512::i8_runs::<1, _>(l, n, idx, val, acc)
            },
            #[cfg(target_arch = "aarch64")]
            Kernel::Neon => unsafe { neon::i8_runs::<1, _>(l, n, idx, val, acc) },
        }
    }

    /// As `i8_runs`, with int16 activations ([`Input::I16`]: int8 values plus outliers, the
    /// executor's default int8 input): the AVX2 kernel's `vpmaddwd` takes them as they are, as
    /// does NEON's `vmlal`. AVX-512 machines use the AVX2 kernel too: the AVX-512 one (VNNI)
    /// decoded SmolLM2 dense at 210-224 tok/s against 216-239 (4 alternated pairs; S = 0.5
    /// alike), a memory-bound product where the wider form only adds µops on Zen4.
    pub(crate) fn i8_runs_i16(
        self,
        l: Lines<'_>,
        n: usize,
        idx: &[u32],
        val: &[i16],
        acc: &mut [i32],
    ) {
        match self {
            // SAFETY: as in i8_runs (AVX-512 implies AVX2).
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 | Kernel::Avx512 { .. } => unsafe {
                avx2::i8_runs::<1, _>(l, n, idx, val, acc)
            },
            // SAFETY: as in i8_runs.
            #[cfg(target_arch = "aarch64")]
            Kernel::Neon => unsafe { neon::i8_runs::<1, _>(l, n, idx, val, acc) },
            Kernel::Scalar => scalar::i8_runs(l, n, idx, val, acc),
        }
    }

    /// Ternary codes against `batch` int8 activation vectors at once ([`crate::gather_batch`]):
    /// acc[line][vector][256 rows] of Σ (t + 1)·x, values[p · batch + t] vector t's value at
    /// column idx[p].
    pub(crate) fn t2_runs_batch(
        self,
        l: Lines<'_>,
        n: usize,
        idx: &[u32],
        values: &[i8],
        batch: usize,
        acc: &mut [i32],
    ) {
        match self {
            // SAFETY: as in t2_runs (AVX-512 implies AVX2; `gfni` was detected); acc holds
            // n · batch · 256 rows; the scratch is sized here.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 | Kernel::Avx512 { .. } => T2_SCRATCH.with_borrow_mut(|scratch| {
                scratch.resize(scratch.len().max(n * batch * MAX_LINE_ROWS), 0);
                let gfni = matches!(self, Kernel::Avx512 { gfni: true, .. });
                unsafe {
                    by_batch!(batch, B => if gfni {
                        avx2::t2_runs_batch_gfni::<B>(l, n, idx, values, acc, scratch)
                    } else {
                        avx2::t2_runs_batch::<B>(l, n, idx, values, acc, scratch)
                    })
                }
            }),
            _ => scalar::t2_runs_batch(l, n, idx, values, batch, acc),
        }
    }

    /// As `i8_runs_i16`, for `batch` activation vectors at once ([`crate::gather_batch`]):
    /// acc[line][vector][64 rows], values[p · batch + t] vector t's value at column idx[p].
    pub(crate) fn i8_runs_batch(
        self,
        l: Lines<'_>,
        n: usize,
        idx: &[u32],
        values: &[i16],
        batch: usize,
        acc: &mut [i32],
    ) {
        match self {
            // SAFETY: as in i8_runs (AVX-512 implies AVX2); acc holds n · batch · 64 rows.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => unsafe {
                by_batch!(batch, B => avx2::i8_runs::<B, i16>(l, n, idx, values, acc))
            },
            // (With VNNI the batch driver sends int8 values to `i8_runs_batch_int8` and only the
            // outliers' remainders, one vector at a time, to `i8_runs_i16`.)
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 { .. } => unsafe {
                by_batch!(batch, B => avx512::i8_runs::<B, i16>(l, n, idx, values, acc))
            },
            // SAFETY: as in i8_runs; acc holds n · batch · 64 rows.
            #[cfg(target_arch = "aarch64")]
            Kernel::Neon => unsafe {
                by_batch!(batch, B => neon::i8_runs::<B, i16>(l, n, idx, values, acc))
            },
            Kernel::Scalar => scalar::i8_runs_batch(l, n, idx, values, batch, acc),
        }
    }

    /// Whether [`Kernel::i8_runs_batch_int8`] runs here: AVX-512 with VNNI's `vpdpbusd`.
    pub(crate) fn has_int8_dot(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        if let Kernel::Avx512 { vnni: true, .. } = self {
            return true;
        }
        false
    }

    /// As `i8_runs_batch` for int8 values, four columns a multiply (`vpdpbusd`), where
    /// [`Kernel::has_int8_dot`]: acc[line][vector][64 rows] += Σ_p (w + 128)·x_p, the sums in
    /// row order (added to what acc holds), each row carrying 128·Σ_p x_p for the caller to
    /// remove.
    pub(crate) fn i8_runs_batch_int8(
        self,
        l: Lines<'_>,
        n: usize,
        idx: &[u32],
        values: &[i8],
        batch: usize,
        acc: &mut [i32],
    ) {
        assert!(self.has_int8_dot(), "i8_runs_batch_int8 needs AVX-512 VNNI");
        #[cfg(target_arch = "x86_64")]
        I8_SCRATCH.with_borrow_mut(|scratch| {
            scratch.resize(scratch.len().max(n * batch * 64), 0);
            // SAFETY: `has_int8_dot` means `select` found AVX-512 F/BW/VL and VNNI; every
            // index is < d_in, so every run lies in the tile; acc and scratch hold n · batch ·
            // 64 rows.
            unsafe {
                by_batch!(batch, B => avx512::i8_runs_dpbusd::<B>(l, n, idx, values, acc, scratch))
            }
        });
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (l, n, idx, values, batch, acc);
    }

    /// acc[row] = fma(w(row, idx[p]), x_p, acc[row]) in order of p, over `n` lines of a float
    /// format, sweeping each kept column's run in order.
    fn float_runs(
        self,
        format: Format,
        l: Lines<'_>,
        n: usize,
        idx: &[u32],
        val: &[f32],
        acc: &mut [f32],
    ) {
        // SAFETY (SIMD arms): as in t2_line; acc holds n lines of the format's rows.
        match (self, format) {
            #[cfg(target_arch = "x86_64")]
            (Kernel::Avx512 { .. }, Format::F16) => unsafe {
                avx512::f16_runs(l, n, idx, val, acc)
            },
            #[cfg(target_arch = "x86_64")]
            (Kernel::Avx512 { .. }, _) => unsafe { avx512::f32_runs(l, n, idx, val, acc) },
            _ => self.float_runs_batch(format, l, n, idx, val, 1, acc),
        }
    }

    /// As `float_runs`, for `batch` activation vectors at once ([`crate::gather_batch`]):
    /// acc[line][vector][rows], values[p · batch + t] vector t's value at column idx[p]; each
    /// vector's sums bit for bit those of its own product.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn float_runs_batch(
        self,
        format: Format,
        l: Lines<'_>,
        n: usize,
        idx: &[u32],
        values: &[f32],
        batch: usize,
        acc: &mut [f32],
    ) {
        // SAFETY (SIMD arms): as in t2_line (AVX-512 implies AVX2); acc holds n · batch lines of
        // the format's rows.
        match self {
            Kernel::Scalar => scalar::float_runs_batch(format, l, n, idx, values, batch, acc),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 | Kernel::Avx512 { .. } => unsafe {
                by_batch!(batch, B => avx2::float_runs::<B>(format, l, n, idx, values, acc))
            },
            #[cfg(target_arch = "aarch64")]
            Kernel::Neon => unsafe {
                by_batch!(batch, B => neon::float_runs::<B>(format, l, n, idx, values, acc))
            },
        }
    }
}

/// The reference kernels: plain loops over the layout's definition.
pub(crate) mod scalar {
    use super::*;
    use half::f16;

    pub fn t2_runs(l: Lines<'_>, n: usize, idx: &[u32], val: &[i8], acc: &mut [i32]) {
        t2_runs_batch(l, n, idx, val, 1, acc)
    }

    /// acc[(s · batch + t) · 256 + r] += code(row r of line s, column idx[p]) · values[p · batch
    /// + t], codes t + 1 (the caller removes Σx): `batch` activation vectors at once.
    pub fn t2_runs_batch(
        l: Lines<'_>,
        n: usize,
        idx: &[u32],
        values: &[i8],
        batch: usize,
        acc: &mut [i32],
    ) {
        integer_runs_batch(l, n, idx, values, batch, acc, MAX_LINE_ROWS, |line, r| {
            let (byte, shift) = crate::layout::t2_position(r);
            i32::from((line[byte] >> shift) & 3)
        })
    }

    /// acc[(s · batch + t) · rows + r] += weight(line s of column idx[p], r) · values[p · batch
    /// + t]: the integer formats' reference, `weight` decoding row r of a line.
    #[allow(clippy::too_many_arguments)]
    fn integer_runs_batch<V: Copy + Into<i16>>(
        l: Lines<'_>,
        n: usize,
        idx: &[u32],
        values: &[V],
        batch: usize,
        acc: &mut [i32],
        rows: usize,
        weight: impl Fn(&[u8], usize) -> i32,
    ) {
        for (p, &j) in idx.iter().enumerate() {
            for s in 0..n {
                let line = run_line(&l, j, s);
                for t in 0..batch {
                    let v = i32::from(values[p * batch + t].into());
                    let a = &mut acc[(s * batch + t) * rows..][..rows];
                    for (r, a) in a.iter_mut().enumerate() {
                        *a += v * weight(line, r);
                    }
                }
            }
        }
    }

    /// Line s of column j's run.
    fn run_line<'t>(l: &Lines<'t>, j: u32, s: usize) -> &'t [u8] {
        let at = l.first + j as usize * l.stride + s * LINE_BYTES;
        &l.tile[at..at + LINE_BYTES]
    }

    pub fn i8_runs<V: Copy + Into<i16>>(
        l: Lines<'_>,
        n: usize,
        idx: &[u32],
        val: &[V],
        acc: &mut [i32],
    ) {
        i8_runs_batch(l, n, idx, val, 1, acc)
    }

    /// acc[(s · batch + t) · 64 + r] += w(row r of line s, column idx[p]) · values[p · batch + t]
    /// over `n` lines: `batch` activation vectors at once ([`crate::gather_batch`]).
    pub fn i8_runs_batch<V: Copy + Into<i16>>(
        l: Lines<'_>,
        n: usize,
        idx: &[u32],
        values: &[V],
        batch: usize,
        acc: &mut [i32],
    ) {
        integer_runs_batch(l, n, idx, values, batch, acc, 64, |line, r| {
            i32::from(line[r] as i8)
        })
    }

    /// acc[(s · batch + t) · rows + r] = fma(w(row r of line s, column idx[p]), values[p · batch
    /// + t], ·) in order of p, over `n` lines of f16 or f32 weights.
    pub fn float_runs_batch(
        format: Format,
        l: Lines<'_>,
        n: usize,
        idx: &[u32],
        values: &[f32],
        batch: usize,
        acc: &mut [f32],
    ) {
        let (size, weight): (usize, fn(&[u8]) -> f32) = match format {
            Format::F16 => (2, |w| f16::from_le_bytes([w[0], w[1]]).to_f32()),
            _ => (4, |w| f32::from_le_bytes([w[0], w[1], w[2], w[3]])),
        };
        let rows = LINE_BYTES / size;
        for (p, &j) in idx.iter().enumerate() {
            for s in 0..n {
                let line = run_line(&l, j, s);
                for t in 0..batch {
                    let v = values[p * batch + t];
                    let a = &mut acc[(s * batch + t) * rows..][..rows];
                    for (a, w) in a.iter_mut().zip(line.chunks_exact(size)) {
                        *a = weight(w).mul_add(v, *a);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::PackedMatrix;
    use rand::rngs::SmallRng;
    use rand::seq::SliceRandom;
    use rand::{Rng, SeedableRng};

    /// Every kernel set this CPU can run, including feature combinations `select` passes over
    /// (AVX-512 without VNNI or GFNI), so each SIMD form meets the scalar reference somewhere.
    fn kernels() -> Vec<Kernel> {
        #[allow(unused_mut)]
        let mut v = vec![Kernel::Scalar];
        #[cfg(target_arch = "x86_64")]
        {
            use crate::isa::x86;
            if x86::v3().is_some() {
                v.push(Kernel::Avx2);
            }
            if x86::v4().is_some() {
                for vnni in [false, true] {
                    for gfni in [false, true] {
                        if (!vnni || x86::has_vnni()) && (!gfni || x86::has_gfni()) {
                            v.push(Kernel::Avx512 { vnni, gfni });
                        }
                    }
                }
            }
        }
        #[cfg(target_arch = "aarch64")]
        if pulp::aarch64::Neon::try_new().is_some() {
            v.push(Kernel::Neon);
        }
        v
    }

    /// The integer run kernels of every kernel set against the scalar ones, segment by segment:
    /// int8 and int16 values, batches of 1-8 vectors, T2 codes, and the four-column int8 form
    /// (its sums carry 128·Σx per vector). Odd column counts leave a partial group of four.
    #[test]
    fn every_integer_run_kernel_equals_the_scalar_one() {
        let mut rng = SmallRng::seed_from_u64(21);
        let (d_in, d_out) = (45, 600);
        let w: Vec<f32> = (0..d_in * d_out)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        let (i8m, t2m) = (
            PackedMatrix::i8_from_f32(&w, d_out, d_in),
            PackedMatrix::t2_from_f32(&w, d_out, d_in),
        );
        let mut idx: Vec<u32> = (0..d_in as u32).filter(|_| rng.random_bool(0.7)).collect();
        idx.shuffle(&mut rng);
        let batch_values = |rng: &mut SmallRng, b: usize, wide: bool| -> Vec<i16> {
            (0..idx.len() * b)
                .map(|i| match i % 7 {
                    3 if wide => rng.random_range(-32767..=32767),
                    _ => rng.random_range(-127..=127),
                })
                .collect()
        };
        for k in kernels() {
            let what = format!("{k:?}");
            for_each_segment(&i8m.view(), 0, i8m.view().n_lines(), |seg, n, _| {
                let run = |f: &dyn Fn(Kernel, &mut [i32]), b: usize| {
                    let (mut got, mut want) = (vec![0; n * b * 64], vec![0; n * b * 64]);
                    f(k, &mut got);
                    f(Kernel::Scalar, &mut want);
                    (got, want)
                };
                let v8: Vec<i8> = batch_values(&mut rng, 1, false)
                    .iter()
                    .map(|&v| v as i8)
                    .collect();
                let (got, want) = run(&|k, acc| k.i8_runs(seg, n, &idx, &v8, acc), 1);
                assert_eq!(got, want, "{what} i8_runs");
                let v16 = batch_values(&mut rng, 1, true);
                let (got, want) = run(&|k, acc| k.i8_runs_i16(seg, n, &idx, &v16, acc), 1);
                assert_eq!(got, want, "{what} i8_runs_i16");
                for b in [1, 3, MAX_BATCH_ROWS] {
                    let v = batch_values(&mut rng, b, true);
                    let (got, want) = run(&|k, acc| k.i8_runs_batch(seg, n, &idx, &v, b, acc), b);
                    assert_eq!(got, want, "{what} i8_runs_batch B={b}");
                    if k.has_int8_dot() {
                        let v8: Vec<i8> = batch_values(&mut rng, b, false)
                            .iter()
                            .map(|&v| v as i8)
                            .collect();
                        let mut got = vec![0; n * b * 64];
                        k.i8_runs_batch_int8(seg, n, &idx, &v8, b, &mut got);
                        let mut want = vec![0; n * b * 64];
                        scalar::i8_runs_batch(seg, n, &idx, &v8, b, &mut want);
                        for (r, w) in want.iter_mut().enumerate() {
                            let t = r / 64 % b;
                            *w += 128
                                * v8.iter()
                                    .skip(t)
                                    .step_by(b)
                                    .map(|&x| i32::from(x))
                                    .sum::<i32>();
                        }
                        assert_eq!(got, want, "{what} i8_runs_batch_int8 B={b}");
                    }
                }
            });
            for_each_segment(&t2m.view(), 0, t2m.view().n_lines(), |seg, n, _| {
                let v8: Vec<i8> = (0..idx.len())
                    .map(|_| rng.random_range(-127..=127))
                    .collect();
                let mut scratch = vec![0i16; n * MAX_LINE_ROWS];
                let (mut got, mut want) = (vec![0; n * 256], vec![0; n * 256]);
                k.t2_runs(seg, n, &idx, &v8, &mut got, &mut scratch);
                scalar::t2_runs(seg, n, &idx, &v8, &mut want);
                assert_eq!(got, want, "{what} t2_runs");
                for b in [1, 3, MAX_BATCH_ROWS] {
                    let v: Vec<i8> = (0..idx.len() * b)
                        .map(|_| rng.random_range(-127..=127))
                        .collect();
                    let (mut got, mut want) = (vec![0; n * b * 256], vec![0; n * b * 256]);
                    k.t2_runs_batch(seg, n, &idx, &v, b, &mut got);
                    scalar::t2_runs_batch(seg, n, &idx, &v, b, &mut want);
                    assert_eq!(got, want, "{what} t2_runs_batch B={b}");
                }
            });
        }
    }

    /// The largest batch the run kernels take.
    const MAX_BATCH_ROWS: usize = crate::gather_batch::MAX_BATCH;
}
