//! Dense row-major matvec, y_i = W_i · x, for the lm_head (and a tied embedding used as one).
//! Q-Sparse leaves the head dense, and its rows are read whole, so row-major is the right layout.
//!
//! SIMD sums in several partial accumulators, so results differ from the sequential scalar sum by
//! rounding only: tests bound |y − y_ref| by 1e-5 · Σ|W_ij·x_j|.

use half::f16;
use rayon::prelude::*;

use crate::isa::Isa;

/// Rows handed to one rayon task.
const ROWS_PER_TASK: usize = 256;
/// Below this many weight bytes, stay on one thread.
const PARALLEL_MIN_BYTES: usize = 256 * 1024;

/// A row-major weight matrix `[d_out][d_in]`.
#[derive(Debug, Clone, Copy)]
pub enum RowMajor<'a> {
    /// f32 rows.
    F32(&'a [f32]),
    /// f16 rows.
    F16(&'a [f16]),
}

impl RowMajor<'_> {
    fn len(&self) -> usize {
        match self {
            RowMajor::F32(w) => w.len(),
            RowMajor::F16(w) => w.len(),
        }
    }

    fn bytes(&self) -> usize {
        match self {
            RowMajor::F32(w) => w.len() * 4,
            RowMajor::F16(w) => w.len() * 2,
        }
    }
}

/// y = W·x with W row-major `[y.len()][x.len()]`. Panics if the sizes disagree (a programming error).
pub fn matvec_rows(isa: Isa, w: RowMajor<'_>, x: &[f32], y: &mut [f32]) {
    let d_in = x.len();
    assert_eq!(
        w.len(),
        y.len() * d_in,
        "matvec_rows: W is not y.len() x x.len()"
    );
    let run = |first_row: usize, ys: &mut [f32]| {
        for (r, o) in ys.iter_mut().enumerate() {
            let i = first_row + r;
            *o = match w {
                RowMajor::F32(w) => dot_f32(isa, &w[i * d_in..(i + 1) * d_in], x),
                RowMajor::F16(w) => dot_f16(isa, &w[i * d_in..(i + 1) * d_in], x),
            };
        }
    };
    if rayon::current_num_threads() <= 1 || w.bytes() < PARALLEL_MIN_BYTES {
        run(0, y);
    } else {
        y.par_chunks_mut(ROWS_PER_TASK)
            .enumerate()
            .for_each(|(c, ys)| run(c * ROWS_PER_TASK, ys));
    }
}

fn dot_f32(isa: Isa, w: &[f32], x: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 && crate::isa::x86::v4().is_some() {
        // SAFETY: the V4 token proves AVX-512 F; w and x have equal lengths.
        return unsafe { avx512::dot_f32(w, x) };
    }
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx2 && crate::isa::x86::v3().is_some() {
        // SAFETY: the V3 token proves AVX2 and FMA; w and x have equal lengths.
        return unsafe { avx2::dot_f32(w, x) };
    }
    let _ = isa;
    w.iter().zip(x).map(|(a, b)| a * b).sum()
}

fn dot_f16(isa: Isa, w: &[f16], x: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 && crate::isa::x86::v4().is_some() {
        // SAFETY: the V4 token proves AVX-512 F; w and x have equal lengths.
        return unsafe { avx512::dot_f16(w, x) };
    }
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx2 && crate::isa::x86::v3().is_some() {
        // SAFETY: the V3 token proves AVX2, FMA and F16C; w and x have equal lengths.
        return unsafe { avx2::dot_f16(w, x) };
    }
    let _ = isa;
    w.iter().zip(x).map(|(a, b)| a.to_f32() * b).sum()
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    use half::f16;
    use std::arch::x86_64::*;

    #[inline(always)]
    unsafe fn hsum(a: [__m256; 4]) -> f32 {
        // SAFETY: AVX, which this function's caller runs with.
        let s = unsafe { _mm256_add_ps(_mm256_add_ps(a[0], a[1]), _mm256_add_ps(a[2], a[3])) };
        let mut lanes = [0f32; 8];
        // SAFETY: lanes holds 8 floats.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), s) };
        lanes.iter().sum()
    }

    /// Four independent accumulators hide the FMA latency; the tail is scalar.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_f32(w: &[f32], x: &[f32]) -> f32 {
        let n = w.len().min(x.len());
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        // SAFETY: every load reads elements below n of both slices.
        unsafe {
            while i + 32 <= n {
                for (k, a) in acc.iter_mut().enumerate() {
                    let o = i + 8 * k;
                    *a = _mm256_fmadd_ps(
                        _mm256_loadu_ps(w.as_ptr().add(o)),
                        _mm256_loadu_ps(x.as_ptr().add(o)),
                        *a,
                    );
                }
                i += 32;
            }
        }
        let tail: f32 = w[i..n].iter().zip(&x[i..n]).map(|(a, b)| a * b).sum();
        // SAFETY: AVX2 is enabled in this function.
        unsafe { hsum(acc) + tail }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_f16(w: &[f16], x: &[f32]) -> f32 {
        let n = w.len().min(x.len());
        let wp = w.as_ptr() as *const u16;
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        // SAFETY: every load reads elements below n of both slices.
        unsafe {
            while i + 32 <= n {
                for (k, a) in acc.iter_mut().enumerate() {
                    let o = i + 8 * k;
                    let wv = _mm256_cvtph_ps(_mm_loadu_si128(wp.add(o) as *const __m128i));
                    *a = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x.as_ptr().add(o)), *a);
                }
                i += 32;
            }
        }
        let tail: f32 = w[i..n]
            .iter()
            .zip(&x[i..n])
            .map(|(a, b)| a.to_f32() * b)
            .sum();
        // SAFETY: AVX2 is enabled in this function.
        unsafe { hsum(acc) + tail }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use half::f16;
    use std::arch::x86_64::*;

    /// Four independent accumulators hide the FMA latency; masked loads handle the tail.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub unsafe fn dot_f32(w: &[f32], x: &[f32]) -> f32 {
        let n = w.len().min(x.len());
        let mut acc = [_mm512_setzero_ps(); 4];
        let mut i = 0;
        // SAFETY: every load reads elements below n of both slices.
        unsafe {
            while i + 64 <= n {
                for (k, a) in acc.iter_mut().enumerate() {
                    let o = i + 16 * k;
                    *a = _mm512_fmadd_ps(
                        _mm512_loadu_ps(w.as_ptr().add(o)),
                        _mm512_loadu_ps(x.as_ptr().add(o)),
                        *a,
                    );
                }
                i += 64;
            }
            while i < n {
                let m: __mmask16 = if n - i >= 16 {
                    0xffff
                } else {
                    (1u16 << (n - i)) - 1
                };
                let a = _mm512_maskz_loadu_ps(m, w.as_ptr().add(i));
                let b = _mm512_maskz_loadu_ps(m, x.as_ptr().add(i));
                acc[0] = _mm512_fmadd_ps(a, b, acc[0]);
                i += 16;
            }
        }
        let s = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
        _mm512_reduce_add_ps(s)
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub unsafe fn dot_f16(w: &[f16], x: &[f32]) -> f32 {
        let n = w.len().min(x.len());
        let wp = w.as_ptr() as *const u16;
        let mut acc = [_mm512_setzero_ps(); 4];
        let mut i = 0;
        // SAFETY: every load reads elements below n of both slices.
        unsafe {
            while i + 64 <= n {
                for (k, a) in acc.iter_mut().enumerate() {
                    let o = i + 16 * k;
                    let wv = _mm512_cvtph_ps(_mm256_loadu_si256(wp.add(o) as *const __m256i));
                    *a = _mm512_fmadd_ps(wv, _mm512_loadu_ps(x.as_ptr().add(o)), *a);
                }
                i += 64;
            }
            while i < n {
                let m: __mmask16 = if n - i >= 16 {
                    0xffff
                } else {
                    (1u16 << (n - i)) - 1
                };
                let wv = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, wp.add(i) as *const i16));
                let b = _mm512_maskz_loadu_ps(m, x.as_ptr().add(i));
                acc[0] = _mm512_fmadd_ps(wv, b, acc[0]);
                i += 16;
            }
        }
        let s = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
        _mm512_reduce_add_ps(s)
    }
}
