//! AVX2 tile kernels for [`crate::gather`], the fallback for CPUs without AVX-512. With 16 ymm
//! registers a 256-row tile does not fit, so each tile is computed as two 128-row halves (each
//! half re-walks the kept columns but reads only its half of every chunk).
//!
//! Callers guarantee what the AVX-512 kernels' callers do (see `gather_avx512`), with AVX2, FMA
//! and F16C present.

use std::arch::x86_64::*;

use crate::layout::{Format, TILE_ROWS};
use crate::topk::Sparse;

const HALF: usize = TILE_ROWS / 2;

/// Integer accumulators to f32 with the scalar reference's exact arithmetic.
fn finish_int(acc: &[i32; TILE_ROWS], scale: f32, row_scale: &[f32], y: &mut [f32]) {
    for ((o, &a), &s) in y.iter_mut().zip(acc).zip(row_scale) {
        *o = a as f32 * (scale * s);
    }
}

/// Ternary bit-planes: 16 plane bits become 16 int16 lane masks (broadcast, AND with one bit per
/// lane, compare), which select the broadcast activation to add or subtract.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn t2(tile: &[u8], x: &Sparse<i8>, scale: f32, row_scale: &[f32], y: &mut [f32]) {
    const BPC: usize = Format::T2.bytes_per_tile_column();
    let base = tile.as_ptr();
    let (idx, val) = (&x.indices[..], &x.values[..]);
    let n = idx.len();
    let bit = _mm256_setr_epi16(
        1,
        2,
        4,
        8,
        16,
        32,
        64,
        128,
        256,
        512,
        1024,
        2048,
        4096,
        8192,
        16384,
        i16::MIN,
    );
    let mut total = [0i32; TILE_ROWS];
    for half in 0..2 {
        let mut start = 0;
        while start < n {
            let end = (start + 256).min(n);
            let mut acc = [_mm256_setzero_si256(); HALF / 16];
            for p in start..end {
                // SAFETY: p < n and indices are < d_in: the chunk lies inside the tile.
                unsafe {
                    let c = base.add(*idx.get_unchecked(p) as usize * BPC + half * HALF / 8);
                    let xb = _mm256_set1_epi16(i16::from(*val.get_unchecked(p)));
                    for (g, a) in acc.iter_mut().enumerate() {
                        let pb = (c.add(2 * g) as *const u16).read_unaligned();
                        let mb = (c.add(BPC / 2 + 2 * g) as *const u16).read_unaligned();
                        let pm = _mm256_cmpeq_epi16(
                            _mm256_and_si256(_mm256_set1_epi16(pb as i16), bit),
                            bit,
                        );
                        let mm = _mm256_cmpeq_epi16(
                            _mm256_and_si256(_mm256_set1_epi16(mb as i16), bit),
                            bit,
                        );
                        *a = _mm256_add_epi16(*a, _mm256_and_si256(pm, xb));
                        *a = _mm256_sub_epi16(*a, _mm256_and_si256(mm, xb));
                    }
                }
            }
            for (g, a) in acc.iter().enumerate() {
                let mut lanes = [0i16; 16];
                // SAFETY: lanes holds 16 int16.
                unsafe { _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, *a) };
                for (l, v) in lanes.iter().enumerate() {
                    total[half * HALF + 16 * g + l] += i32::from(*v);
                }
            }
            start = end;
        }
    }
    finish_int(&total, scale, row_scale, y);
}

/// int8 weights, two kept columns at a time with `vpmaddwd` (as the AVX-512 kernel).
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn i8(tile: &[u8], x: &Sparse<i8>, scale: f32, row_scale: &[f32], y: &mut [f32]) {
    const BPC: usize = Format::I8.bytes_per_tile_column();
    let base = tile.as_ptr();
    let (idx, val) = (&x.indices[..], &x.values[..]);
    let n = idx.len();
    let mut total = [0i32; TILE_ROWS];
    for half in 0..2 {
        let mut acc = [_mm256_setzero_si256(); HALF / 8];
        let mut p = 0;
        while p < n {
            // SAFETY: as in the AVX-512 kernel: indices < d_in, odd tail paired with itself × 0.
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
                let c1 = base.add(j1 * BPC + half * HALF);
                let c2 = base.add(j2 * BPC + half * HALF);
                let pair = (u32::from(v2 as i16 as u16) << 16) | u32::from(v1 as i16 as u16);
                let xp = _mm256_set1_epi32(pair as i32);
                for b in 0..HALF / 16 {
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
        for b in 0..HALF / 16 {
            // lo holds rows 0-3 | 8-11 of the 16-row block, hi rows 4-7 | 12-15.
            let r0 = _mm256_permute2x128_si256::<0x20>(acc[2 * b], acc[2 * b + 1]);
            let r1 = _mm256_permute2x128_si256::<0x31>(acc[2 * b], acc[2 * b + 1]);
            let at = half * HALF + 16 * b;
            // SAFETY: total has room for rows at..at + 16.
            unsafe {
                _mm256_storeu_si256(total.as_mut_ptr().add(at) as *mut __m256i, r0);
                _mm256_storeu_si256(total.as_mut_ptr().add(at + 8) as *mut __m256i, r1);
            }
        }
    }
    finish_int(&total, scale, row_scale, y);
}

/// f32 / f16 weights: one FMA chain per row, 128 rows (16 ymm) at a time.
macro_rules! float_tile {
    ($tile:ident, $x:ident, $y:ident, $bpc:expr, $load:expr) => {{
        let base = $tile.as_ptr();
        let mut out = [0f32; TILE_ROWS];
        for half in 0..2 {
            let mut acc = [_mm256_setzero_ps(); HALF / 8];
            for (&j, &v) in $x.indices.iter().zip(&$x.values) {
                // SAFETY: j < d_in, so the chunk lies inside the tile.
                unsafe {
                    let c = base.add(j as usize * $bpc);
                    let xb = _mm256_set1_ps(v);
                    for (q, a) in acc.iter_mut().enumerate() {
                        *a = _mm256_fmadd_ps($load(c, half * HALF + 8 * q), xb, *a);
                    }
                }
            }
            for (q, a) in acc.iter().enumerate() {
                // SAFETY: out has room for 8 floats at this offset.
                unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(half * HALF + 8 * q), *a) };
            }
        }
        let rows = $y.len();
        $y.copy_from_slice(&out[..rows]);
    }};
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn f32(tile: &[u8], x: &Sparse<f32>, y: &mut [f32]) {
    float_tile!(
        tile,
        x,
        y,
        Format::F32.bytes_per_tile_column(),
        |c: *const u8, row: usize| { _mm256_loadu_ps((c as *const f32).add(row)) }
    )
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn f16(tile: &[u8], x: &Sparse<f32>, y: &mut [f32]) {
    float_tile!(
        tile,
        x,
        y,
        Format::F16.bytes_per_tile_column(),
        |c: *const u8, row: usize| {
            _mm256_cvtph_ps(_mm_loadu_si128(c.add(2 * row) as *const __m128i))
        }
    )
}
