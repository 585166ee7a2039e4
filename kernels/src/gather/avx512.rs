//! AVX-512 run kernels for [`super`] and [`super::batch`]: the AVX2 kernels'
//! algorithms on 512-bit vectors (VNNI's fused `vpdpwssd` where present).
//!
//! A single T2 product uses the AVX2 kernel, with GFNI field extraction where present
//! (`avx2::t2_runs_gfni`; on Zen4, 512-bit ops split in two, a 512-bit form would issue as many
//! µops). A VNNI form (`vpdpbusd` on quads of columns, no int16 stage) was slower there
//! (`examples/hot_rate.rs`): each dot carries its own accumulator load and store, as many µops as
//! the int16 form's two. Batched T2 products (prompts) take [`i8_runs_dpbusd`], whose sums stay
//! in registers.
//!
//! Callers guarantee (checked once in `gather_matvec`): the CPU has AVX-512 F/BW/VL (and VNNI
//! for the `_vnni` kernel); every index is < d_in, so each run lies in `l.tile`; `acc` holds n
//! lines of the format's rows.

use std::arch::x86_64::*;

use super::runs::{group4, runs4, Lines, Prefetch};
use crate::layout::LINE_BYTES;

/// int8 weights (64 rows per line) against `B` activation vectors at once (B = 1: a decode step's
/// product; more: a batch of prompt tokens, [`super::batch`]), as the AVX2 kernel: four
/// kept columns at a time, runs swept line by line, 32-row halves widened to int16 and
/// interleaved pairwise once for all vectors, each vector's (x1, x2) pairs multiplied in with
/// `vpmaddwd` (or VNNI's fused `vpdpwssd`) into int32 accumulators `acc[line][vector][64 rows]`,
/// kept in the interleaved row order (lane L of "lo": rows 8L..8L+3 of a 32-row block, "hi":
/// 8L+4..8L+7) until the end. `values[p · B + t]` is vector t's value at column idx[p]: int8, or
/// int16 (the activation outliers at the int8 scale), which both instructions take as readily.
///
/// On Zen4 the batched form runs at ~24 token-weights a cycle on one core, about 3/4 of one
/// 512-bit multiply a cycle. LLVM compiles every second `vpdpwssd` of a chain as `vpmaddwd` +
/// `vpaddd`; forcing `vpdpwssd` through inline asm was slower (74-81 against 84-91 billion a
/// second, 8 tokens in L2), and sweeping eight columns per group, to load and store each
/// accumulator half as often, slower too (74-80). Batches of int8 values take
/// [`i8_runs_dpbusd`] there, four columns a multiply.
macro_rules! i8_runs {
    ($B:ident, $V:ident, $l:ident, $n:ident, $idx:ident, $val:ident, $acc:ident, $dot:expr) => {{
        assert!($B >= 1 && $val.len() >= $idx.len() * $B && $acc.len() >= $n * $B * 64);
        let ap = $acc.as_mut_ptr() as *mut __m512i;
        let pair = |a: $V, b: $V| {
            let (a, b): (i16, i16) = (a.into(), b.into());
            _mm512_set1_epi32(((u32::from(b as u16) << 16) | u32::from(a as u16)) as i32)
        };
        let mut p = 0;
        while p < $idx.len() {
            // SAFETY: the runs lie in the tile (n lines each); acc holds n · B · 64 int32; values
            // are read at p + q < idx.len() only (past the end, the padding column counts as 0).
            unsafe {
                let c = runs4(&$l, $idx, p);
                let mut x = [[_mm512_setzero_si512(); 2]; $B];
                for (t, x) in x.iter_mut().enumerate() {
                    let v = |q: usize| {
                        if p + q < $idx.len() {
                            *$val.get_unchecked((p + q) * $B + t)
                        } else {
                            $V::default()
                        }
                    };
                    *x = [pair(v(0), v(1)), pair(v(2), v(3))];
                }
                let next = Prefetch::before(&$l, $idx, p + 4, $n);
                for s in 0..$n {
                    next.line(s);
                    for b in 0..2 {
                        let o = 64 * s + 32 * b;
                        let w = |q: usize| {
                            _mm512_cvtepi8_epi16(_mm256_loadu_si256(c[q].add(o) as *const __m256i))
                        };
                        let (w0, w1, w2, w3) = (w(0), w(1), w(2), w(3));
                        let (lo01, lo23) =
                            (_mm512_unpacklo_epi16(w0, w1), _mm512_unpacklo_epi16(w2, w3));
                        let (hi01, hi23) =
                            (_mm512_unpackhi_epi16(w0, w1), _mm512_unpackhi_epi16(w2, w3));
                        for (t, &[x01, x23]) in x.iter().enumerate() {
                            let at = 4 * (s * $B + t) + 2 * b;
                            let (pl, ph) = (ap.add(at), ap.add(at + 1));
                            let lo = $dot(_mm512_loadu_si512(pl as *const _), lo01, x01);
                            let lo = $dot(lo, lo23, x23);
                            let hi = $dot(_mm512_loadu_si512(ph as *const _), hi01, x01);
                            let hi = $dot(hi, hi23, x23);
                            _mm512_storeu_si512(pl as *mut _, lo);
                            _mm512_storeu_si512(ph as *mut _, hi);
                        }
                    }
                }
            }
            p += 4;
        }
        let first = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
        let second =
            _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31);
        for q in 0..$n * $B * 2 {
            // SAFETY: acc holds n · B · 64 int32 = 4 n B vectors.
            unsafe {
                let (lo, hi) = (
                    _mm512_loadu_si512(ap.add(2 * q) as *const _),
                    _mm512_loadu_si512(ap.add(2 * q + 1) as *const _),
                );
                _mm512_storeu_si512(
                    ap.add(2 * q) as *mut _,
                    _mm512_permutex2var_epi32(lo, first, hi),
                );
                _mm512_storeu_si512(
                    ap.add(2 * q + 1) as *mut _,
                    _mm512_permutex2var_epi32(lo, second, hi),
                );
            }
        }
    }};
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub unsafe fn i8_runs<const B: usize, V: Copy + Default + Into<i16>>(
    l: Lines<'_>,
    n: usize,
    idx: &[u32],
    values: &[V],
    acc: &mut [i32],
) {
    i8_runs!(B, V, l, n, idx, values, acc, |s, w, xp| _mm512_add_epi32(
        s,
        _mm512_madd_epi16(w, xp)
    ))
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn i8_runs_vnni<const B: usize, V: Copy + Default + Into<i16>>(
    l: Lines<'_>,
    n: usize,
    idx: &[u32],
    values: &[V],
    acc: &mut [i32],
) {
    i8_runs!(
        B,
        V,
        l,
        n,
        idx,
        values,
        acc,
        |s, w, xp| _mm512_dpwssd_epi32(s, w, xp)
    )
}

/// f32 / f16 weights: four kept columns at a time, each run swept line by line, one FMA chain per
/// row in column order (a last group of fewer columns goes one column at a time).
/// `$load(run, byte offset)` reads 16 rows as f32.
macro_rules! float_runs {
    ($l:ident, $n:ident, $idx:ident, $val:ident, $acc:ident, $rows:expr, $bytes_per_16:expr, $load:expr) => {{
        const ROWS: usize = $rows;
        assert!($acc.len() >= $n * ROWS);
        let ap = $acc.as_mut_ptr();
        let full = $idx.len() / 4 * 4;
        let mut p = 0;
        while p < $idx.len() {
            let group = if p < full { 4 } else { 1 };
            // SAFETY: the runs lie in the tile (n lines each); acc holds n · ROWS floats.
            unsafe {
                let (c, v) = group4(&$l, $idx, $val, p);
                let x = [
                    _mm512_set1_ps(v[0]),
                    _mm512_set1_ps(v[1]),
                    _mm512_set1_ps(v[2]),
                    _mm512_set1_ps(v[3]),
                ];
                let next = Prefetch::before(&$l, $idx, p + group, $n);
                for s in 0..$n {
                    next.line(s);
                    for q in 0..ROWS / 16 {
                        let at = ap.add(s * ROWS + 16 * q);
                        let o = 64 * s + $bytes_per_16 * q;
                        let mut a = _mm512_loadu_ps(at);
                        for g in 0..group {
                            a = _mm512_fmadd_ps($load(c[g], o), x[g], a);
                        }
                        _mm512_storeu_ps(at, a);
                    }
                }
            }
            p += group;
        }
    }};
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub unsafe fn f32_runs(l: Lines<'_>, n: usize, idx: &[u32], val: &[f32], acc: &mut [f32]) {
    float_runs!(l, n, idx, val, acc, 16, 64, |c: *const u8, o: usize| {
        _mm512_loadu_ps(c.add(o) as *const f32)
    })
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub unsafe fn f16_runs(l: Lines<'_>, n: usize, idx: &[u32], val: &[f32], acc: &mut [f32]) {
    float_runs!(l, n, idx, val, acc, 32, 32, |c: *const u8, o: usize| {
        _mm512_cvtph_ps(_mm256_loadu_si256(c.add(o) as *const __m256i))
    })
}

/// Groups of four columns a block of [`i8_runs_dpbusd`]: the block's interleaved weights (8 KiB a
/// 64-row line of output, 32 KiB a T2 line of 256) stay in L2 while every line's sums are computed.
const DPBUSD_BLOCK: usize = 32;

/// Vectors from one half line's interleaved block to the next: the block's 2 · [`DPBUSD_BLOCK`]
/// and two more, so that consecutive half lines do not fall 4 KiB apart (the same L1 sets).
const PACKED_STRIDE: usize = 2 * DPBUSD_BLOCK + 2;

/// Scratch int32 values [`i8_runs_dpbusd`] needs for `columns` kept columns, `n` lines of
/// `rows` rows (64 for int8, 256 for T2) and a batch of `batch`.
pub fn dpbusd_scratch(columns: usize, n: usize, rows: usize, batch: usize) -> usize {
    columns.div_ceil(4) * batch + n * batch * rows + n * (rows / 32) * PACKED_STRIDE * 16
}

/// int8 (or, with `T2`, ternary) weights against `batch` int8 activation vectors with VNNI's
/// `vpdpbusd`, which multiplies four unsigned bytes by four signed ones and adds the four products
/// into an int32 lane: four kept columns per instruction. The weights are the unsigned side: int8
/// ones offset by 128 (w XOR 0x80 = w + 128 as a byte), so each row's sum carries 128·Σx, T2 codes
/// t + 1 as they are (Σx); the caller removes it per vector. Results are *added* into `acc`
/// `[line][vector][rows]` (64 rows a line, 256 for T2) in row order. Values are int8 (the batch driver clamps int16 activation outliers to ±127 for this
/// kernel and sends the remainders through the single-vector one); `values[p · batch + t]` is vector
/// t's value at column idx[p]. `scratch` holds [`dpbusd_scratch`] values.
///
/// A matrix product's blocking, in two phases per block of [`DPBUSD_BLOCK`] groups of four
/// columns. Packing sweeps each group's runs in order (sequential reads, prefetched as the other
/// run kernels do) and interleaves the four columns bytewise, so that an int32 lane holds one row
/// of the four, into a buffer laid out line by line. Computing then takes each half line (32
/// rows) with up to [`DPBUSD_GROUP`] vectors' sums in registers (2 per vector) across the block's
/// columns (a larger batch takes the block's interleaved weights again from L2, group by group), each
/// interleaved group multiplied by every vector's four values (one int32, broadcast from
/// memory). Sweeping the runs line by line with the sums loaded and stored around every multiply
/// ran at ~20 multiply-adds a cycle per core; sweeping every column's line in turn without the
/// packing is faster in cache but slower from memory, where its reads scatter
/// (`examples/batch_speed.rs`, with and without `warm`).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn i8_runs_dpbusd<const T2: bool>(
    l: Lines<'_>,
    n: usize,
    idx: &[u32],
    values: &[i8],
    batch: usize,
    acc: &mut [i32],
    scratch: &mut [i32],
) {
    let b = batch;
    // Rows of a line, and its sweeps of 32 rows.
    let rows = if T2 { 256 } else { 64 };
    let halves = rows / 32;
    let len = idx.len();
    let quads = len.div_ceil(4);
    assert!(
        b >= 1
            && values.len() >= len * b
            && acc.len() >= n * b * rows
            && scratch.len() >= dpbusd_scratch(len, n, rows, b)
    );
    let (xq, rest) = scratch.split_at_mut(quads * b);
    let (sums, packed) = rest.split_at_mut(n * b * rows);
    // Vector t's values at columns 4k .. 4k + 4 as one int32 (zeros past the end): a 4 x batch
    // byte transpose a quad (a scalar loop here was ~7% of a prompt's int8 products).
    let token_mask: __mmask32 = if b == 32 { !0 } else { (1 << b) - 1 };
    for k in 0..quads {
        // SAFETY: column p's b values lie within values (p < len; the mask keeps the load to
        // them); quad k's b int32 lie within xq (the masks keep the stores to them).
        unsafe {
            let column = |q: usize| {
                let p = 4 * k + q;
                if p < len {
                    _mm256_maskz_loadu_epi8(token_mask, values.as_ptr().add(p * b).cast())
                } else {
                    _mm256_setzero_si256()
                }
            };
            let (c0, c1, c2, c3) = (column(0), column(1), column(2), column(3));
            let (lo01, hi01) = (_mm256_unpacklo_epi8(c0, c1), _mm256_unpackhi_epi8(c0, c1));
            let (lo23, hi23) = (_mm256_unpacklo_epi8(c2, c3), _mm256_unpackhi_epi8(c2, c3));
            // Tokens [0-3 | 16-19], [4-7 | 20-23], [8-11 | 24-27], [12-15 | 28-31].
            let (a, bb) = (
                _mm256_unpacklo_epi16(lo01, lo23),
                _mm256_unpackhi_epi16(lo01, lo23),
            );
            let (c, d) = (
                _mm256_unpacklo_epi16(hi01, hi23),
                _mm256_unpackhi_epi16(hi01, hi23),
            );
            let out = [
                _mm256_permute2x128_si256::<0x20>(a, bb),
                _mm256_permute2x128_si256::<0x20>(c, d),
                _mm256_permute2x128_si256::<0x31>(a, bb),
                _mm256_permute2x128_si256::<0x31>(c, d),
            ];
            let dst = xq.as_mut_ptr().add(k * b);
            for (i, v) in out.into_iter().enumerate() {
                let m = (token_mask >> (8 * i)) as __mmask8;
                if m != 0 {
                    _mm256_mask_storeu_epi32(dst.add(8 * i).cast(), m, v);
                }
            }
        }
    }
    sums.fill(0);
    let (xp, sp, pp) = (
        xq.as_ptr(),
        sums.as_mut_ptr() as *mut __m512i,
        packed.as_mut_ptr() as *mut __m512i,
    );
    let flip = _mm256_set1_epi8(i8::MIN);
    let (shifts, three) = (_mm256_setr_epi64x(0, 2, 4, 6), _mm256_set1_epi8(3));
    let mut k0 = 0;
    while k0 < quads {
        let kn = DPBUSD_BLOCK.min(quads - k0);
        for k in 0..kn {
            let p = 4 * (k0 + k);
            // SAFETY: the runs lie in the tile (n lines each); packed holds n · halves half lines
            // of PACKED_STRIDE vectors (k < DPBUSD_BLOCK).
            unsafe {
                let c = runs4(&l, idx, p);
                let next = Prefetch::before(&l, idx, p + 4, n);
                for s in 0..n {
                    next.line(s);
                    for half in 0..halves {
                        let w = |q: usize| {
                            if T2 {
                                // Group `half` of the line: 8 bytes, row 8j + k of the group in
                                // bits 2j of byte k; lane j shifted by 2j gives rows 8j.. in
                                // order. Codes t + 1 are the unsigned side as they are.
                                let at = c[q].add(64 * s + 8 * half) as *const i64;
                                let v = _mm256_set1_epi64x(at.read_unaligned());
                                _mm256_and_si256(_mm256_srlv_epi64(v, shifts), three)
                            } else {
                                let at = c[q].add(64 * s + 32 * half) as *const __m256i;
                                _mm256_xor_si256(_mm256_loadu_si256(at), flip)
                            }
                        };
                        let (w0, w1, w2, w3) = (w(0), w(1), w(2), w(3));
                        let (lo01, hi01) =
                            (_mm256_unpacklo_epi8(w0, w1), _mm256_unpackhi_epi8(w0, w1));
                        let (lo23, hi23) =
                            (_mm256_unpacklo_epi8(w2, w3), _mm256_unpackhi_epi8(w2, w3));
                        // Each int32 lane: one row of the four columns. 128-bit lanes hold rows
                        // 0-3, 16-19, 4-7, 20-23 (first) and 8-11, 24-27, 12-15, 28-31 (second).
                        let dst = pp.add((s * halves + half) * PACKED_STRIDE + 2 * k);
                        _mm512_storeu_si512(
                            dst,
                            _mm512_inserti64x4::<1>(
                                _mm512_castsi256_si512(_mm256_unpacklo_epi16(lo01, lo23)),
                                _mm256_unpackhi_epi16(lo01, lo23),
                            ),
                        );
                        _mm512_storeu_si512(
                            dst.add(1),
                            _mm512_inserti64x4::<1>(
                                _mm512_castsi256_si512(_mm256_unpacklo_epi16(hi01, hi23)),
                                _mm256_unpackhi_epi16(hi01, hi23),
                            ),
                        );
                    }
                }
            }
        }
        // The block's sums, a group of up to DPBUSD_GROUP vectors at a time; the first group
        // also requests the next block's runs into L2 (its packing then reads them from there).
        for g0 in (0..b).step_by(DPBUSD_GROUP) {
            let ahead = (g0 == 0).then_some(4 * (k0 + kn));
            let block = DpbusdBlock {
                l: &l,
                idx,
                packed: pp,
                sums: sp,
                xq: xp,
                n,
                halves,
                batch: b,
                first: g0,
                k0,
                kn,
                ahead,
            };
            // SAFETY: as this function's; the group's vectors are g0 .. g0 + G <= batch.
            unsafe {
                match b - g0 {
                    1 => dpbusd_block::<1>(block),
                    2 => dpbusd_block::<2>(block),
                    3 => dpbusd_block::<3>(block),
                    4 => dpbusd_block::<4>(block),
                    5 => dpbusd_block::<5>(block),
                    6 => dpbusd_block::<6>(block),
                    7 => dpbusd_block::<7>(block),
                    _ => dpbusd_block::<DPBUSD_GROUP>(block),
                }
            }
        }
        k0 += kn;
    }
    // Row order: rows 0..16 and 16..32 of a half line from its two vectors' 128-bit lanes.
    let first = _mm512_setr_epi32(0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27);
    let second = _mm512_setr_epi32(4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31);
    let ap = acc.as_mut_ptr();
    for s in 0..n {
        for half in 0..halves {
            for t in 0..b {
                // SAFETY: sums holds n · halves · batch pairs of vectors; acc n · batch · rows
                // int32 (line s, vector t, rows 32·half .. 32·half + 32).
                unsafe {
                    let at = sp.add(2 * ((s * halves + half) * b + t));
                    let (z0, z1) = (_mm512_loadu_si512(at), _mm512_loadu_si512(at.add(1)));
                    for (i, idx) in [first, second].into_iter().enumerate() {
                        let dst = ap.add((s * b + t) * rows + 32 * half + 16 * i) as *mut __m512i;
                        let v = _mm512_permutex2var_epi32(z0, idx, z1);
                        _mm512_storeu_si512(dst, _mm512_add_epi32(_mm512_loadu_si512(dst), v));
                    }
                }
            }
        }
    }
}

/// Vectors whose sums one pass of [`i8_runs_dpbusd`] holds in registers (two each).
const DPBUSD_GROUP: usize = 8;

/// One block of [`i8_runs_dpbusd`]'s columns against one group of its vectors.
struct DpbusdBlock<'a, 'b> {
    l: &'a Lines<'b>,
    idx: &'a [u32],
    /// The block's interleaved weights, [`PACKED_STRIDE`] vectors a half line.
    packed: *const __m512i,
    /// Sums `[half line][vector][2]`, all `batch` vectors.
    sums: *mut __m512i,
    /// Four columns' values as one int32, `[group of four][vector]`.
    xq: *const i32,
    n: usize,
    /// Sweeps of 32 rows a line.
    halves: usize,
    batch: usize,
    /// The group's first vector.
    first: usize,
    /// The block's first group of four columns, and its number of groups.
    k0: usize,
    kn: usize,
    /// The next block's first column, to request into L2 as this one computes.
    ahead: Option<usize>,
}

/// Adds the block's products for vectors first .. first + G into their sums: each half line (32
/// rows) with the G vectors' sums in registers across the block's columns. The next block's runs
/// are requested into L2 along the way (each of a line's sweeps a share of its columns).
///
/// Safety: AVX-512 F/BW/VL and VNNI; the pointers hold what [`DpbusdBlock`] says for n lines,
/// batch >= first + G vectors and k0 + kn groups of four; idx's runs lie in the tile.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn dpbusd_block<const G: usize>(b: DpbusdBlock<'_, '_>) {
    let len = b.idx.len();
    // Columns of the next block each sweep requests (a line's sweeps share its 4 · DPBUSD_BLOCK
    // columns), and how many of them a group of four asks for.
    let per_sweep = 4 * DPBUSD_BLOCK / b.halves;
    let per_group = per_sweep.div_ceil(DPBUSD_BLOCK);
    for sh in 0..b.halves * b.n {
        let (line, cols) = (
            LINE_BYTES * (sh / b.halves),
            b.ahead.map(|a| a + per_sweep * (sh % b.halves)),
        );
        // SAFETY: as the function's; prefetches are hints, their addresses inside the runs
        // (indices < d_in, lines < n).
        unsafe {
            let at = b.sums.add(2 * (sh * b.batch + b.first));
            let mut v: [[__m512i; 2]; G] = std::array::from_fn(|t| {
                [
                    _mm512_loadu_si512(at.add(2 * t)),
                    _mm512_loadu_si512(at.add(2 * t + 1)),
                ]
            });
            let src = b.packed.add(sh * PACKED_STRIDE);
            for k in 0..b.kn {
                if let Some(cols) = cols {
                    for i in per_group * k..(per_group * (k + 1)).min(per_sweep) {
                        let p = cols + i;
                        if p < len {
                            let run = b.l.first + *b.idx.get_unchecked(p) as usize * b.l.stride;
                            let at = b.l.tile.as_ptr().add(run + line);
                            _mm_prefetch::<_MM_HINT_T1>(at as *const i8);
                        }
                    }
                }
                let (z0, z1) = (
                    _mm512_loadu_si512(src.add(2 * k)),
                    _mm512_loadu_si512(src.add(2 * k + 1)),
                );
                let x = b.xq.add((b.k0 + k) * b.batch + b.first);
                for (t, v) in v.iter_mut().enumerate() {
                    let xv = _mm512_set1_epi32(*x.add(t));
                    v[0] = _mm512_dpbusd_epi32(v[0], z0, xv);
                    v[1] = _mm512_dpbusd_epi32(v[1], z1, xv);
                }
            }
            for (t, [lo, hi]) in v.into_iter().enumerate() {
                _mm512_storeu_si512(at.add(2 * t), lo);
                _mm512_storeu_si512(at.add(2 * t + 1), hi);
            }
        }
    }
}

/// The clamp of a batch's int8-scale values to int8 for [`i8_runs_dpbusd`] (see
/// `batch::Int8Split`): `narrow[i]` = clamp(values[i], ±127) over columns of `batch` values,
/// `sums[t]` += token t's clamped values, and `beyond(p, t)` for each value of column p and token
/// t that the clamp changed (an activation outlier). One column a vector; the portable loop was a
/// tenth of a prompt's time, serial (`qsparse bench --prompt-tokens 256`).
///
/// Safety: AVX-512 F/BW present; 1 <= batch <= 32; narrow.len() == values.len(), a multiple of
/// batch.
#[target_feature(enable = "avx512f,avx512bw")]
pub unsafe fn clamp_columns(
    values: &[i16],
    batch: usize,
    narrow: &mut [i8],
    sums: &mut [i32; 32],
    mut beyond: impl FnMut(usize, usize),
) {
    assert!((1..=32).contains(&batch) && narrow.len() == values.len());
    let m: __mmask32 = if batch == 32 { !0 } else { (1 << batch) - 1 };
    let (lo, hi) = (_mm512_set1_epi16(-127), _mm512_set1_epi16(127));
    let (mut sum_lo, mut sum_hi) = (_mm512_setzero_si512(), _mm512_setzero_si512());
    for p in 0..values.len() / batch {
        // SAFETY: column p's batch values lie within values and narrow (lengths checked); the
        // mask keeps the loads and stores to them.
        unsafe {
            let v = _mm512_maskz_loadu_epi16(m, values.as_ptr().add(p * batch));
            let c = _mm512_max_epi16(_mm512_min_epi16(v, hi), lo);
            _mm512_mask_cvtepi16_storeu_epi8(narrow.as_mut_ptr().add(p * batch).cast(), m, c);
            sum_lo = _mm512_add_epi32(sum_lo, _mm512_cvtepi16_epi32(_mm512_castsi512_si256(c)));
            sum_hi = _mm512_add_epi32(
                sum_hi,
                _mm512_cvtepi16_epi32(_mm512_extracti64x4_epi64::<1>(c)),
            );
            let mut changed = _mm512_mask_cmpneq_epi16_mask(m, v, c);
            while changed != 0 {
                beyond(p, changed.trailing_zeros() as usize);
                changed &= changed - 1;
            }
        }
    }
    let mut lanes = [0i32; 32];
    // SAFETY: lanes holds 32 int32, two vectors.
    unsafe {
        _mm512_storeu_si512(lanes.as_mut_ptr().cast(), sum_lo);
        _mm512_storeu_si512(lanes.as_mut_ptr().add(16).cast(), sum_hi);
    }
    for (s, l) in sums.iter_mut().zip(lanes) {
        *s += l;
    }
}

/// Each vector's own few int16 columns (its activation outliers' remainders, see
/// `batch::Int8Split`) against int8 weights (64 rows per line): acc[line][t][64 rows] +=
/// Σ_j w(row, idx[t][j])·values[t][j], for every vector t = 0..idx.len(). Per line and vector the
/// 64 sums stay in four registers over all its columns, two columns a `vpdpwssd`; the
/// single-vector kernel a vector at a time, its sums loaded and stored around every group of
/// four, was ~9% of a prompt's time (`perf record` of `qsparse bench --prompt-tokens 256`). The
/// runs were just read by the batch's product: they come from cache.
///
/// Safety: AVX-512 F/BW and VNNI present; every index < d_in (runs inside `l.tile`); values[t]
/// as long as idx[t]; acc holds n · idx.len() · 64 int32.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn i16_columns_each(
    l: Lines<'_>,
    n: usize,
    idx: &[Vec<u32>],
    values: &[Vec<i16>],
    acc: &mut [i32],
) {
    let b = idx.len();
    assert!(values.len() == b && acc.len() >= n * b * 64);
    assert!(idx.iter().zip(values).all(|(i, v)| i.len() == v.len()));
    // Within a register, rows 0-3, 8-11, 16-19, 24-27 (the pairs' low halves) or 4-7, 12-15, ...
    // (high halves): these put the 16 rows of two such registers back in order.
    let order0 = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
    let order1 = _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31);
    let base = l.tile.as_ptr();
    for s in 0..n {
        for (t, (idx, val)) in idx.iter().zip(values).enumerate() {
            if idx.is_empty() {
                continue;
            }
            let mut sums = [_mm512_setzero_si512(); 4];
            let mut p = 0;
            while p < idx.len() {
                // A lone last column pairs with itself times 0.
                let q = if p + 1 < idx.len() { p + 1 } else { p };
                let (v0, v1) = (val[p], if q > p { val[q] } else { 0 });
                let x =
                    _mm512_set1_epi32(((u32::from(v1 as u16) << 16) | u32::from(v0 as u16)) as i32);
                // SAFETY: the indices are < d_in, so line s of each run lies in the tile.
                unsafe {
                    let run = |j: u32| base.add(l.first + j as usize * l.stride + LINE_BYTES * s);
                    let (a, c) = (run(idx[p]), run(idx[q]));
                    for half in 0..2 {
                        let wa = _mm512_cvtepi8_epi16(_mm256_loadu_si256(a.add(32 * half).cast()));
                        let wc = _mm512_cvtepi8_epi16(_mm256_loadu_si256(c.add(32 * half).cast()));
                        sums[2 * half] =
                            _mm512_dpwssd_epi32(sums[2 * half], _mm512_unpacklo_epi16(wa, wc), x);
                        sums[2 * half + 1] = _mm512_dpwssd_epi32(
                            sums[2 * half + 1],
                            _mm512_unpackhi_epi16(wa, wc),
                            x,
                        );
                    }
                }
                p += 2;
            }
            // SAFETY: line s, vector t's 64 sums lie in acc (checked above).
            unsafe {
                let at = acc.as_mut_ptr().add((s * b + t) * 64);
                for half in 0..2 {
                    let (lo, hi) = (sums[2 * half], sums[2 * half + 1]);
                    for (i, order) in [order0, order1].into_iter().enumerate() {
                        let dst = at.add(32 * half + 16 * i).cast::<__m512i>();
                        let rows = _mm512_permutex2var_epi32(lo, order, hi);
                        _mm512_storeu_si512(dst, _mm512_add_epi32(_mm512_loadu_si512(dst), rows));
                    }
                }
            }
        }
    }
}
