//! AVX-512 run kernels for [`super`] and [`super::batch`]: the AVX2 kernels'
//! algorithms on 512-bit vectors (VNNI's fused `vpdpwssd` where present).
//!
//! T2 uses the AVX2 kernel, with GFNI field extraction where present (`avx2::t2_runs_gfni`; on
//! Zen4, 512-bit ops split in two, a 512-bit form would issue as many µops). A VNNI form
//! (`vpdpbusd` on quads of columns, no int16 stage) was slower there (`examples/hot_rate.rs`):
//! each dot carries its own accumulator load and store, as many µops as the int16 form's two.
//!
//! Callers guarantee (checked once in `gather_matvec`): the CPU has AVX-512 F/BW/VL (and VNNI
//! for the `_vnni` kernel); every index is < d_in, so each run lies in `l.tile`; `acc` holds n
//! lines of the format's rows.

use std::arch::x86_64::*;

use super::runs::{group4, runs4, Lines, Prefetch};

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

/// int8 weights against `B` int8 activation vectors with VNNI's `vpdpbusd`, which multiplies
/// four unsigned bytes by four signed ones and adds the four products into an int32 lane: four
/// kept columns per instruction, twice `vpdpwssd`'s two. The weights are the unsigned side,
/// offset by 128 (w XOR 0x80 = w + 128 as a byte), so each row's sum carries 128·Σx, which the
/// caller removes per vector (as it removes Σx from ternary codes). Each run swept line by line:
/// a line (64 rows) of each of four columns is interleaved bytewise with the
/// others' (each int32 lane then holds row r of the four columns); two such groups (eight
/// columns) go into each accumulator between its load and store, which keeps the sums' traffic
/// per multiply that of the pairwise kernel (with four columns a group it was slower than that
/// kernel, `examples/batch_speed.rs`). Int32 sums in `scratch`
/// `[line][vector][64]` kept in the interleaved order (vector v, element 4L + i: row 16L + 4v +
/// i), then put in row order by a 4 x 4 transpose of 128-bit lanes and *added* into `acc`
/// `[line][vector][64 rows]`. Values are int8 (the batch driver clamps int16 activation outliers
/// to ±127 for this kernel and sends the remainders through the single-vector one);
/// `values[p · B + t]` is vector t's value at column idx[p].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn i8_runs_dpbusd<const B: usize>(
    l: Lines<'_>,
    n: usize,
    idx: &[u32],
    values: &[i8],
    acc: &mut [i32],
    scratch: &mut [i32],
) {
    let rows = n * B * 64;
    assert!(B >= 1 && values.len() >= idx.len() * B && acc.len() >= rows && scratch.len() >= rows);
    scratch[..rows].fill(0);
    let sp = scratch.as_mut_ptr() as *mut __m512i;
    let flip = _mm512_set1_epi8(i8::MIN);
    let len = idx.len();
    let mut p = 0;
    while p < len {
        // SAFETY: the runs lie in the tile (n lines each); scratch holds n · B · 64 int32; values
        // are read at p + q < idx.len() only (past the end, padding columns count as 0).
        unsafe {
            let c0 = runs4(&l, idx, p);
            let c1 = if p + 4 < len {
                runs4(&l, idx, p + 4)
            } else {
                c0
            };
            let quad = |t: usize, p: usize| {
                let v = |q: usize| -> u32 {
                    if p + q < len {
                        u32::from(*values.get_unchecked((p + q) * B + t) as u8)
                    } else {
                        0
                    }
                };
                _mm512_set1_epi32((v(0) | v(1) << 8 | v(2) << 16 | v(3) << 24) as i32)
            };
            let x: [[__m512i; 2]; B] = std::array::from_fn(|t| [quad(t, p), quad(t, p + 4)]);
            let next = Prefetch::before(&l, idx, p + 8, n);
            let next2 = Prefetch::before(&l, idx, p + 12, n);
            for s in 0..n {
                next.line(s);
                next2.line(s);
                let interleave = |c: &[*const u8; 4]| {
                    let w = |q: usize| {
                        _mm512_xor_si512(_mm512_loadu_si512(c[q].add(64 * s) as *const _), flip)
                    };
                    let (w0, w1, w2, w3) = (w(0), w(1), w(2), w(3));
                    let (lo01, hi01) = (_mm512_unpacklo_epi8(w0, w1), _mm512_unpackhi_epi8(w0, w1));
                    let (lo23, hi23) = (_mm512_unpacklo_epi8(w2, w3), _mm512_unpackhi_epi8(w2, w3));
                    [
                        _mm512_unpacklo_epi16(lo01, lo23),
                        _mm512_unpackhi_epi16(lo01, lo23),
                        _mm512_unpacklo_epi16(hi01, hi23),
                        _mm512_unpackhi_epi16(hi01, hi23),
                    ]
                };
                let (q0, q1) = (interleave(&c0), interleave(&c1));
                for (t, &[x0, x1]) in x.iter().enumerate() {
                    let block = sp.add(4 * (s * B + t));
                    for v in 0..4 {
                        let a = block.add(v);
                        let sum = _mm512_dpbusd_epi32(_mm512_loadu_si512(a as *const _), q0[v], x0);
                        _mm512_storeu_si512(a as *mut _, _mm512_dpbusd_epi32(sum, q1[v], x1));
                    }
                }
            }
        }
        p += 8;
    }
    // Row order: output vector L (rows 16L .. 16L + 16) is lane L of vectors 0, 1, 2, 3.
    let ap = acc.as_mut_ptr() as *mut __m512i;
    for block in 0..n * B {
        // SAFETY: scratch and acc hold n · B blocks of 4 vectors.
        unsafe {
            let (s4, a4) = (sp.add(4 * block), ap.add(4 * block));
            let v = |i: usize| _mm512_loadu_si512(s4.add(i) as *const _);
            let (a, b, c, d) = (v(0), v(1), v(2), v(3));
            let t0 = _mm512_shuffle_i32x4::<0x44>(a, b);
            let t1 = _mm512_shuffle_i32x4::<0xEE>(a, b);
            let t2 = _mm512_shuffle_i32x4::<0x44>(c, d);
            let t3 = _mm512_shuffle_i32x4::<0xEE>(c, d);
            let out = [
                _mm512_shuffle_i32x4::<0x88>(t0, t2),
                _mm512_shuffle_i32x4::<0xDD>(t0, t2),
                _mm512_shuffle_i32x4::<0x88>(t1, t3),
                _mm512_shuffle_i32x4::<0xDD>(t1, t3),
            ];
            for (lane, o) in out.into_iter().enumerate() {
                let dst = a4.add(lane);
                _mm512_storeu_si512(
                    dst as *mut _,
                    _mm512_add_epi32(_mm512_loadu_si512(dst as *const _), o),
                );
            }
        }
    }
}
