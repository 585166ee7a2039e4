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
use crate::layout::{ColumnTiles, Format, CHUNK_BYTES, MAX_TILE_ROWS};
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
    let kernel = Kernel::select(isa, w.format());

    let rows = w.format().tile_rows();
    let n_tiles = w.n_tiles();
    let threads = rayon::current_num_threads();
    if threads <= 1 || n_tiles <= 1 || w.bytes_read(idx.len()) < PARALLEL_MIN_BYTES {
        for (t, ys) in y.chunks_mut(rows).enumerate() {
            kernel.run(w, t, input, ys);
        }
        return;
    }
    // Contiguous runs of tiles per worker keep each worker's reads in one region.
    let per_task = n_tiles.div_ceil(threads);
    y.par_chunks_mut(per_task * rows)
        .enumerate()
        .for_each(|(c, ys)| {
            for (k, yt) in ys.chunks_mut(rows).enumerate() {
                kernel.run(w, c * per_task + k, input, yt);
            }
        });
}

/// The tile kernel chosen for one product: decided once per call, not per tile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kernel {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512 {
        vnni: bool,
    },
    #[cfg(target_arch = "aarch64")]
    Neon,
}

impl Kernel {
    /// The kernel for `isa`, if this CPU has it (else the scalar reference).
    fn select(isa: Isa, format: Format) -> Kernel {
        let _ = format;
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 if crate::isa::x86::v4().is_some() => Kernel::Avx512 {
                vnni: crate::isa::x86::has_vnni(),
            },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 if crate::isa::x86::v3().is_some() => Kernel::Avx2,
            #[cfg(target_arch = "aarch64")]
            Isa::Neon if pulp::aarch64::Neon::try_new().is_some() => Kernel::Neon,
            _ => Kernel::Scalar,
        }
    }

    /// One output tile: rows t·R .. t·R + y.len() (R = the format's tile rows).
    fn run(self, w: &ColumnTiles<'_>, t: usize, input: Input<'_>, y: &mut [f32]) {
        let data = w.tile(t);
        let first = t * w.format().tile_rows();
        let scales = match w.format() {
            Format::T2 | Format::I8 => &w.row_scale()[first..first + y.len()],
            Format::F16 | Format::F32 => &[][..],
        };
        use Format::*;
        // SAFETY (every arm): `select` only returns a SIMD kernel after its pulp token (or CPUID)
        // proved the features; `data` is the whole tile (d_in chunks), every index is < d_in
        // (checked in gather_matvec), and y and scales hold y.len() <= tile rows.
        match (self, w.format(), input) {
            (Kernel::Scalar, T2, Input::I8 { x, scale }) => scalar::t2(data, x, scale, scales, y),
            (Kernel::Scalar, I8, Input::I8 { x, scale }) => scalar::i8(data, x, scale, scales, y),
            (Kernel::Scalar, F16, Input::F32(x)) => scalar::f16(data, x, y),
            (Kernel::Scalar, F32, Input::F32(x)) => scalar::f32(data, x, y),
            #[cfg(target_arch = "x86_64")]
            (Kernel::Avx2, T2, Input::I8 { x, scale }) => unsafe {
                avx2::t2(data, x, scale, scales, y)
            },
            #[cfg(target_arch = "x86_64")]
            (Kernel::Avx2, I8, Input::I8 { x, scale }) => unsafe {
                avx2::i8(data, x, scale, scales, y)
            },
            #[cfg(target_arch = "x86_64")]
            (Kernel::Avx2, F16, Input::F32(x)) => unsafe { avx2::f16(data, x, y) },
            #[cfg(target_arch = "x86_64")]
            (Kernel::Avx2, F32, Input::F32(x)) => unsafe { avx2::f32(data, x, y) },
            #[cfg(target_arch = "x86_64")]
            (Kernel::Avx512 { .. }, T2, Input::I8 { x, scale }) => unsafe {
                avx512::t2(data, x, scale, scales, y)
            },
            #[cfg(target_arch = "x86_64")]
            (Kernel::Avx512 { vnni: true }, I8, Input::I8 { x, scale }) => unsafe {
                avx512::i8_vnni(data, x, scale, scales, y)
            },
            #[cfg(target_arch = "x86_64")]
            (Kernel::Avx512 { vnni: false }, I8, Input::I8 { x, scale }) => unsafe {
                avx512::i8(data, x, scale, scales, y)
            },
            #[cfg(target_arch = "x86_64")]
            (Kernel::Avx512 { .. }, F16, Input::F32(x)) => unsafe { avx512::f16(data, x, y) },
            #[cfg(target_arch = "x86_64")]
            (Kernel::Avx512 { .. }, F32, Input::F32(x)) => unsafe { avx512::f32(data, x, y) },
            #[cfg(target_arch = "aarch64")]
            (Kernel::Neon, T2, Input::I8 { x, scale }) => unsafe {
                neon::t2(data, x, scale, scales, y)
            },
            #[cfg(target_arch = "aarch64")]
            (Kernel::Neon, I8, Input::I8 { x, scale }) => unsafe {
                neon::i8(data, x, scale, scales, y)
            },
            #[cfg(target_arch = "aarch64")]
            (Kernel::Neon, F16, Input::F32(x)) => unsafe { neon::f16(data, x, y) },
            #[cfg(target_arch = "aarch64")]
            (Kernel::Neon, F32, Input::F32(x)) => unsafe { neon::f32(data, x, y) },
            _ => unreachable!("format and input kind were matched in gather_matvec"),
        }
    }
}

#[cfg(target_arch = "aarch64")]
use crate::gather_neon as neon;
#[cfg(target_arch = "x86_64")]
use crate::{gather_avx2 as avx2, gather_avx512 as avx512};

/// The reference kernels: plain loops over the layout's definition.
pub(crate) mod scalar {
    use super::*;
    use half::f16;

    /// Integer results to f32: acc · ((γ/127) · scale_i), the exact order the SIMD kernels use.
    pub fn finish(acc: &[i32], scale: f32, row_scale: &[f32], y: &mut [f32]) {
        for ((o, &a), &s) in y.iter_mut().zip(acc).zip(row_scale) {
            *o = a as f32 * (scale * s);
        }
    }

    fn chunk(tile: &[u8], j: u32) -> &[u8] {
        &tile[j as usize * CHUNK_BYTES..(j as usize + 1) * CHUNK_BYTES]
    }

    pub fn t2(tile: &[u8], x: &Sparse<i8>, scale: f32, row_scale: &[f32], y: &mut [f32]) {
        let mut acc = [0i32; MAX_TILE_ROWS];
        for (&j, &v) in x.indices.iter().zip(&x.values) {
            let c = chunk(tile, j);
            for (r, a) in acc.iter_mut().enumerate().take(y.len()) {
                let (byte, shift) = crate::layout::t2_position(r);
                let t = i32::from((c[byte] >> shift) & 3) - 1;
                *a += i32::from(v) * t;
            }
        }
        finish(&acc, scale, row_scale, y);
    }

    pub fn i8(tile: &[u8], x: &Sparse<i8>, scale: f32, row_scale: &[f32], y: &mut [f32]) {
        let mut acc = [0i32; MAX_TILE_ROWS];
        for (&j, &v) in x.indices.iter().zip(&x.values) {
            for (a, &w) in acc.iter_mut().zip(chunk(tile, j)).take(y.len()) {
                *a += i32::from(v) * i32::from(w as i8);
            }
        }
        finish(&acc, scale, row_scale, y);
    }

    pub fn f16(tile: &[u8], x: &Sparse<f32>, y: &mut [f32]) {
        y.fill(0.0);
        for (&j, &v) in x.indices.iter().zip(&x.values) {
            for (o, w) in y.iter_mut().zip(chunk(tile, j).chunks_exact(2)) {
                *o = f16::from_le_bytes([w[0], w[1]]).to_f32().mul_add(v, *o);
            }
        }
    }

    pub fn f32(tile: &[u8], x: &Sparse<f32>, y: &mut [f32]) {
        y.fill(0.0);
        for (&j, &v) in x.indices.iter().zip(&x.values) {
            for (o, w) in y.iter_mut().zip(chunk(tile, j).chunks_exact(4)) {
                *o = f32::from_le_bytes([w[0], w[1], w[2], w[3]]).mul_add(v, *o);
            }
        }
    }
}
