//! NEON tile kernels for [`crate::gather`] (aarch64, where NEON is baseline).
//!
//! Callers guarantee what the x86 kernels' callers do (see `gather_avx2`). Tested under
//! qemu-user in CI; performance has not been measured on real ARM hardware.

use std::arch::aarch64::*;

use half::f16;
use half::slice::HalfFloatSliceExt;

use crate::gather::scalar::finish;
use crate::layout::{CHUNK_BYTES, MAX_TILE_ROWS};
use crate::topk::Sparse;

/// T2 tiles are computed in four 64-row quarters so accumulators stay in the 32 q registers.
const QUARTER: usize = MAX_TILE_ROWS / 4;

/// Ternary 2-bit codes: each group's 8 code bytes shifted by 0, 2, 4, 6 give 8 rows each in
/// order; t = code − 1 is widened and multiply-accumulated in int16, flushed every 256 columns.
#[target_feature(enable = "neon")]
pub unsafe fn t2(tile: &[u8], x: &Sparse<i8>, scale: f32, row_scale: &[f32], y: &mut [f32]) {
    const BPC: usize = CHUNK_BYTES;
    let base = tile.as_ptr();
    let (idx, val) = (&x.indices[..], &x.values[..]);
    let n = idx.len();
    let mut total = [0i32; MAX_TILE_ROWS];
    for quarter in 0..4 {
        let mut start = 0;
        while start < n {
            let end = (start + 256).min(n);
            let mut acc = [vdupq_n_s16(0); QUARTER / 8];
            for p in start..end {
                // SAFETY: p < n and indices are < d_in: the chunk lies inside the tile.
                unsafe {
                    let c = base.add(*idx.get_unchecked(p) as usize * BPC + quarter * 16);
                    let v = i16::from(*val.get_unchecked(p));
                    let three = vdup_n_u8(3);
                    let one = vdup_n_s8(1);
                    for g in 0..2 {
                        let raw = vld1_u8(c.add(8 * g));
                        let parts = [
                            raw,
                            vshr_n_u8::<2>(raw),
                            vshr_n_u8::<4>(raw),
                            vshr_n_u8::<6>(raw),
                        ];
                        for (q, part) in parts.into_iter().enumerate() {
                            let t = vsub_s8(vreinterpret_s8_u8(vand_u8(part, three)), one);
                            let a = &mut acc[4 * g + q];
                            *a = vmlaq_n_s16(*a, vmovl_s8(t), v);
                        }
                    }
                }
            }
            for (g, a) in acc.iter().enumerate() {
                let mut lanes = [0i16; 8];
                // SAFETY: lanes holds 8 int16.
                unsafe { vst1q_s16(lanes.as_mut_ptr(), *a) };
                for (l, v) in lanes.iter().enumerate() {
                    total[quarter * QUARTER + 8 * g + l] += i32::from(*v);
                }
            }
            start = end;
        }
    }
    finish(&total, scale, row_scale, y);
}

/// int8 weights (64 rows) widened to int16 and multiply-accumulated into int32 (`vmlal`).
#[target_feature(enable = "neon")]
pub unsafe fn i8(tile: &[u8], x: &Sparse<i8>, scale: f32, row_scale: &[f32], y: &mut [f32]) {
    let base = tile.as_ptr();
    let mut acc = [vdupq_n_s32(0); 16];
    for (&j, &v) in x.indices.iter().zip(&x.values) {
        // SAFETY: j < d_in, so the 64-byte chunk lies inside the tile.
        unsafe {
            let c = base.add(j as usize * CHUNK_BYTES) as *const i8;
            let v = i16::from(v);
            for b in 0..4 {
                let w = vld1q_s8(c.add(16 * b));
                let lo = vmovl_s8(vget_low_s8(w));
                let hi = vmovl_high_s8(w);
                acc[4 * b] = vmlal_n_s16(acc[4 * b], vget_low_s16(lo), v);
                acc[4 * b + 1] = vmlal_high_n_s16(acc[4 * b + 1], lo, v);
                acc[4 * b + 2] = vmlal_n_s16(acc[4 * b + 2], vget_low_s16(hi), v);
                acc[4 * b + 3] = vmlal_high_n_s16(acc[4 * b + 3], hi, v);
            }
        }
    }
    let mut total = [0i32; 64];
    for (q, a) in acc.iter().enumerate() {
        // SAFETY: total has room for 4 int32 at this offset.
        unsafe { vst1q_s32(total.as_mut_ptr().add(4 * q), *a) };
    }
    finish(&total, scale, row_scale, y);
}

/// f32 weights (16 rows): one FMA chain per row.
#[target_feature(enable = "neon")]
pub unsafe fn f32(tile: &[u8], x: &Sparse<f32>, y: &mut [f32]) {
    let base = tile.as_ptr();
    let mut acc = [vdupq_n_f32(0.0); 4];
    for (&j, &v) in x.indices.iter().zip(&x.values) {
        // SAFETY: j < d_in, so the 64-byte chunk lies inside the tile.
        unsafe {
            let c = base.add(j as usize * CHUNK_BYTES) as *const f32;
            let xb = vdupq_n_f32(v);
            for (q, a) in acc.iter_mut().enumerate() {
                *a = vfmaq_f32(*a, vld1q_f32(c.add(4 * q)), xb);
            }
        }
    }
    store(&acc, y);
}

/// f16 weights (32 rows): each chunk is widened exactly (via `half`, which uses the FP16
/// conversion instructions when present), then as f32.
#[target_feature(enable = "neon")]
pub unsafe fn f16(tile: &[u8], x: &Sparse<f32>, y: &mut [f32]) {
    let mut acc = [vdupq_n_f32(0.0); 8];
    let mut halves = [f16::ZERO; 32];
    let mut wide = [0f32; 32];
    for (&j, &v) in x.indices.iter().zip(&x.values) {
        let at = j as usize * CHUNK_BYTES;
        for (h, b) in halves
            .iter_mut()
            .zip(tile[at..at + CHUNK_BYTES].chunks_exact(2))
        {
            *h = f16::from_le_bytes([b[0], b[1]]);
        }
        halves.convert_to_f32_slice(&mut wide);
        let xb = vdupq_n_f32(v);
        for (q, a) in acc.iter_mut().enumerate() {
            // SAFETY: wide holds 32 floats; q < 8.
            *a = vfmaq_f32(*a, unsafe { vld1q_f32(wide.as_ptr().add(4 * q)) }, xb);
        }
    }
    store(&acc, y);
}

fn store(acc: &[float32x4_t], y: &mut [f32]) {
    let mut out = [0f32; 32];
    for (q, a) in acc.iter().enumerate() {
        // SAFETY: out has room for 4 floats at this offset (acc holds at most 8 vectors).
        unsafe { vst1q_f32(out.as_mut_ptr().add(4 * q), *a) };
    }
    let rows = y.len();
    y.copy_from_slice(&out[..rows]);
}
