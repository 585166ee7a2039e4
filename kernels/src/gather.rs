//! Sparse column-gather matvec: y = W·x_sparse, reading only the weight columns of the kept
//! inputs. The dense product is the same kernel with every column kept.
//!
//! One driver serves every format: it checks the input once, splits the output tiles across rayon
//! workers (each owns whole tiles, so no reduction is needed; small products stay on one thread),
//! and calls the per-format, per-ISA tile kernel. Integer formats accumulate exactly in integers
//! and apply (γ/127)·scale_i once per output row; float formats use one FMA chain per row, in
//! column order, so SIMD and scalar agree bit for bit.

use rayon::prelude::*;

use crate::isa::Isa;
use crate::layout::{ColumnTiles, Format, TILE_ROWS};
use crate::topk::Sparse;

/// Below this many weight bytes per product, threading costs more than it saves.
pub const PARALLEL_MIN_BYTES: usize = 256 * 1024;

/// The sparse activation a product consumes.
#[derive(Debug, Clone, Copy)]
pub enum Input<'a> {
    /// int8 activations (for T2 and I8 weights) with their dequantization factor γ/127.
    I8 { x: &'a Sparse<i8>, scale: f32 },
    /// f32 activations (for F16 and F32 weights).
    F32(&'a Sparse<f32>),
}

impl Input<'_> {
    fn indices(&self) -> &[u32] {
        match self {
            Input::I8 { x, .. } => &x.indices,
            Input::F32(x) => &x.indices,
        }
    }
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
    match input {
        Input::I8 { x, .. } => assert_eq!(x.values.len(), idx.len(), "gather_matvec: ragged input"),
        Input::F32(x) => assert_eq!(x.values.len(), idx.len(), "gather_matvec: ragged input"),
    }
    assert!(
        matches!(
            (w.format(), input),
            (Format::T2 | Format::I8, Input::I8 { .. })
                | (Format::F16 | Format::F32, Input::F32(_))
        ),
        "gather_matvec: {:?} weights cannot take this input kind",
        w.format()
    );
    let d_in = w.d_in() as u32;
    assert!(
        idx.iter().all(|&j| j < d_in),
        "gather_matvec: an input index is >= d_in = {d_in}"
    );

    let n_tiles = w.n_tiles();
    let threads = rayon::current_num_threads();
    if threads <= 1 || n_tiles <= 1 || w.bytes_read(idx.len()) < PARALLEL_MIN_BYTES {
        for (t, ys) in y.chunks_mut(TILE_ROWS).enumerate() {
            tile(isa, w, t, input, ys);
        }
        return;
    }
    // Contiguous runs of tiles per worker keep each worker's reads in one region.
    let per_task = n_tiles.div_ceil(threads);
    y.par_chunks_mut(per_task * TILE_ROWS)
        .enumerate()
        .for_each(|(c, ys)| {
            for (k, yt) in ys.chunks_mut(TILE_ROWS).enumerate() {
                tile(isa, w, c * per_task + k, input, yt);
            }
        });
}

/// One output tile: rows 256t .. 256t + y.len().
fn tile(isa: Isa, w: &ColumnTiles<'_>, t: usize, input: Input<'_>, y: &mut [f32]) {
    let data = w.tile(t);
    let rows = y.len();
    let scales = match w.format() {
        Format::T2 | Format::I8 => &w.row_scale()[t * TILE_ROWS..t * TILE_ROWS + rows],
        Format::F16 | Format::F32 => &[][..],
    };
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 && crate::isa::x86::v4().is_some() {
        let vnni = crate::isa::x86::has_vnni();
        // SAFETY: the V4 token proves AVX-512 F/BW/VL; `data` is the whole tile (d_in columns),
        // every index is < d_in (checked in gather_matvec), y and scales hold `rows` <= 256 rows.
        unsafe {
            match (w.format(), input) {
                (Format::T2, Input::I8 { x, scale }) => {
                    super::gather_avx512::t2(data, x, scale, scales, y)
                }
                (Format::I8, Input::I8 { x, scale }) if vnni => {
                    super::gather_avx512::i8_vnni(data, x, scale, scales, y)
                }
                (Format::I8, Input::I8 { x, scale }) => {
                    super::gather_avx512::i8(data, x, scale, scales, y)
                }
                (Format::F16, Input::F32(x)) => super::gather_avx512::f16(data, x, y),
                (Format::F32, Input::F32(x)) => super::gather_avx512::f32(data, x, y),
                _ => unreachable!("format and input kind were matched in gather_matvec"),
            }
        }
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx2 && crate::isa::x86::v3().is_some() {
        // SAFETY: the V3 token proves AVX2/FMA/F16C; bounds as above.
        unsafe {
            match (w.format(), input) {
                (Format::T2, Input::I8 { x, scale }) => {
                    super::gather_avx2::t2(data, x, scale, scales, y)
                }
                (Format::I8, Input::I8 { x, scale }) => {
                    super::gather_avx2::i8(data, x, scale, scales, y)
                }
                (Format::F16, Input::F32(x)) => super::gather_avx2::f16(data, x, y),
                (Format::F32, Input::F32(x)) => super::gather_avx2::f32(data, x, y),
                _ => unreachable!("format and input kind were matched in gather_matvec"),
            }
        }
        return;
    }
    let _ = isa;
    match (w.format(), input) {
        (Format::T2, Input::I8 { x, scale }) => scalar::t2(data, x, scale, scales, y),
        (Format::I8, Input::I8 { x, scale }) => scalar::i8(data, x, scale, scales, y),
        (Format::F16, Input::F32(x)) => scalar::f16(data, x, y),
        (Format::F32, Input::F32(x)) => scalar::f32(data, x, y),
        _ => unreachable!("format and input kind were matched in gather_matvec"),
    }
}

/// The reference kernels: plain loops over the layout's definition.
pub(crate) mod scalar {
    use super::*;
    use half::f16;

    /// Integer results to f32: acc · ((γ/127) · scale_i), the exact order the SIMD kernels use.
    fn finish(acc: &[i32], scale: f32, row_scale: &[f32], y: &mut [f32]) {
        for ((o, &a), &s) in y.iter_mut().zip(acc).zip(row_scale) {
            *o = a as f32 * (scale * s);
        }
    }

    pub fn t2(tile: &[u8], x: &Sparse<i8>, scale: f32, row_scale: &[f32], y: &mut [f32]) {
        let bpc = Format::T2.bytes_per_tile_column();
        let mut acc = [0i32; TILE_ROWS];
        for (&j, &v) in x.indices.iter().zip(&x.values) {
            let c = &tile[j as usize * bpc..(j as usize + 1) * bpc];
            let (plus, minus) = c.split_at(bpc / 2);
            for (r, a) in acc.iter_mut().enumerate().take(y.len()) {
                let p = i32::from((plus[r / 8] >> (r % 8)) & 1);
                let m = i32::from((minus[r / 8] >> (r % 8)) & 1);
                *a += i32::from(v) * (p - m);
            }
        }
        finish(&acc, scale, row_scale, y);
    }

    pub fn i8(tile: &[u8], x: &Sparse<i8>, scale: f32, row_scale: &[f32], y: &mut [f32]) {
        let bpc = Format::I8.bytes_per_tile_column();
        let mut acc = [0i32; TILE_ROWS];
        for (&j, &v) in x.indices.iter().zip(&x.values) {
            let c = &tile[j as usize * bpc..(j as usize + 1) * bpc];
            for (a, &w) in acc.iter_mut().zip(c).take(y.len()) {
                *a += i32::from(v) * i32::from(w as i8);
            }
        }
        finish(&acc, scale, row_scale, y);
    }

    pub fn f16(tile: &[u8], x: &Sparse<f32>, y: &mut [f32]) {
        let bpc = Format::F16.bytes_per_tile_column();
        y.fill(0.0);
        for (&j, &v) in x.indices.iter().zip(&x.values) {
            let c = &tile[j as usize * bpc..(j as usize + 1) * bpc];
            for (o, w) in y.iter_mut().zip(c.chunks_exact(2)) {
                let w = f16::from_le_bytes([w[0], w[1]]).to_f32();
                *o = w.mul_add(v, *o);
            }
        }
    }

    pub fn f32(tile: &[u8], x: &Sparse<f32>, y: &mut [f32]) {
        let bpc = Format::F32.bytes_per_tile_column();
        y.fill(0.0);
        for (&j, &v) in x.indices.iter().zip(&x.values) {
            let c = &tile[j as usize * bpc..(j as usize + 1) * bpc];
            for (o, w) in y.iter_mut().zip(c.chunks_exact(4)) {
                let w = f32::from_le_bytes([w[0], w[1], w[2], w[3]]);
                *o = w.mul_add(v, *o);
            }
        }
    }
}
