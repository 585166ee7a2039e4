//! NEON run kernels for [`super`] (aarch64, where NEON is baseline).
//!
//! Callers guarantee what the x86 kernels' callers do (see `gather_avx2`). Tested under
//! qemu-user in CI; performance has not been measured on real ARM hardware.

use std::arch::aarch64::*;

use half::f16;
use half::slice::HalfFloatSliceExt;

use super::runs::Lines;
use crate::layout::Format;

/// Ternary 2-bit codes (256 rows per line): each kept column's run swept line by line; each
/// group's 8 code bytes shifted by 0, 2, 4, 6 give 8 rows each in order, widened and
/// multiply-accumulated into int32 (`vmlal`). Codes are t + 1: the caller removes Σx.
#[target_feature(enable = "neon")]
pub unsafe fn t2_runs(l: Lines<'_>, n: usize, idx: &[u32], val: &[i8], acc: &mut [i32]) {
    assert!(acc.len() >= n * 256);
    let base = l.tile.as_ptr();
    for (&j, &v) in idx.iter().zip(val) {
        let v = i16::from(v);
        for s in 0..n {
            // SAFETY: j < d_in, so the run (n lines) lies inside the tile; acc holds n · 256 int32.
            unsafe {
                let c = base.add(l.first + j as usize * l.stride + 64 * s);
                let three = vdup_n_u8(3);
                for g in 0..8 {
                    let raw = vld1_u8(c.add(8 * g));
                    let parts = [
                        raw,
                        vshr_n_u8::<2>(raw),
                        vshr_n_u8::<4>(raw),
                        vshr_n_u8::<6>(raw),
                    ];
                    for (q, part) in parts.into_iter().enumerate() {
                        let code = vreinterpretq_s16_u16(vmovl_u8(vand_u8(part, three)));
                        let a = acc.as_mut_ptr().add(256 * s + 32 * g + 8 * q);
                        vst1q_s32(a, vmlal_n_s16(vld1q_s32(a), vget_low_s16(code), v));
                        vst1q_s32(a.add(4), vmlal_high_n_s16(vld1q_s32(a.add(4)), code, v));
                    }
                }
            }
        }
    }
}

/// int8 weights (64 rows per line) against `B` activation vectors at once (B = 1: a decode step's
/// product; more: a batch of prompt tokens, [`super::batch`]): each kept column's run swept
/// line by line, widened to int16 once for all vectors, and multiply-accumulated by each vector's
/// value into int32 accumulators `acc[line][vector][64 rows]` in L1 (`vmlal`). Values are int8,
/// or int16 (the activation outliers at the int8 scale), which `vmlal` takes as readily.
#[target_feature(enable = "neon")]
pub unsafe fn i8_runs<const B: usize, V: Copy + Into<i16>>(
    l: Lines<'_>,
    n: usize,
    idx: &[u32],
    values: &[V],
    acc: &mut [i32],
) {
    assert!(B >= 1 && values.len() >= idx.len() * B && acc.len() >= n * B * 64);
    let base = l.tile.as_ptr();
    for (p, &j) in idx.iter().enumerate() {
        let v: [i16; B] = std::array::from_fn(|t| values[p * B + t].into());
        for s in 0..n {
            // SAFETY: j < d_in, so the run (n lines) lies inside the tile; acc holds
            // n · B · 64 int32.
            unsafe {
                let c = base.add(l.first + j as usize * l.stride + 64 * s) as *const i8;
                for b in 0..4 {
                    let w = vld1q_s8(c.add(16 * b));
                    let (lo, hi) = (vmovl_s8(vget_low_s8(w)), vmovl_high_s8(w));
                    for (t, &v) in v.iter().enumerate() {
                        let a = acc.as_mut_ptr().add(64 * (s * B + t) + 16 * b);
                        let at = |q: usize| a.add(4 * q);
                        vst1q_s32(at(0), vmlal_n_s16(vld1q_s32(at(0)), vget_low_s16(lo), v));
                        vst1q_s32(at(1), vmlal_high_n_s16(vld1q_s32(at(1)), lo, v));
                        vst1q_s32(at(2), vmlal_n_s16(vld1q_s32(at(2)), vget_low_s16(hi), v));
                        vst1q_s32(at(3), vmlal_high_n_s16(vld1q_s32(at(3)), hi, v));
                    }
                }
            }
        }
    }
}

/// f16 or f32 weights: each kept column's run swept line by line, one FMA chain per row in
/// column order; B activation vectors at once (`values[p · B + t]`, `acc` `[line][vector][rows]`),
/// each line loaded once for all. f16 lines are widened exactly first (via `half`, which uses the
/// FP16 conversion instructions when present).
#[target_feature(enable = "neon")]
pub unsafe fn float_runs<const B: usize>(
    format: Format,
    l: Lines<'_>,
    n: usize,
    idx: &[u32],
    values: &[f32],
    acc: &mut [f32],
) {
    let rows = format.rows_per_line();
    assert!(rows <= 32 && values.len() >= idx.len() * B && acc.len() >= n * B * rows);
    let mut halves = [f16::ZERO; 32];
    let mut wide = [0f32; 32];
    for (p, &j) in idx.iter().enumerate() {
        let x: [float32x4_t; B] = std::array::from_fn(|t| vdupq_n_f32(values[p * B + t]));
        for s in 0..n {
            let at = l.first + j as usize * l.stride + 64 * s;
            let line = &l.tile[at..at + 64];
            let w: &[f32] = if format == Format::F16 {
                for (h, b) in halves.iter_mut().zip(line.chunks_exact(2)) {
                    *h = f16::from_le_bytes([b[0], b[1]]);
                }
                halves.convert_to_f32_slice(&mut wide);
                &wide
            } else {
                for (w, b) in wide.iter_mut().zip(line.chunks_exact(4)) {
                    *w = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
                &wide[..16]
            };
            for (t, &xb) in x.iter().enumerate() {
                for q in 0..rows / 4 {
                    // SAFETY: acc holds n · B · rows floats and w `rows`; q < rows / 4.
                    unsafe {
                        let a = acc.as_mut_ptr().add(rows * (s * B + t) + 4 * q);
                        vst1q_f32(
                            a,
                            vfmaq_f32(vld1q_f32(a), vld1q_f32(w.as_ptr().add(4 * q)), xb),
                        );
                    }
                }
            }
        }
    }
}
