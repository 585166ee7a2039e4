//! AVX-512 tile kernels for [`crate::gather`]: the AVX2 kernels' algorithms on 512-bit vectors
//! (VNNI's fused `vpdpwssd` where present).
//!
//! Not yet run on AVX-512 hardware: the machines qsparse is developed and tested on expose only
//! AVX2, so [`crate::Isa::best`] uses these only with `QSPARSE_AVX512=1`, and the test suite
//! checks them against the scalar reference wherever the CPU has AVX-512.
//!
//! Callers guarantee (checked once in `gather_matvec`): the CPU has AVX-512 F/BW/VL (and VNNI
//! for `i8_vnni`), `tile` holds d_in whole 64-byte column chunks, every kept index is < d_in, and
//! `y` (and `row_scale` for integer formats) hold y.len() <= the format's tile rows.

use std::arch::x86_64::*;

use crate::layout::{CHUNK_BYTES, MAX_TILE_ROWS};
use crate::topk::Sparse;

/// How many kept columns ahead to prefetch: their indices are known in advance.
const PREFETCH_AHEAD: usize = 16;

/// Mask of the first `n` of 16 lanes.
#[inline(always)]
fn lanes(n: usize) -> __mmask16 {
    if n >= 16 {
        0xffff
    } else {
        (1u16 << n) - 1
    }
}

/// y_r = acc_r · ((γ/127) · scale_r) for the rows present, in the scalar reference's order.
#[inline(always)]
unsafe fn finish_int(acc: &[__m512i], scale: f32, row_scale: &[f32], y: &mut [f32]) {
    let rows = y.len();
    let s = _mm512_set1_ps(scale);
    for (q, a) in acc.iter().enumerate() {
        let r0 = 16 * q;
        if r0 >= rows {
            break;
        }
        let k = lanes(rows - r0);
        // SAFETY: the mask limits loads and stores to rows r0..rows of row_scale and y.
        unsafe {
            let rs = _mm512_maskz_loadu_ps(k, row_scale.as_ptr().add(r0));
            let f = _mm512_mul_ps(_mm512_cvtepi32_ps(*a), _mm512_mul_ps(s, rs));
            _mm512_mask_storeu_ps(y.as_mut_ptr().add(r0), k, f);
        }
    }
}

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

/// Ternary 2-bit codes, as the AVX2 kernel (see there) with 64 rows per zmm: two groups' code
/// bytes are spread over the eight 64-bit lanes, shifted into row order, interleaved pairwise and
/// multiplied with `vpmaddubsw`; int16 sums are flushed every 64 pairs, Σx subtracted at the end.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub unsafe fn t2(tile: &[u8], x: &Sparse<i8>, scale: f32, row_scale: &[f32], y: &mut [f32]) {
    let base = tile.as_ptr();
    let n = x.indices.len();
    let x_sum: i32 = x.values.iter().map(|&v| i32::from(v)).sum();
    let shifts = _mm512_setr_epi64(0, 2, 4, 6, 0, 2, 4, 6);
    let spread = _mm512_setr_epi64(0, 0, 0, 0, 1, 1, 1, 1);
    let three = _mm512_set1_epi8(3);
    let mut total = [0i32; MAX_TILE_ROWS];
    let mut p = 0;
    while p < n {
        let end = (p + 128).min(n);
        let mut acc = [_mm512_setzero_si512(); 8];
        while p < end {
            // SAFETY: p < n; both chunks lie in the tile and hold 64 bytes.
            unsafe {
                let (c1, c2, v1, v2) = pair(base, x, p);
                let xp =
                    _mm512_set1_epi16(((u16::from(v2 as u8) << 8) | u16::from(v1 as u8)) as i16);
                for blk in 0..4 {
                    let decode = |c: *const u8| {
                        // c + 16 blk + 16 <= c + 64: inside the chunk.
                        let raw = _mm_loadu_si128(c.add(16 * blk) as *const __m128i);
                        let wide = _mm512_permutexvar_epi64(spread, _mm512_castsi128_si512(raw));
                        _mm512_and_si512(_mm512_srlv_epi64(wide, shifts), three)
                    };
                    let (a, b) = (decode(c1), decode(c2));
                    acc[2 * blk] = _mm512_add_epi16(
                        acc[2 * blk],
                        _mm512_maddubs_epi16(_mm512_unpacklo_epi8(a, b), xp),
                    );
                    acc[2 * blk + 1] = _mm512_add_epi16(
                        acc[2 * blk + 1],
                        _mm512_maddubs_epi16(_mm512_unpackhi_epi8(a, b), xp),
                    );
                }
            }
            p += 2;
        }
        // 128-bit lane L of a 64-row block covers rows 16L..16L+15: "lo" words are its first 8
        // rows, "hi" words its last 8.
        for blk in 0..4 {
            for (part, a) in [(0, acc[2 * blk]), (8, acc[2 * blk + 1])] {
                let mut w = [0i16; 32];
                // SAFETY: w holds 32 int16.
                unsafe { _mm512_storeu_si512(w.as_mut_ptr() as *mut _, a) };
                for (i, &v) in w.iter().enumerate() {
                    total[64 * blk + 16 * (i / 8) + part + i % 8] += i32::from(v);
                }
            }
        }
    }
    for t in total.iter_mut() {
        *t -= x_sum;
    }
    let mut acc32 = [_mm512_setzero_si512(); 16];
    for (q, a) in acc32.iter_mut().enumerate() {
        // SAFETY: total holds 256 int32; q < 16.
        *a = unsafe { _mm512_loadu_si512(total.as_ptr().add(16 * q) as *const _) };
    }
    // SAFETY: y and row_scale hold y.len() <= 256 rows.
    unsafe { finish_int(&acc32, scale, row_scale, y) };
}

/// int8 weights (64 rows), two kept columns at a time: each column's 32-row halves are widened
/// to int16, interleaved pairwise, and multiplied by the (x1, x2) pair with `vpmaddwd` (or VNNI's
/// fused `vpdpwssd`). Interleaving permutes rows inside 128-bit lanes; undone once at the end.
macro_rules! i8_tile {
    ($tile:ident, $x:ident, $scale:ident, $row_scale:ident, $y:ident, $dot:expr) => {{
        let base = $tile.as_ptr();
        let n = $x.indices.len();
        let mut acc = [_mm512_setzero_si512(); 4];
        let mut p = 0;
        while p < n {
            // SAFETY: p < n; both chunks lie in the tile and hold 64 bytes.
            unsafe {
                let (c1, c2, v1, v2) = pair(base, $x, p);
                let pair = (u32::from(v2 as i16 as u16) << 16) | u32::from(v1 as i16 as u16);
                let xp = _mm512_set1_epi32(pair as i32);
                for b in 0..2 {
                    let a =
                        _mm512_cvtepi8_epi16(_mm256_loadu_si256(c1.add(32 * b) as *const __m256i));
                    let w =
                        _mm512_cvtepi8_epi16(_mm256_loadu_si256(c2.add(32 * b) as *const __m256i));
                    acc[2 * b] = $dot(acc[2 * b], _mm512_unpacklo_epi16(a, w), xp);
                    acc[2 * b + 1] = $dot(acc[2 * b + 1], _mm512_unpackhi_epi16(a, w), xp);
                }
            }
            p += 2;
        }
        // Lane L of the "lo" accumulator holds rows 8L..8L+3 of its 32-row block, "hi" 8L+4..8L+7.
        let first = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
        let second =
            _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31);
        let mut rows = [_mm512_setzero_si512(); 4];
        for b in 0..2 {
            rows[2 * b] = _mm512_permutex2var_epi32(acc[2 * b], first, acc[2 * b + 1]);
            rows[2 * b + 1] = _mm512_permutex2var_epi32(acc[2 * b], second, acc[2 * b + 1]);
        }
        // SAFETY: y and row_scale hold y.len() <= 64 rows.
        unsafe { finish_int(&rows, $scale, $row_scale, $y) };
    }};
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub unsafe fn i8(tile: &[u8], x: &Sparse<i8>, scale: f32, row_scale: &[f32], y: &mut [f32]) {
    i8_tile!(tile, x, scale, row_scale, y, |acc, w, xp| _mm512_add_epi32(
        acc,
        _mm512_madd_epi16(w, xp)
    ))
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn i8_vnni(tile: &[u8], x: &Sparse<i8>, scale: f32, row_scale: &[f32], y: &mut [f32]) {
    i8_tile!(tile, x, scale, row_scale, y, |acc, w, xp| {
        _mm512_dpwssd_epi32(acc, w, xp)
    })
}

/// f32 / f16 weights: one FMA chain per row; `$load(chunk, row)` reads 16 rows as f32.
macro_rules! float_tile {
    ($tile:ident, $x:ident, $y:ident, $rows:expr, $load:expr) => {{
        const ROWS: usize = $rows;
        let base = $tile.as_ptr();
        let (idx, val) = (&$x.indices[..], &$x.values[..]);
        let n = idx.len();
        let mut acc = [_mm512_setzero_ps(); ROWS / 16];
        for p in 0..n {
            // SAFETY: p < n; indices are < d_in, so the chunk lies inside the tile.
            unsafe {
                if p + PREFETCH_AHEAD < n {
                    prefetch(
                        base.add(*idx.get_unchecked(p + PREFETCH_AHEAD) as usize * CHUNK_BYTES),
                    );
                }
                let c = base.add(*idx.get_unchecked(p) as usize * CHUNK_BYTES);
                let xb = _mm512_set1_ps(*val.get_unchecked(p));
                for (q, a) in acc.iter_mut().enumerate() {
                    *a = _mm512_fmadd_ps($load(c, 16 * q), xb, *a);
                }
            }
        }
        let rows = $y.len();
        for (q, a) in acc.iter().enumerate() {
            let r0 = 16 * q;
            if r0 < rows {
                // SAFETY: the mask limits the store to rows r0..rows of y.
                unsafe { _mm512_mask_storeu_ps($y.as_mut_ptr().add(r0), lanes(rows - r0), *a) };
            }
        }
    }};
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub unsafe fn f32(tile: &[u8], x: &Sparse<f32>, y: &mut [f32]) {
    float_tile!(tile, x, y, 16, |c: *const u8, row: usize| _mm512_loadu_ps(
        (c as *const f32).add(row)
    ))
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub unsafe fn f16(tile: &[u8], x: &Sparse<f32>, y: &mut [f32]) {
    float_tile!(tile, x, y, 32, |c: *const u8, row: usize| {
        _mm512_cvtph_ps(_mm256_loadu_si256(c.add(2 * row) as *const __m256i))
    })
}
