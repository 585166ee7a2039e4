//! Walking a product's column runs: [`Lines`] (one output line of a tile, each kept column's run
//! at a fixed stride), [`for_each_segment`] (a product's output lines, tile by tile), and on x86
//! the run kernels' helpers (the group of four kept columns being swept, and prefetching the runs
//! ahead of it). The kernels of every ISA build on these; nothing here depends on them.

use crate::layout::{ColumnTiles, LINES_PER_TILE, LINE_BYTES};

/// One output line of one batch: the line of column j starts at `tile[first + j * stride]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Lines<'a> {
    pub tile: &'a [u8],
    pub first: usize,
    pub stride: usize,
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
mod x86 {
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
    /// most of each DRAM latency exposed; leads of 4-24 KB measure alike, and into L1 (`T0`) or as
    /// `NTA` far worse (`examples/cold_matvec.rs`, with and without the lead).
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
#[cfg(target_arch = "x86_64")]
pub(crate) use x86::*;
