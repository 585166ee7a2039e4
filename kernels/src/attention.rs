//! Decode-step attention of one key/value head: the scores of its group of query heads against
//! every cached key, softmax, and the weighted sum of the cached values.
//!
//! One portable body, compiled twice: as is (the scalar reference, no FMA) and inside an
//! AVX2+FMA function where the same loops vectorize and multiply-adds fuse. The dispatch happens
//! once per head, not per dot product. Both use the polynomial [`exp`], so the two differ only by
//! rounding (FMA and summation order): tests bound the difference.

use half::f16;
use half::slice::HalfFloatSliceExt;

use crate::isa::Isa;

/// The largest head dimension served (llama-family models use 64 to 256).
pub const MAX_HEAD_DIM: usize = 512;

/// One key/value head and the query heads that share it.
#[derive(Debug, Clone, Copy)]
pub struct KvHead<'a> {
    /// `group` query vectors of `head_dim`, one after another.
    pub queries: &'a [f32],
    /// Cached keys and values of positions 0..n: position t's vector for this head starts at
    /// `t * stride + offset`. Half precision, as llama.cpp caches them by default: half the bytes
    /// a long context reads per step.
    pub keys: &'a [f16],
    pub values: &'a [f16],
    pub stride: usize,
    pub offset: usize,
    pub head_dim: usize,
    /// Score scale, 1/sqrt(head_dim).
    pub scale: f32,
}

/// Attention outputs of the head's query group into `out` (`group * head_dim`); `scores` holds
/// `group` rows of `row` floats (row >= positions) as scratch. Panics on inconsistent sizes.
pub fn attend(isa: Isa, h: KvHead<'_>, scores: &mut [f32], row: usize, out: &mut [f32]) {
    let hd = h.head_dim;
    assert!(hd > 0 && h.queries.len().is_multiple_of(hd) && out.len() == h.queries.len());
    assert!(hd <= MAX_HEAD_DIM, "attend: head_dim {hd} > {MAX_HEAD_DIM}");
    let group = h.queries.len() / hd;
    let positions = if h.stride == 0 {
        0
    } else {
        h.keys.len().div_ceil(h.stride)
    };
    assert!(h.offset + hd <= h.stride && h.keys.len() == h.values.len());
    assert!(positions == 0 || (positions - 1) * h.stride + h.offset + hd <= h.keys.len());
    assert!(row >= positions && scores.len() >= group * row);
    #[cfg(target_arch = "x86_64")]
    if matches!(isa, Isa::Avx2 | Isa::Avx512) && crate::isa::x86::v3().is_some() {
        // SAFETY: the V3 token proves AVX2, FMA and F16C; the sizes were checked above.
        unsafe { avx2(h, positions, scores, row, out) };
        return;
    }
    let _ = isa;
    body::<Plain>(h, positions, scores, row, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn avx2(h: KvHead<'_>, positions: usize, scores: &mut [f32], row: usize, out: &mut [f32]) {
    body::<Fused>(h, positions, scores, row, out)
}

/// a·b + c, fused or not, and the two vector loops of attention built on it.
trait MulAdd {
    fn mul_add(a: f32, b: f32, c: f32) -> f32;

    /// Σ a_i·b_i.
    #[inline(always)]
    fn dot(a: &[f32], b: &[f32]) -> f32 {
        dot::<Self>(a, b)
    }

    /// out += p·v.
    #[inline(always)]
    fn axpy(p: f32, v: &[f32], out: &mut [f32]) {
        for (o, &vv) in out.iter_mut().zip(v) {
            *o = Self::mul_add(p, vv, *o);
        }
    }

    /// scores[g·row + t] = q_g·k_t · scale for every query g and position t.
    #[inline(always)]
    fn scores(h: &KvHead<'_>, positions: usize, scores: &mut [f32], row: usize) {
        scores_by_dot::<Self>(h, 0..positions, scores, row)
    }

    /// out_g = Σ_t p_{g,t}·v_t (out zeroed here), summed in position order.
    #[inline(always)]
    fn weighted_sum(h: &KvHead<'_>, positions: usize, scores: &[f32], row: usize, out: &mut [f32]) {
        weighted_sum_by_axpy::<Self>(h, positions, scores, row, out)
    }

    /// s_i = e^(s_i − max s); returns Σ s_i.
    #[inline(always)]
    fn exp_shifted(s: &mut [f32], max: f32) -> f32 {
        let mut sum = 0.0;
        for v in s.iter_mut() {
            *v = exp(*v - max);
            sum += *v;
        }
        sum
    }
}

struct Plain;
impl MulAdd for Plain {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }
}

#[cfg(target_arch = "x86_64")]
struct Fused;
#[cfg(target_arch = "x86_64")]
impl MulAdd for Fused {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }

    /// The dense kernels' AVX2 dot product (LLVM did not vectorize the portable loop).
    #[inline(always)]
    fn dot(a: &[f32], b: &[f32]) -> f32 {
        // SAFETY: only called from the AVX2+FMA+F16C function `avx2`, whose caller holds the V3
        // token; `dot_f32` reads the common length of both slices.
        unsafe { crate::dense::avx2::dot_f32(a, b) }
    }

    /// Eight positions per step when head_dim is a multiple of 8: eight accumulators (one per
    /// position) over the query's 8-lane slices, then one transposing reduction for all eight,
    /// instead of a horizontal sum per dot product. With `weighted_sum` below, one SmolLM2
    /// key/value head (`examples/attention_speed.rs`) went from 5.2 to 2.8 µs at 64 positions and
    /// from 31.5 to 19.7 µs at 380. The cached halves are widened once per block of positions
    /// into an L1 scratch that every query of the group then reads ([`widen_block`]).
    #[inline(always)]
    fn scores(h: &KvHead<'_>, positions: usize, scores: &mut [f32], row: usize) {
        use std::arch::x86_64::*;
        let hd = h.head_dim;
        if !hd.is_multiple_of(8) || hd > MAX_BLOCK_DIM {
            return scores_by_dot::<Self>(h, 0..positions, scores, row);
        }
        let full = positions / 8 * 8;
        // Written by `widen_block` before it is read (no zeroing: 32 KiB per call).
        let mut block = std::mem::MaybeUninit::<[f32; BLOCK * MAX_BLOCK_DIM]>::uninit();
        let block = block.as_mut_ptr() as *mut f32;
        for t0 in (0..full).step_by(BLOCK) {
            let n = (full - t0).min(BLOCK);
            // SAFETY: only called from `avx2` (V3 token held); positions t0 .. t0 + n < positions
            // hold keys (checked in `attend`).
            unsafe { widen_block(h.keys, h, t0, n, block) };
            for (g, q) in h.queries.chunks_exact(hd).enumerate() {
                for t in (0..n).step_by(8) {
                    // SAFETY: as above; `block` holds n >= t + 8 positions of hd floats, and
                    // scores holds row >= positions floats for each query.
                    unsafe {
                        let mut acc = [_mm256_setzero_ps(); 8];
                        for c in 0..hd / 8 {
                            let qc = _mm256_loadu_ps(q.as_ptr().add(8 * c));
                            for (p, a) in acc.iter_mut().enumerate() {
                                let k = block.add((t + p) * hd + 8 * c);
                                *a = _mm256_fmadd_ps(qc, _mm256_loadu_ps(k), *a);
                            }
                        }
                        let sums = sum_lanes8(acc);
                        let out = scores.as_mut_ptr().add(g * row + t0 + t);
                        _mm256_storeu_ps(out, _mm256_mul_ps(sums, _mm256_set1_ps(h.scale)));
                    }
                }
            }
        }
        // The last positions % 8, one dot product each.
        scores_by_dot::<Self>(h, full..positions, scores, row);
    }

    /// Each query's output slice (up to 64 floats) held in eight registers across a block of
    /// positions (loaded and stored once per block, not per position); the same fused sums in
    /// the same order.
    #[inline(always)]
    fn weighted_sum(h: &KvHead<'_>, positions: usize, scores: &[f32], row: usize, out: &mut [f32]) {
        use std::arch::x86_64::*;
        let hd = h.head_dim;
        if !hd.is_multiple_of(8) || hd > MAX_BLOCK_DIM {
            return weighted_sum_by_axpy::<Self>(h, positions, scores, row, out);
        }
        out.fill(0.0);
        let mut block = std::mem::MaybeUninit::<[f32; BLOCK * MAX_BLOCK_DIM]>::uninit();
        let block = block.as_mut_ptr() as *mut f32;
        for t0 in (0..positions).step_by(BLOCK) {
            let n = (positions - t0).min(BLOCK);
            // SAFETY: only called from `avx2` (V3 token held); positions t0 .. t0 + n hold values
            // (checked in `attend`).
            unsafe { widen_block(h.values, h, t0, n, block) };
            for (g, o) in out.chunks_exact_mut(hd).enumerate() {
                for base in (0..hd).step_by(64) {
                    let lanes = (hd - base).min(64) / 8;
                    // SAFETY: as above; `block` holds n positions of hd floats, o holds hd.
                    unsafe {
                        let mut acc = [_mm256_setzero_ps(); 8];
                        for (i, a) in acc.iter_mut().enumerate().take(lanes) {
                            *a = _mm256_loadu_ps(o.as_ptr().add(base + 8 * i));
                        }
                        for t in 0..n {
                            let p = _mm256_set1_ps(*scores.get_unchecked(g * row + t0 + t));
                            let v = block.add(t * hd + base);
                            for (i, a) in acc.iter_mut().enumerate().take(lanes) {
                                *a = _mm256_fmadd_ps(p, _mm256_loadu_ps(v.add(8 * i)), *a);
                            }
                        }
                        for (i, a) in acc.iter().enumerate().take(lanes) {
                            _mm256_storeu_ps(o.as_mut_ptr().add(base + 8 * i), *a);
                        }
                    }
                }
            }
        }
    }

    #[inline(always)]
    fn axpy(p: f32, v: &[f32], out: &mut [f32]) {
        use std::arch::x86_64::*;
        let n = v.len().min(out.len());
        let main = n / 8 * 8;
        // SAFETY: only called from `avx2` (its caller holds the V3 token); loads and stores stay
        // below `main` <= n.
        unsafe {
            let pv = _mm256_set1_ps(p);
            let mut i = 0;
            while i < main {
                let o = out.as_mut_ptr().add(i);
                _mm256_storeu_ps(
                    o,
                    _mm256_fmadd_ps(pv, _mm256_loadu_ps(v.as_ptr().add(i)), _mm256_loadu_ps(o)),
                );
                i += 8;
            }
        }
        for (o, &vv) in out[main..n].iter_mut().zip(&v[main..n]) {
            *o = p.mul_add(vv, *o);
        }
    }

    /// [`exp`] eight lanes at a time, the same steps in the same order (so the same values up
    /// to the fused multiply-adds).
    #[inline(always)]
    fn exp_shifted(s: &mut [f32], max: f32) -> f32 {
        use std::arch::x86_64::*;
        let n = s.len();
        let main = n / 8 * 8;
        let mut sum;
        // SAFETY: only called from `avx2` (its caller holds the V3 token); loads and stores stay
        // below `main` <= n.
        unsafe {
            let c = |v: f32| _mm256_set1_ps(v);
            let mut acc = _mm256_setzero_ps();
            let mut i = 0;
            while i < main {
                let p = s.as_mut_ptr().add(i);
                let x = _mm256_sub_ps(_mm256_loadu_ps(p), c(max));
                let x = _mm256_min_ps(_mm256_max_ps(x, c(-87.3)), c(88.7));
                let n = _mm256_sub_ps(
                    _mm256_fmadd_ps(x, c(std::f32::consts::LOG2_E), c(12_582_912.0)),
                    c(12_582_912.0),
                );
                let r = _mm256_fnmadd_ps(
                    n,
                    c(1.428_606_8e-6),
                    _mm256_fnmadd_ps(n, c(0.693_145_75), x),
                );
                let mut q = c(1.0 / 5040.0);
                for k in [
                    1.0 / 720.0,
                    1.0 / 120.0,
                    1.0 / 24.0,
                    1.0 / 6.0,
                    0.5,
                    1.0,
                    1.0,
                ] {
                    q = _mm256_fmadd_ps(q, r, c(k));
                }
                // 2^n with n clamped to 127; the top lane (n = 128) gets a second factor of 2.
                let top = _mm256_cmp_ps::<_CMP_GT_OQ>(n, c(127.0));
                let ni = _mm256_cvtps_epi32(_mm256_min_ps(n, c(127.0)));
                let pow = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
                    ni,
                    _mm256_set1_epi32(127),
                )));
                let e = _mm256_mul_ps(_mm256_mul_ps(q, pow), _mm256_blendv_ps(c(1.0), c(2.0), top));
                _mm256_storeu_ps(p, e);
                acc = _mm256_add_ps(acc, e);
                i += 8;
            }
            let mut lanes = [0f32; 8];
            _mm256_storeu_ps(lanes.as_mut_ptr(), acc);
            sum = lanes.iter().sum::<f32>();
        }
        for v in s[main..].iter_mut() {
            *v = exp(*v - max);
            sum += *v;
        }
        sum
    }
}

/// scores[g·row + t] = q_g·k_t · scale for positions t in `positions`, one dot product each.
#[inline(always)]
fn scores_by_dot<M: MulAdd + ?Sized>(
    h: &KvHead<'_>,
    positions: std::ops::Range<usize>,
    scores: &mut [f32],
    row: usize,
) {
    let hd = h.head_dim;
    let mut wide = [0f32; MAX_HEAD_DIM];
    let k = &mut wide[..hd];
    for t in positions {
        // Widened once for the whole group (the `half` crate converts slices with F16C or the
        // aarch64 conversions where the CPU has them).
        h.keys[t * h.stride + h.offset..][..hd].convert_to_f32_slice(k);
        for (g, q) in h.queries.chunks_exact(hd).enumerate() {
            scores[g * row + t] = M::dot(q, k) * h.scale;
        }
    }
}

/// out_g = Σ_t p_{g,t}·v_t (out zeroed here) in position order, one `axpy` per position.
#[inline(always)]
fn weighted_sum_by_axpy<M: MulAdd + ?Sized>(
    h: &KvHead<'_>,
    positions: usize,
    scores: &[f32],
    row: usize,
    out: &mut [f32],
) {
    let hd = h.head_dim;
    out.fill(0.0);
    let mut wide = [0f32; MAX_HEAD_DIM];
    let v = &mut wide[..hd];
    for t in 0..positions {
        h.values[t * h.stride + h.offset..][..hd].convert_to_f32_slice(v);
        for (g, o) in out.chunks_exact_mut(hd).enumerate() {
            M::axpy(scores[g * row + t], v, o);
        }
    }
}

/// Positions per block of widened keys or values (with head_dim up to [`MAX_BLOCK_DIM`]: 32 KiB
/// of f32, the L1 data cache here).
#[cfg(target_arch = "x86_64")]
const BLOCK: usize = 32;
#[cfg(target_arch = "x86_64")]
const MAX_BLOCK_DIM: usize = 256;

/// Widens this head's cached halves of positions t0 .. t0 + n into `block` (n · head_dim f32,
/// position by position). Every query of the group then reads f32: converting once per block
/// instead of once per query kept the kernel at its f32 speed (a query-by-query F16C load made
/// one SmolLM2 head at 2000 positions 1.4x slower, `examples/attention_speed.rs`).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn widen_block(cache: &[f16], h: &KvHead<'_>, t0: usize, n: usize, block: *mut f32) {
    use std::arch::x86_64::*;
    let hd = h.head_dim;
    for t in 0..n {
        let src = cache.as_ptr().add((t0 + t) * h.stride + h.offset);
        let dst = block.add(t * hd);
        for c in (0..hd).step_by(8) {
            // SAFETY: the caller guarantees positions t0 .. t0 + n hold head_dim halves at the
            // offset, and block has room for n · head_dim floats; head_dim is a multiple of 8.
            unsafe { _mm256_storeu_ps(dst.add(c), load_f16(src.add(c))) };
        }
    }
}

/// Eight halves from `p` as f32 (exact).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn load_f16(p: *const f16) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    // SAFETY: the caller holds F16C and guarantees 8 readable halves at p.
    unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)) }
}

/// dst = src rounded to the nearest half (ties to even; beyond ±65504: ±inf), as
/// `half::f16::from_f32` does: how keys and values enter the cache.
pub fn store_f16(isa: Isa, src: &[f32], dst: &mut [f16]) {
    assert_eq!(src.len(), dst.len(), "store_f16: lengths differ");
    #[cfg(target_arch = "x86_64")]
    if matches!(isa, Isa::Avx2 | Isa::Avx512) && crate::isa::x86::v3().is_some() {
        // SAFETY: the V3 token proves AVX2 and F16C; the lengths are equal.
        unsafe { store_f16_avx2(src, dst) };
        return;
    }
    let _ = isa;
    for (d, &v) in dst.iter_mut().zip(src) {
        *d = f16::from_f32(v);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn store_f16_avx2(src: &[f32], dst: &mut [f16]) {
    use std::arch::x86_64::*;
    let main = src.len() / 8 * 8;
    for i in (0..main).step_by(8) {
        // SAFETY: i + 8 <= main <= both lengths.
        unsafe {
            let h =
                _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(src.as_ptr().add(i)));
            _mm_storeu_si128(dst.as_mut_ptr().add(i) as *mut __m128i, h);
        }
    }
    for (d, &v) in dst[main..].iter_mut().zip(&src[main..]) {
        *d = f16::from_f32(v);
    }
}

/// The eight horizontal sums of eight vectors, in order, as one vector.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn sum_lanes8(a: [std::arch::x86_64::__m256; 8]) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    // SAFETY: called only from AVX2 code (the caller holds the V3 token).
    unsafe {
        let h01 = _mm256_hadd_ps(a[0], a[1]);
        let h23 = _mm256_hadd_ps(a[2], a[3]);
        let h45 = _mm256_hadd_ps(a[4], a[5]);
        let h67 = _mm256_hadd_ps(a[6], a[7]);
        // Per 128-bit half: [a0, a1, a2, a3] and [a4, a5, a6, a7] partial sums.
        let h0123 = _mm256_hadd_ps(h01, h23);
        let h4567 = _mm256_hadd_ps(h45, h67);
        _mm256_add_ps(
            _mm256_permute2f128_ps::<0x20>(h0123, h4567),
            _mm256_permute2f128_ps::<0x31>(h0123, h4567),
        )
    }
}

#[inline(always)]
fn body<M: MulAdd>(
    h: KvHead<'_>,
    positions: usize,
    scores: &mut [f32],
    row: usize,
    out: &mut [f32],
) {
    let hd = h.head_dim;
    M::scores(&h, positions, scores, row);
    for g in 0..h.queries.len() / hd {
        let s = &mut scores[g * row..g * row + positions];
        let max = s.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let sum = M::exp_shifted(s, max);
        let inv = 1.0 / sum;
        for v in s.iter_mut() {
            *v *= inv;
        }
    }
    M::weighted_sum(&h, positions, scores, row, out);
}

/// Dot product with four 8-wide partial sums (independent chains the compiler keeps in SIMD
/// registers).
#[inline(always)]
fn dot<M: MulAdd + ?Sized>(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [[0f32; 8]; 4];
    let (ca, cb) = (a.chunks_exact(32), b.chunks_exact(32));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for (c, acc) in acc.iter_mut().enumerate() {
            for i in 0..8 {
                acc[i] = M::mul_add(x[8 * c + i], y[8 * c + i], acc[i]);
            }
        }
    }
    let mut sum = [0f32; 8];
    for acc in &acc {
        for i in 0..8 {
            sum[i] += acc[i];
        }
    }
    sum.iter().sum::<f32>() + tail
}

/// e^x within 2 ulp for x in [−87.3, 88.7], the input clamped to that range outside it (so
/// e^−∞ ≈ 1e−38 and e^+∞ ≈ 3e38, harmless in softmax and SiLU): x = n·ln2 + r with |r| <= ln2/2
/// (ln2 split in two for exactness), e^r by its degree-7 Taylor polynomial, 2^n put into the
/// exponent bits. Branch-free and free of libm calls, so loops over it vectorize.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding and subtracting 1.5·2^23 rounds to the nearest integer with plain float adds.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.3, 88.7);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r / 5040.0))))));
    // 2^n for n in [-126, 128]; 128 (x near the top) is taken as 2 · 2^127.
    let top = n > 127.0;
    let n = if top { 127 } else { n as i32 };
    p * if top { 2.0 } else { 1.0 } * f32::from_bits(((n + 127) as u32) << 23)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulp() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.5 {
            let want = (x as f64).exp();
            let ulp = (want as f32).abs() * f32::EPSILON;
            worst = worst.max((exp(x) as f64 - want).abs() / ulp as f64);
            x += 0.000_731;
        }
        assert!(worst <= 2.0, "worst error {worst} ulp");
        assert_eq!(exp(0.0), 1.0);
        // Clamped outside the range: tiny and huge, never NaN or negative.
        assert!(exp(-200.0) > 0.0 && exp(-200.0) < 1e-37);
        assert!(exp(1e9) > 3e38 && exp(1e9).is_finite());
        assert!(exp(f32::NEG_INFINITY) > 0.0);
    }
}
