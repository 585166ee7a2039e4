//! AVX2 tile kernels for [`crate::gather`], the fast path on CPUs without AVX-512 (including
//! the machines qsparse is developed on).
//!
//! Callers guarantee (checked once in `gather_matvec`): the CPU has AVX2, FMA and F16C, `tile`
//! holds d_in whole 64-byte column chunks, every kept index is < d_in, and `y` (and `row_scale`
//! for integer formats) hold y.len() <= the format's tile rows.

use std::arch::x86_64::*;

use crate::gather::scalar::finish;
use crate::layout::{CHUNK_BYTES, MAX_TILE_ROWS};
use crate::topk::Sparse;

/// How many kept columns ahead to prefetch (their indices are known in advance): 16 lines,
/// about one memory latency of streaming at this core's share of the bandwidth.
const PREFETCH_AHEAD: usize = 16;

#[inline(always)]
unsafe fn prefetch(p: *const u8) {
    _mm_prefetch::<_MM_HINT_T0>(p as *const i8);
}

/// The column pair at kept positions p, p + 1 (an odd last column pairs with itself times zero),
/// with the chunks `PREFETCH_AHEAD` positions on requested.
#[inline(always)]
unsafe fn pair(base: *const u8, x: &Sparse<i8>, p: usize) -> (*const u8, *const u8, i8, i8) {
    let (idx, val) = (&x.indices[..], &x.values[..]);
    let n = idx.len();
    // SAFETY: p < n and p + 1 < n where read; indices are < d_in, so chunks lie in the tile.
    unsafe {
        let (j1, v1) = (*idx.get_unchecked(p) as usize, *val.get_unchecked(p));
        let (j2, v2) = if p + 1 < n {
            (
                *idx.get_unchecked(p + 1) as usize,
                *val.get_unchecked(p + 1),
            )
        } else {
            (j1, 0)
        };
        if p + PREFETCH_AHEAD + 1 < n {
            prefetch(base.add(*idx.get_unchecked(p + PREFETCH_AHEAD) as usize * CHUNK_BYTES));
            prefetch(base.add(*idx.get_unchecked(p + PREFETCH_AHEAD + 1) as usize * CHUNK_BYTES));
        }
        (
            base.add(j1 * CHUNK_BYTES),
            base.add(j2 * CHUNK_BYTES),
            v1,
            v2,
        )
    }
}

/// Ternary 2-bit codes, two kept columns at a time: each 32-row group's 8 code bytes are
/// broadcast and shifted into row order (`vpsrlvq`), the two columns' codes interleaved, and
/// `vpmaddubsw` multiplies them (unsigned) by the (x1, x2) pair (signed). int16 sums are flushed
/// to int32 every 64 pairs (64 · 2 · 2 · 127 < 2^15); Σx is subtracted at the end.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn t2(tile: &[u8], x: &Sparse<i8>, scale: f32, row_scale: &[f32], y: &mut [f32]) {
    const BPC: usize = CHUNK_BYTES;
    let base = tile.as_ptr();
    let n = x.indices.len();
    let x_sum: i32 = x.values.iter().map(|&v| i32::from(v)).sum();
    let shifts = _mm256_setr_epi64x(0, 2, 4, 6);
    let three = _mm256_set1_epi8(3);
    let mut total = [0i32; MAX_TILE_ROWS];
    // Two halves of 128 rows (4 groups) keep the 8 accumulators in registers.
    for half in 0..2 {
        let mut p = 0;
        while p < n {
            let end = (p + 128).min(n);
            let mut acc = [_mm256_setzero_si256(); 8];
            while p < end {
                // SAFETY: p < n; both chunks lie in the tile and hold 64 bytes.
                unsafe {
                    let (c1, c2, v1, v2) = pair(base, x, p);
                    let (c1, c2) = (c1.add(half * BPC / 2), c2.add(half * BPC / 2));
                    let xp = _mm256_set1_epi16(
                        ((u16::from(v2 as u8) << 8) | u16::from(v1 as u8)) as i16,
                    );
                    for g in 0..4 {
                        let decode = |c: *const u8| {
                            // c + 8g + 8 <= c + 32: inside the half chunk.
                            let q = (c.add(8 * g) as *const i64).read_unaligned();
                            _mm256_and_si256(
                                _mm256_srlv_epi64(_mm256_set1_epi64x(q), shifts),
                                three,
                            )
                        };
                        let (a, b) = (decode(c1), decode(c2));
                        acc[2 * g] = _mm256_add_epi16(
                            acc[2 * g],
                            _mm256_maddubs_epi16(_mm256_unpacklo_epi8(a, b), xp),
                        );
                        acc[2 * g + 1] = _mm256_add_epi16(
                            acc[2 * g + 1],
                            _mm256_maddubs_epi16(_mm256_unpackhi_epi8(a, b), xp),
                        );
                    }
                }
                p += 2;
            }
            // "lo" words 0-7 are rows 0-7 of the group, words 8-15 rows 16-23; "hi" rows 8-15, 24-31.
            for g in 0..4 {
                let row0 = half * MAX_TILE_ROWS / 2 + 32 * g;
                for (part, a) in [(0, acc[2 * g]), (8, acc[2 * g + 1])] {
                    let mut w = [0i16; 16];
                    // SAFETY: w holds 16 int16.
                    unsafe { _mm256_storeu_si256(w.as_mut_ptr() as *mut __m256i, a) };
                    for (i, &v) in w.iter().enumerate() {
                        total[row0 + part + (i / 8) * 16 + i % 8] += i32::from(v);
                    }
                }
            }
        }
    }
    for t in total.iter_mut() {
        *t -= x_sum;
    }
    finish(&total, scale, row_scale, y);
}

/// int8 weights (64 rows), two kept columns at a time: each column's 16-row slices are widened
/// to int16, interleaved pairwise and multiplied by the (x1, x2) pair with `vpmaddwd`;
/// interleaving permutes rows inside 128-bit lanes, undone once at the end.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn i8(tile: &[u8], x: &Sparse<i8>, scale: f32, row_scale: &[f32], y: &mut [f32]) {
    let base = tile.as_ptr();
    let n = x.indices.len();
    let mut acc = [_mm256_setzero_si256(); 8];
    let mut p = 0;
    while p < n {
        // SAFETY: p < n; the chunks lie in the tile and hold 64 bytes.
        unsafe {
            let (c1, c2, v1, v2) = pair(base, x, p);
            let xp = _mm256_set1_epi32(
                ((u32::from(v2 as i16 as u16) << 16) | u32::from(v1 as i16 as u16)) as i32,
            );
            for b in 0..4 {
                let a = _mm256_cvtepi8_epi16(_mm_loadu_si128(c1.add(16 * b) as *const __m128i));
                let w = _mm256_cvtepi8_epi16(_mm_loadu_si128(c2.add(16 * b) as *const __m128i));
                acc[2 * b] = _mm256_add_epi32(
                    acc[2 * b],
                    _mm256_madd_epi16(_mm256_unpacklo_epi16(a, w), xp),
                );
                acc[2 * b + 1] = _mm256_add_epi32(
                    acc[2 * b + 1],
                    _mm256_madd_epi16(_mm256_unpackhi_epi16(a, w), xp),
                );
            }
        }
        p += 2;
    }
    let mut total = [0i32; 64];
    for b in 0..4 {
        // "lo" holds rows 0-3 | 8-11 of the 16-row block, "hi" rows 4-7 | 12-15.
        let r0 = _mm256_permute2x128_si256::<0x20>(acc[2 * b], acc[2 * b + 1]);
        let r1 = _mm256_permute2x128_si256::<0x31>(acc[2 * b], acc[2 * b + 1]);
        // SAFETY: total has room for rows 16b..16b + 16.
        unsafe {
            _mm256_storeu_si256(total.as_mut_ptr().add(16 * b) as *mut __m256i, r0);
            _mm256_storeu_si256(total.as_mut_ptr().add(16 * b + 8) as *mut __m256i, r1);
        }
    }
    finish(&total, scale, row_scale, y);
}

/// f32 / f16 weights: one FMA chain per row; `$load(chunk, row)` reads 8 rows as f32.
macro_rules! float_tile {
    ($tile:ident, $x:ident, $y:ident, $rows:expr, $load:expr) => {{
        const ROWS: usize = $rows;
        let base = $tile.as_ptr();
        let (idx, val) = (&$x.indices[..], &$x.values[..]);
        let n = idx.len();
        let mut acc = [_mm256_setzero_ps(); ROWS / 8];
        for p in 0..n {
            // SAFETY: p < n; indices are < d_in, so the chunk lies inside the tile.
            unsafe {
                if p + PREFETCH_AHEAD < n {
                    prefetch(
                        base.add(*idx.get_unchecked(p + PREFETCH_AHEAD) as usize * CHUNK_BYTES),
                    );
                }
                let c = base.add(*idx.get_unchecked(p) as usize * CHUNK_BYTES);
                let xb = _mm256_set1_ps(*val.get_unchecked(p));
                for (q, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_fmadd_ps($load(c, 8 * q), xb, *a);
                }
            }
        }
        let mut out = [0f32; ROWS];
        for (q, a) in acc.iter().enumerate() {
            // SAFETY: out has room for 8 floats at this offset.
            unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(8 * q), *a) };
        }
        let rows = $y.len();
        $y.copy_from_slice(&out[..rows]);
    }};
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn f32(tile: &[u8], x: &Sparse<f32>, y: &mut [f32]) {
    float_tile!(tile, x, y, 16, |c: *const u8, row: usize| _mm256_loadu_ps(
        (c as *const f32).add(row)
    ))
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn f16(tile: &[u8], x: &Sparse<f32>, y: &mut [f32]) {
    float_tile!(tile, x, y, 32, |c: *const u8, row: usize| {
        _mm256_cvtph_ps(_mm_loadu_si128(c.add(2 * row) as *const __m128i))
    })
}
