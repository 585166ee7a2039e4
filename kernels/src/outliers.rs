//! The m largest-magnitude entries of an activation vector (its outliers) and the largest
//! magnitude among the rest: the executor keeps the outliers out of int8 quantization and scales
//! the rest by that maximum. Runs before every projection (120 times per SmolLM2 token), so its
//! few microseconds count: before the AVX2 path below it was about half of the selection, which
//! took ~8% of a sparse decode step.

use crate::isa::Isa;
use crate::quant::all_finite;
#[cfg(target_arch = "x86_64")]
use crate::topk::GROUPS;
use crate::topk::{compact_f32, group_bar, Sparse};

/// Reusable working lists of [`largest_f32`] (no allocation once sized).
#[derive(Debug, Clone, Default)]
pub struct Scratch {
    /// The generic path's keys: magnitude bits, then inverted index.
    keys: Vec<u64>,
    /// The AVX2 path's candidates: indices and magnitude bits.
    #[cfg(target_arch = "x86_64")]
    index: Vec<u32>,
    #[cfg(target_arch = "x86_64")]
    bits: Vec<i32>,
}

/// The `m` entries of `x` with the largest |x| (ties: lowest index first), as (index, value) pairs
/// in ascending index order into `out`, and the largest magnitude among the other entries (0 when
/// none remain). NaN and ±inf order above every finite magnitude (NaN above +inf, as
/// `total_cmp`).
///
/// Both paths first find a bar no higher than the (m+1)-th largest magnitude from the maxima of
/// 64 interleaved groups, so that only a few dozen candidates (on activations) go through the exact
/// selection. The generic path (every ISA; the AVX2 one's reference) takes the bar as the maxima's
/// (m+1)-th largest and selects among candidate keys with `select_nth_unstable`; on AVX2, for
/// finite x and m < 64, the bar and the exact threshold are found by counting compares, about
/// twice as fast on SmolLM2's activations (67 candidates on average at m = 32;
/// `examples/select_cost.rs`).
pub fn largest_f32(
    isa: Isa,
    x: &[f32],
    m: usize,
    scratch: &mut Scratch,
    out: &mut Sparse<f32>,
) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if matches!(isa, Isa::Avx2 | Isa::Avx512)
        && m < GROUPS
        && x.len() >= GROUPS
        && crate::isa::x86::v3().is_some()
    {
        // SAFETY: the V3 token proves AVX2 and POPCNT; x holds at least 64 entries and m < 64.
        if let Some(rest) = unsafe { avx2::largest(x, m, scratch, out) } {
            return rest;
        }
    }
    largest_generic(isa, x, m, &mut scratch.keys, out)
}

/// The reference path (see [`largest_f32`]): a bar from [`group_bar`], the SIMD compaction of
/// everything that reaches it, then a selection over the candidates' keys (magnitude bits, then
/// inverted index: one u64 order). m >= 64 or short inputs take every entry as a candidate.
fn largest_generic(
    isa: Isa,
    x: &[f32],
    m: usize,
    keys: &mut Vec<u64>,
    out: &mut Sparse<f32>,
) -> f32 {
    out.indices.clear();
    out.values.clear();
    if m >= x.len() {
        out.dense(x);
        return 0.0;
    }
    let (bar, finite) = match group_bar(x, m) {
        Some((bar, true)) => (bar, true),
        Some((_, false)) => (0.0, false),
        None => (0.0, all_finite(x)),
    };
    // Everything at or above the bar: ties at the bar all count.
    compact_f32(isa, x, bar, x.len(), finite, out);
    keys.clear();
    keys.extend(
        out.indices
            .iter()
            .zip(&out.values)
            .map(|(&i, v)| (u64::from(v.abs().to_bits()) << 32) | u64::from(!i)),
    );
    // Every one of the m + 1 largest reached the bar: the top m + 1 keys are theirs.
    let n = keys.len();
    let (_, &mut next, top) = keys.select_nth_unstable(n - 1 - m);
    out.indices.clear();
    out.indices.extend(top.iter().map(|&k| !(k as u32)));
    out.indices.sort_unstable();
    out.values.clear();
    out.values
        .extend(out.indices.iter().map(|&i| x[i as usize]));
    f32::from_bits((next >> 32) as u32)
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{Scratch, Sparse, GROUPS};
    use crate::topk::avx2::FRONT32;

    /// Magnitudes as their bit patterns: non-negative floats order like their bits as i32.
    const ABS: i32 = 0x7fff_ffff;
    /// The bar keeps this many leading bits of a magnitude (8 exponent, 4 mantissa): it is a
    /// lower bound within 1/16 of an octave of the maxima's (m+1)-th largest.
    const BAR_LOW_BIT: u32 = 19;

    /// How many entries of `v` (a multiple of 8 long) are >= c (c >= 1: c − 1 does not wrap).
    #[inline(always)]
    unsafe fn count_at_least(v: &[i32], c: i32) -> usize {
        // SAFETY: the caller's target features include AVX2.
        let cv = unsafe { _mm256_set1_epi32(c - 1) };
        v.chunks_exact(8)
            .map(|r| {
                // SAFETY: r holds 8 values; the caller's target features include AVX2.
                let mask = unsafe {
                    let gt =
                        _mm256_cmpgt_epi32(_mm256_loadu_si256(r.as_ptr() as *const __m256i), cv);
                    _mm256_movemask_ps(_mm256_castsi256_ps(gt))
                };
                (mask as u32).count_ones() as usize
            })
            .sum()
    }

    /// `largest_f32` for 64 <= x.len() and m < 64, or None when x is not finite.
    ///
    /// 1. the maxima of the 64 interleaved groups (8 registers, one pass);
    /// 2. a bar: the largest 12-bit magnitude prefix that m + 1 of the maxima reach (12 counts of
    ///    8 compares), so every one of the m + 1 largest entries reaches it;
    /// 3. the candidates (entries at or above the bar) compacted with their magnitude bits;
    /// 4. the exact (m+1)-th largest magnitude t by bisection on the candidates' counts, stopped
    ///    early when exactly m + 1 reach the midpoint (then t is their minimum);
    /// 5. the outliers: the candidates above t, and as many equal to t as make m, lowest index
    ///    first; the rest's maximum is t.
    #[target_feature(enable = "avx2,popcnt")]
    pub unsafe fn largest(
        x: &[f32],
        m: usize,
        s: &mut Scratch,
        out: &mut Sparse<f32>,
    ) -> Option<f32> {
        let d = x.len();
        let p = x.as_ptr();
        let abs = _mm256_set1_epi32(ABS);
        let magnitude = |v: f32| (v.to_bits() as i32) & ABS;
        // SAFETY: the loads read x[i..i + 64] with i + 64 <= d, the stores fill `lanes`; this
        // function's target features.
        let maxima = unsafe {
            let mut g = [_mm256_setzero_si256(); GROUPS / 8];
            let full = d / GROUPS * GROUPS;
            let mut i = 0;
            while i < full {
                for (j, a) in g.iter_mut().enumerate() {
                    let v = _mm256_loadu_si256(p.add(i + 8 * j) as *const __m256i);
                    *a = _mm256_max_epi32(*a, _mm256_and_si256(v, abs));
                }
                i += GROUPS;
            }
            let mut lanes = [0i32; GROUPS];
            for (j, a) in g.iter().enumerate() {
                _mm256_storeu_si256(lanes.as_mut_ptr().add(8 * j) as *mut __m256i, *a);
            }
            for (a, &v) in lanes.iter_mut().zip(&x[full..]) {
                *a = (*a).max(magnitude(v));
            }
            lanes
        };
        // The largest magnitude, and finiteness: NaN and ±inf have the largest bit patterns.
        let top = maxima.iter().fold(0, |a, &v| a.max(v));
        if top >= f32::INFINITY.to_bits() as i32 {
            return None;
        }
        let mut bar = 0i32;
        for b in (BAR_LOW_BIT..31).rev() {
            let c = bar | (1 << b);
            // SAFETY: this function's target features.
            if unsafe { count_at_least(&maxima, c) } > m {
                bar = c;
            }
        }

        // Candidates: every entry whose magnitude reaches the bar, in index order. The 4-lane
        // stores write through raw pointers within the reserved room (n <= i, so below d + 4);
        // the lists' lengths then cover the written entries only.
        s.index.clear();
        s.index.reserve(d + 8);
        s.bits.clear();
        s.bits.reserve(d + 8);
        let (ip, bp) = (s.index.as_mut_ptr(), s.bits.as_mut_ptr());
        let mut n = 0;
        let d4 = d / 4 * 4;
        // SAFETY: loads read x[i..i + 4] with i + 4 <= d and a 16-byte table row; stores stay
        // below d + 4 (see above); this function's target features.
        unsafe {
            // 4 entries per step through a 256-byte `pshufb` table (see `topk`'s compact_i8 on
            // why not the 8-lane one).
            let below = _mm_set1_epi32(bar - 1);
            let abs = _mm_set1_epi32(ABS);
            let four = _mm_set1_epi32(4);
            let mut idx = _mm_setr_epi32(0, 1, 2, 3);
            let mut i = 0;
            while i < d4 {
                let mag = _mm_and_si128(_mm_loadu_si128(p.add(i) as *const __m128i), abs);
                let keep = _mm_movemask_ps(_mm_castsi128_ps(_mm_cmpgt_epi32(mag, below)));
                let ctl = _mm_loadu_si128(FRONT32[keep as usize].as_ptr() as *const __m128i);
                // n <= i: the 4-lane stores end by d + 4.
                _mm_storeu_si128(ip.add(n) as *mut __m128i, _mm_shuffle_epi8(idx, ctl));
                _mm_storeu_si128(bp.add(n) as *mut __m128i, _mm_shuffle_epi8(mag, ctl));
                n += (keep as u32).count_ones() as usize;
                idx = _mm_add_epi32(idx, four);
                i += 4;
            }
            for (i, &v) in x.iter().enumerate().skip(d4) {
                *ip.add(n) = i as u32;
                *bp.add(n) = magnitude(v);
                n += usize::from(magnitude(v) >= bar);
            }
        }
        // Up to a multiple of 8 for the counts: -1 reaches no magnitude.
        let padded = n.div_ceil(8) * 8;
        // SAFETY: padded <= d + 8, the reserved room; entries below n were written above, the
        // rest is written here before the lengths cover it.
        unsafe {
            for j in n..padded {
                *bp.add(j) = -1;
            }
            s.index.set_len(n);
            s.bits.set_len(padded);
        }
        let regs = &s.bits[..padded];

        // Bisection: count(>= lo) > m and count(>= hi) <= m throughout.
        let (mut lo, mut hi) = (bar, top + 1);
        let t = loop {
            if hi - lo <= 1 {
                break lo;
            }
            let mid = lo + (hi - lo) / 2;
            // SAFETY: this function's target features; regs is a multiple of 8 long, mid >= 1.
            let c = unsafe { count_at_least(regs, mid) };
            if c == m + 1 {
                // Exactly the m + 1 largest reach mid: t is the least of them.
                break regs
                    .iter()
                    .filter(|&&v| v >= mid)
                    .fold(i32::MAX, |a, &v| a.min(v));
            }
            if c > m {
                lo = mid;
            } else {
                hi = mid;
            }
        };

        // The m outliers: above t, then ties at t lowest index first (branch-free).
        // SAFETY: this function's target features (t + 1: t is finite, far below i32::MAX).
        let above = unsafe { count_at_least(regs, t + 1) };
        let mut ties = m - above;
        out.indices.clear();
        out.indices.resize(n, 0);
        out.values.clear();
        out.values.resize(n, 0.0);
        let mut len = 0;
        for (&i, &b) in s.index[..n].iter().zip(&s.bits[..n]) {
            let tie = b == t && ties > 0;
            ties -= usize::from(tie);
            out.indices[len] = i;
            out.values[len] = x[i as usize];
            len += usize::from(b > t || tie);
        }
        out.indices.truncate(len);
        out.values.truncate(len);
        Some(f32::from_bits(t as u32))
    }
}
