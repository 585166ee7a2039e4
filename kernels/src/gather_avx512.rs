//! AVX-512 tile kernels for [`crate::gather`]. One call computes one 256-row output tile over all
//! kept columns, with every accumulator in a zmm register.
//!
//! Callers guarantee (checked once in `gather_matvec`): the CPU has AVX-512 F/BW/VL (and VNNI
//! for `i8_vnni`), `tile` holds d_in whole column chunks, every kept index is < d_in, and `y`,
//! `row_scale` have the same length <= 256.

use std::arch::x86_64::*;

use crate::layout::{Format, TILE_ROWS};
use crate::topk::Sparse;

/// How many kept columns ahead to prefetch: their indices are known in advance.
const PREFETCH_AHEAD: usize = 8;

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
unsafe fn finish_int(acc: &[__m512i; 16], scale: f32, row_scale: &[f32], y: &mut [f32]) {
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
unsafe fn store_f32(acc: &[__m512; 16], y: &mut [f32]) {
    let rows = y.len();
    for (q, a) in acc.iter().enumerate() {
        let r0 = 16 * q;
        if r0 >= rows {
            break;
        }
        // SAFETY: the mask limits the store to rows r0..rows of y.
        unsafe { _mm512_mask_storeu_ps(y.as_mut_ptr().add(r0), lanes(rows - r0), *a) };
    }
}

#[inline(always)]
unsafe fn prefetch(p: *const u8) {
    _mm_prefetch::<_MM_HINT_T0>(p as *const i8);
}

/// Ternary bit-planes: each 32-bit slice of a plane is a mask register; the broadcast activation
/// is added (+ plane) or subtracted (− plane) in int16 lanes, flushed to int32 every 256 columns
/// (|x_q| <= 127, so 256 · 127 < 2^15).
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub unsafe fn t2(tile: &[u8], x: &Sparse<i8>, scale: f32, row_scale: &[f32], y: &mut [f32]) {
    const BPC: usize = Format::T2.bytes_per_tile_column();
    let base = tile.as_ptr();
    let (idx, val) = (&x.indices[..], &x.values[..]);
    let n = idx.len();
    let mut acc32 = [_mm512_setzero_si512(); 16];
    let mut start = 0;
    while start < n {
        let end = (start + 256).min(n);
        let mut acc16 = [_mm512_setzero_si512(); 8];
        for p in start..end {
            // SAFETY: p < n; indices are < d_in so every column chunk lies inside `tile`.
            unsafe {
                if p + PREFETCH_AHEAD < n {
                    prefetch(base.add(*idx.get_unchecked(p + PREFETCH_AHEAD) as usize * BPC));
                }
                let c = base.add(*idx.get_unchecked(p) as usize * BPC);
                let xb = _mm512_set1_epi16(i16::from(*val.get_unchecked(p)));
                for (g, a) in acc16.iter_mut().enumerate() {
                    let kp = (c.add(4 * g) as *const u32).read_unaligned();
                    let km = (c.add(BPC / 2 + 4 * g) as *const u32).read_unaligned();
                    *a = _mm512_mask_add_epi16(*a, kp, *a, xb);
                    *a = _mm512_mask_sub_epi16(*a, km, *a, xb);
                }
            }
        }
        for (g, a) in acc16.iter().enumerate() {
            let lo = _mm512_cvtepi16_epi32(_mm512_castsi512_si256(*a));
            let hi = _mm512_cvtepi16_epi32(_mm512_extracti64x4_epi64::<1>(*a));
            acc32[2 * g] = _mm512_add_epi32(acc32[2 * g], lo);
            acc32[2 * g + 1] = _mm512_add_epi32(acc32[2 * g + 1], hi);
        }
        start = end;
    }
    // SAFETY: y and row_scale hold y.len() <= 256 rows.
    unsafe { finish_int(&acc32, scale, row_scale, y) };
}

/// int8 weights, two kept columns at a time: the 32 weights of each column are widened to
/// int16, interleaved pairwise, and multiplied by the (x1, x2) pair with `vpmaddwd` (or VNNI's
/// fused `vpdpwssd`). Interleaving permutes rows inside 128-bit lanes; undone once at the end.
macro_rules! i8_tile {
    ($tile:ident, $x:ident, $scale:ident, $row_scale:ident, $y:ident, $dot:expr) => {{
        const BPC: usize = Format::I8.bytes_per_tile_column();
        let base = $tile.as_ptr();
        let (idx, val) = (&$x.indices[..], &$x.values[..]);
        let n = idx.len();
        let mut acc = [_mm512_setzero_si512(); 16];
        let mut p = 0;
        while p < n {
            // SAFETY: p < n (and p + 1 < n where read); indices are < d_in, so both column
            // chunks lie inside the tile. An odd last column pairs with itself times zero.
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
                    for q in 0..2 {
                        let pf =
                            base.add(*idx.get_unchecked(p + PREFETCH_AHEAD + q) as usize * BPC);
                        for l in 0..BPC / 64 {
                            prefetch(pf.add(64 * l));
                        }
                    }
                }
                let (c1, c2) = (base.add(j1 * BPC), base.add(j2 * BPC));
                let pair = (u32::from(v2 as i16 as u16) << 16) | u32::from(v1 as i16 as u16);
                let xp = _mm512_set1_epi32(pair as i32);
                for b in 0..8 {
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
        let mut rows = [_mm512_setzero_si512(); 16];
        for b in 0..8 {
            rows[2 * b] = _mm512_permutex2var_epi32(acc[2 * b], first, acc[2 * b + 1]);
            rows[2 * b + 1] = _mm512_permutex2var_epi32(acc[2 * b], second, acc[2 * b + 1]);
        }
        // SAFETY: y and row_scale hold y.len() <= 256 rows.
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

/// f32 weights: one FMA chain per row (16 zmm accumulators for the 256 rows).
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub unsafe fn f32(tile: &[u8], x: &Sparse<f32>, y: &mut [f32]) {
    const BPC: usize = Format::F32.bytes_per_tile_column();
    let base = tile.as_ptr();
    let mut acc = [_mm512_setzero_ps(); TILE_ROWS / 16];
    for (&j, &v) in x.indices.iter().zip(&x.values) {
        // SAFETY: j < d_in, so the 1 KiB column chunk lies inside the tile.
        unsafe {
            let c = base.add(j as usize * BPC) as *const f32;
            let xb = _mm512_set1_ps(v);
            for (q, a) in acc.iter_mut().enumerate() {
                *a = _mm512_fmadd_ps(_mm512_loadu_ps(c.add(16 * q)), xb, *a);
            }
        }
    }
    // SAFETY: y holds y.len() <= 256 rows.
    unsafe { store_f32(&acc, y) };
}

/// f16 weights: widened with `vcvtph2ps` (exact), then as f32.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub unsafe fn f16(tile: &[u8], x: &Sparse<f32>, y: &mut [f32]) {
    const BPC: usize = Format::F16.bytes_per_tile_column();
    let base = tile.as_ptr();
    let mut acc = [_mm512_setzero_ps(); TILE_ROWS / 16];
    for (&j, &v) in x.indices.iter().zip(&x.values) {
        // SAFETY: j < d_in, so the 512-byte column chunk lies inside the tile.
        unsafe {
            let c = base.add(j as usize * BPC);
            let xb = _mm512_set1_ps(v);
            for (q, a) in acc.iter_mut().enumerate() {
                let w = _mm512_cvtph_ps(_mm256_loadu_si256(c.add(32 * q) as *const __m256i));
                *a = _mm512_fmadd_ps(w, xb, *a);
            }
        }
    }
    // SAFETY: y holds y.len() <= 256 rows.
    unsafe { store_f32(&acc, y) };
}
