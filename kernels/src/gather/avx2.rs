//! AVX2 run kernels for [`super`], the fast path on CPUs without AVX-512 (including the
//! machines qsparse is developed on). Each call sweeps the runs of all kept columns over `n`
//! lines of one tile, four columns at a time, adding into per-row accumulators (`acc`, L1).
//!
//! Callers guarantee (checked once in `gather_matvec`): the CPU has AVX2, FMA, F16C and BMI2;
//! every index is < d_in, so each run `l.first + j * l.stride .. + 64 n` lies in `l.tile`; `acc`
//! holds n lines of the format's rows.

use std::arch::x86_64::*;

use super::runs::{runs4, Lines, Prefetch};
use crate::layout::Format;

/// Field q by an immediate shift of whole 16-bit words and a mask (AVX2).
macro_rules! field_by_shift {
    ($q:literal, $v:expr) => {
        _mm256_and_si256(_mm256_srli_epi16::<{ 2 * $q }>($v), _mm256_set1_epi8(3))
    };
}

/// Field q by one GF(2) affine transform per byte (GFNI): output bits 0 and 1 take input bits 2q
/// and 2q + 1 (matrix rows 7 and 6), the rest are zero. One instruction for the shift and mask.
macro_rules! field_by_affine {
    ($q:literal, $v:expr) => {
        _mm256_gf2p8affine_epi64_epi8::<0>(
            $v,
            _mm256_set1_epi64x(
                (((1u64 << (2 * $q)) << 56) | ((1u64 << (2 * $q + 1)) << 48)) as i64,
            ),
        )
    };
}

/// Ternary 2-bit codes (256 rows per line): four kept columns at a time, each run swept line by
/// line. Each half line (32 bytes, 128 rows) is loaded once per column, and the raw bytes of
/// columns 0 and 1 (2 and 3) are interleaved. Shifting right by 2q (whole 16-bit words: immediate
/// shifts, the cheap kind) and masking with 3 then gives, per byte, the code of row 32g + 8q + k
/// (from byte 8g + k, g = 0..3), already in (column 1, column 2) pairs that `vpmaddubsw` multiplies
/// (unsigned) by the (x1, x2) pair (signed). Interleaving the codes after extracting them took 16
/// unpacks per half line instead of 4: 8.1 against 9.0 weights per cycle (`examples/hot_rate.rs`).
/// int16 partial sums live in `scratch` (L1), one vector per (line, half, q, unpack half), and are
/// flushed into `acc` every 32 groups of four columns (32 · 4 · 2 · 127 < 2^15). Codes are t + 1:
/// the caller removes Σx. (The batch kernel below with one vector.)
///
/// An earlier version decoded 8 code bytes at a time with a variable shift (`vpsrlvq`): on the
/// development machine that instruction issues once per 4 cycles, and the kernel ran 4.5 weights
/// per cycle against this one's 8.3 (`examples/hot_rate.rs`, one core, L2-resident).
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn t2_runs(
    l: Lines<'_>,
    n: usize,
    idx: &[u32],
    val: &[i8],
    acc: &mut [i32],
    scratch: &mut [i16],
) {
    // SAFETY: the same contract, for one vector.
    unsafe { t2_runs_batch::<1>(l, n, idx, val, acc, scratch) }
}

/// [`t2_runs`] with the fields extracted by GFNI's affine transform (one instruction where the
/// shift-and-mask takes two), used at the AVX-512 level where the CPU has GFNI: a few percent
/// more weights a cycle in L2 (`examples/hot_rate.rs`), end to end within the noise.
#[target_feature(enable = "avx2,fma,f16c,gfni")]
pub unsafe fn t2_runs_gfni(
    l: Lines<'_>,
    n: usize,
    idx: &[u32],
    val: &[i8],
    acc: &mut [i32],
    scratch: &mut [i16],
) {
    // SAFETY: the same contract, for one vector.
    unsafe { t2_runs_batch_gfni::<1>(l, n, idx, val, acc, scratch) }
}

/// [`t2_runs`] against `B` int8 activation vectors at once (a batch of prompt tokens,
/// [`super::batch`]): each half line's codes are loaded, interleaved and extracted once,
/// then multiplied by every vector's (x1, x2) pairs. int16 partial sums in `scratch`
/// [line][vector][256], flushed into `acc` [line][vector][256 rows] every 32 groups, as in the
/// single-vector kernel (whose sums these equal). `values[p · B + t]` is vector t's value at
/// column idx[p].
macro_rules! t2_runs_batch_body {
    ($l:ident, $n:ident, $idx:ident, $values:ident, $acc:ident, $scratch:ident, $B:ident, $field:ident) => {{
        let (l, n, idx, values, acc, scratch) = ($l, $n, $idx, $values, $acc, $scratch);
        let rows = n * $B * 256;
        assert!(values.len() >= idx.len() * $B && acc.len() >= rows && scratch.len() >= rows);
        let sp = scratch.as_mut_ptr() as *mut __m256i;
        let pair = |a: i8, b: i8| {
            _mm256_set1_epi16(((u16::from(b as u8) << 8) | u16::from(a as u8)) as i16)
        };
        scratch[..rows].fill(0);
        let mut p = 0;
        let mut groups = 0;
        while p < idx.len() {
            // SAFETY: the runs lie in the tile (n lines each); values are read at p + q <
            // idx.len() only; scratch holds n · B · 256 int16.
            unsafe {
                let c = runs4(&l, idx, p);
                let x: [[__m256i; 2]; $B] = std::array::from_fn(|t| {
                    let v = |q: usize| {
                        if p + q < idx.len() {
                            *values.get_unchecked((p + q) * $B + t)
                        } else {
                            0
                        }
                    };
                    [pair(v(0), v(1)), pair(v(2), v(3))]
                });
                let next = Prefetch::before(&l, idx, p + 4, n);
                for s in 0..n {
                    next.line(s);
                    for h in 0..2 {
                        let o = 64 * s + 32 * h;
                        let load = |q: usize| _mm256_loadu_si256(c[q].add(o) as *const __m256i);
                        let (w0, w1, w2, w3) = (load(0), load(1), load(2), load(3));
                        let pairs = [
                            _mm256_unpacklo_epi8(w0, w1),
                            _mm256_unpackhi_epi8(w0, w1),
                            _mm256_unpacklo_epi8(w2, w3),
                            _mm256_unpackhi_epi8(w2, w3),
                        ];
                        macro_rules! field {
                            ($q:literal) => {{
                                let f = |v: __m256i| $field!($q, v);
                                (f(pairs[0]), f(pairs[1]), f(pairs[2]), f(pairs[3]))
                            }};
                        }
                        let fields = [field!(0), field!(1), field!(2), field!(3)];
                        for (t, [x01, x23]) in x.iter().enumerate() {
                            for (q, &(lo01, hi01, lo23, hi23)) in fields.iter().enumerate() {
                                let lo = _mm256_add_epi16(
                                    _mm256_maddubs_epi16(lo01, *x01),
                                    _mm256_maddubs_epi16(lo23, *x23),
                                );
                                let hi = _mm256_add_epi16(
                                    _mm256_maddubs_epi16(hi01, *x01),
                                    _mm256_maddubs_epi16(hi23, *x23),
                                );
                                let at = 16 * (s * $B + t) + 8 * h + 2 * q;
                                let (pl, ph) = (sp.add(at), sp.add(at + 1));
                                _mm256_storeu_si256(
                                    pl,
                                    _mm256_add_epi16(_mm256_loadu_si256(pl), lo),
                                );
                                _mm256_storeu_si256(
                                    ph,
                                    _mm256_add_epi16(_mm256_loadu_si256(ph), hi),
                                );
                            }
                        }
                    }
                }
            }
            p += 4;
            groups += 1;
            if groups == 32 || p >= idx.len() {
                // SAFETY: both hold n · B blocks of 256 rows, each flushed as one line.
                unsafe { flush_t2(&mut scratch[..rows], &mut acc[..rows]) };
                groups = 0;
            }
        }
    }};
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn t2_runs_batch<const B: usize>(
    l: Lines<'_>,
    n: usize,
    idx: &[u32],
    values: &[i8],
    acc: &mut [i32],
    scratch: &mut [i16],
) {
    t2_runs_batch_body!(l, n, idx, values, acc, scratch, B, field_by_shift)
}

/// [`t2_runs_batch`] with GFNI's field extraction.
#[target_feature(enable = "avx2,fma,f16c,gfni")]
pub unsafe fn t2_runs_batch_gfni<const B: usize>(
    l: Lines<'_>,
    n: usize,
    idx: &[u32],
    values: &[i8],
    acc: &mut [i32],
    scratch: &mut [i16],
) {
    t2_runs_batch_body!(l, n, idx, values, acc, scratch, B, field_by_affine)
}

/// Adds the int16 partial sums of `scratch` into `acc` (natural row order) and clears them.
/// Scratch vector (line s, half h, field q, part) holds in its 128-bit lane L the 8 rows
/// 128h + 32(part + 2L) + 8q + 0..8 (`unpacklo` takes code groups 0 and 2, `unpackhi` 1 and 3),
/// so each lane widens straight onto 8 consecutive accumulators.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn flush_t2(scratch: &mut [i16], acc: &mut [i32]) {
    assert!(scratch.len().is_multiple_of(256) && acc.len() == scratch.len());
    let sp = scratch.as_mut_ptr() as *mut __m256i;
    let ap = acc.as_mut_ptr();
    let zero = _mm256_setzero_si256();
    for s in 0..scratch.len() / 256 {
        for h in 0..2 {
            for q in 0..4 {
                for part in 0..2 {
                    // SAFETY: the vector index is < 16 n and every row below is < 256 n.
                    unsafe {
                        let v = sp.add(16 * s + 8 * h + 2 * q + part);
                        let sums = _mm256_loadu_si256(v);
                        _mm256_storeu_si256(v, zero);
                        for (lane, half) in [
                            _mm256_castsi256_si128(sums),
                            _mm256_extracti128_si256::<1>(sums),
                        ]
                        .into_iter()
                        .enumerate()
                        {
                            let row = 256 * s + 128 * h + 32 * (part + 2 * lane) + 8 * q;
                            let a = ap.add(row) as *mut __m256i;
                            let wide = _mm256_cvtepi16_epi32(half);
                            _mm256_storeu_si256(a, _mm256_add_epi32(_mm256_loadu_si256(a), wide));
                        }
                    }
                }
            }
        }
    }
}

/// int8 weights (64 rows per line) against `B` activation vectors at once (B = 1: a decode step's
/// product; more: a batch of prompt tokens, [`super::batch`]): four kept columns at a
/// time, each run swept line by line (four sequential streams). Per 16-row slice, the bytes of
/// columns 0 and 1 (and 2 and 3) are interleaved with 128-bit unpacks (one µop each on cores that
/// split 256-bit ops) and widened to int16 (row, column) pairs, once for all vectors; each
/// vector's (x1, x2) pairs multiply them with `vpmaddwd`: rows come out in order, summed into
/// int32 accumulators `acc[line][vector][64 rows]`. Interleaving after a 256-bit widening instead
/// (two µops per unpack, rows reordered at the end) ran at the same 4.6-5.0 weights/cycle on one
/// core (`examples/hot_rate.rs`); this form needs no reordering. `values[p · B + t]` is vector
/// t's value at column idx[p]: int8, or int16 (the activation outliers at the int8 scale), which
/// `vpmaddwd` takes as readily.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn i8_runs<const B: usize, V: Copy + Default + Into<i16>>(
    l: Lines<'_>,
    n: usize,
    idx: &[u32],
    values: &[V],
    acc: &mut [i32],
) {
    assert!(B >= 1 && values.len() >= idx.len() * B && acc.len() >= n * B * 64);
    let ap = acc.as_mut_ptr() as *mut __m256i;
    let pair = |a: V, b: V| {
        let (a, b): (i16, i16) = (a.into(), b.into());
        _mm256_set1_epi32(((u32::from(b as u16) << 16) | u32::from(a as u16)) as i32)
    };
    let mut p = 0;
    while p < idx.len() {
        // SAFETY: the runs lie in the tile (n lines each); acc holds n · B · 64 int32; values are
        // read at p + q < idx.len() only (past the end, the padding column counts as 0).
        unsafe {
            let c = runs4(&l, idx, p);
            let mut x = [[_mm256_setzero_si256(); 2]; B];
            for (t, x) in x.iter_mut().enumerate() {
                let v = |q: usize| {
                    if p + q < idx.len() {
                        *values.get_unchecked((p + q) * B + t)
                    } else {
                        V::default()
                    }
                };
                *x = [pair(v(0), v(1)), pair(v(2), v(3))];
            }
            let next = Prefetch::before(&l, idx, p + 4, n);
            for s in 0..n {
                next.line(s);
                for b in 0..4 {
                    let o = 64 * s + 16 * b;
                    let w = |q: usize| _mm_loadu_si128(c[q].add(o) as *const __m128i);
                    let (w0, w1, w2, w3) = (w(0), w(1), w(2), w(3));
                    let widen = _mm256_cvtepi8_epi16;
                    let lo01 = widen(_mm_unpacklo_epi8(w0, w1));
                    let lo23 = widen(_mm_unpacklo_epi8(w2, w3));
                    let hi01 = widen(_mm_unpackhi_epi8(w0, w1));
                    let hi23 = widen(_mm_unpackhi_epi8(w2, w3));
                    for (t, &[x01, x23]) in x.iter().enumerate() {
                        let first = _mm256_add_epi32(
                            _mm256_madd_epi16(lo01, x01),
                            _mm256_madd_epi16(lo23, x23),
                        );
                        let second = _mm256_add_epi32(
                            _mm256_madd_epi16(hi01, x01),
                            _mm256_madd_epi16(hi23, x23),
                        );
                        let (pl, ph) = (
                            ap.add(8 * (s * B + t) + 2 * b),
                            ap.add(8 * (s * B + t) + 2 * b + 1),
                        );
                        _mm256_storeu_si256(pl, _mm256_add_epi32(_mm256_loadu_si256(pl), first));
                        _mm256_storeu_si256(ph, _mm256_add_epi32(_mm256_loadu_si256(ph), second));
                    }
                }
            }
        }
        p += 4;
    }
}

/// f32 / f16 weights: four kept columns at a time, each run swept line by line, one FMA chain
/// per row in column order (a last group of fewer columns goes one column at a time, so no
/// padding term can touch the sums). B activation vectors at once (`values[p · B + t]`, `acc`
/// `[line][vector][ROWS]`): each weight is loaded (and widened) once for all of them, and each
/// vector's sums are the ones a product of its own computes, bit for bit (same chain, same
/// order; a 0 value adds w·0 = ±0 to a sum that is never −0). `load(run, byte offset)` reads 8
/// rows as f32.
#[inline(always)]
unsafe fn sweep_float<const B: usize, const ROWS: usize>(
    l: Lines<'_>,
    n: usize,
    idx: &[u32],
    values: &[f32],
    acc: &mut [f32],
    bytes_per_8: usize,
    load: impl Fn(*const u8, usize) -> __m256,
) {
    assert!(B >= 1 && values.len() >= idx.len() * B && acc.len() >= n * B * ROWS);
    let full = idx.len() / 4 * 4;
    let mut p = 0;
    while p < idx.len() {
        // SAFETY: p < idx.len(), and a group of four only below `full`; the rest as the callers'
        // contract (runs inside the tile, acc of n · B · ROWS floats).
        unsafe {
            if p < full {
                float_group::<B, 4, ROWS>(&l, n, idx, values, p, acc, bytes_per_8, &load);
                p += 4;
            } else {
                float_group::<B, 1, ROWS>(&l, n, idx, values, p, acc, bytes_per_8, &load);
                p += 1;
            }
        }
    }
}

/// The G columns from position p (p + G <= idx.len()) of [`sweep_float`].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn float_group<const B: usize, const G: usize, const ROWS: usize>(
    l: &Lines<'_>,
    n: usize,
    idx: &[u32],
    values: &[f32],
    p: usize,
    acc: &mut [f32],
    bytes_per_8: usize,
    load: &impl Fn(*const u8, usize) -> __m256,
) {
    let ap = acc.as_mut_ptr();
    // SAFETY: columns p .. p + G exist (values hold B each); their runs lie in the tile (n lines
    // each); acc holds n · B · ROWS floats.
    unsafe {
        let c = runs4(l, idx, p);
        let x: [[__m256; G]; B] = std::array::from_fn(|t| {
            std::array::from_fn(|g| _mm256_set1_ps(*values.get_unchecked((p + g) * B + t)))
        });
        let next = Prefetch::before(l, idx, p + G, n);
        for s in 0..n {
            next.line(s);
            for q in 0..ROWS / 8 {
                let o = 64 * s + bytes_per_8 * q;
                let w: [__m256; G] = std::array::from_fn(|g| load(c[g], o));
                for (t, x) in x.iter().enumerate() {
                    let at = ap.add((s * B + t) * ROWS + 8 * q);
                    let mut a = _mm256_loadu_ps(at);
                    for (w, x) in w.iter().zip(x) {
                        a = _mm256_fmadd_ps(*w, *x, a);
                    }
                    _mm256_storeu_ps(at, a);
                }
            }
        }
    }
}

/// f16 or f32 weights, B activation vectors at once (see [`sweep_float`]).
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn float_runs<const B: usize>(
    format: Format,
    l: Lines<'_>,
    n: usize,
    idx: &[u32],
    values: &[f32],
    acc: &mut [f32],
) {
    // SAFETY: the caller's contract; each load reads 8 rows (32 or 16 bytes) inside a 64-byte
    // line.
    unsafe {
        match format {
            Format::F16 => sweep_float::<B, 32>(l, n, idx, values, acc, 16, |c, o| {
                _mm256_cvtph_ps(_mm_loadu_si128(c.add(o) as *const __m128i))
            }),
            _ => sweep_float::<B, 16>(l, n, idx, values, acc, 32, |c, o| {
                _mm256_loadu_ps(c.add(o) as *const f32)
            }),
        }
    }
}
