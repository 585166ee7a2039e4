//! The reference run kernels: plain loops over the layout's definition, which every SIMD kernel
//! is tested against.

use half::f16;

use super::runs::Lines;
use crate::layout::{Format, LINE_BYTES, MAX_LINE_ROWS};

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
pub(super) fn run_line<'t>(l: &Lines<'t>, j: u32, s: usize) -> &'t [u8] {
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
