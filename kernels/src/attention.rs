//! Decode-step attention of one key/value head: the scores of its group of query heads against
//! every cached key, softmax, and the weighted sum of the cached values.
//!
//! One portable body, compiled twice: as is (the scalar reference, no FMA) and inside an
//! AVX2+FMA function where the same loops vectorize and multiply-adds fuse. The dispatch happens
//! once per head, not per dot product. Both use the polynomial [`crate::expf::exp`], so the two differ only by
//! rounding (FMA and summation order): tests bound the difference.

use half::f16;
use half::slice::HalfFloatSliceExt;

use crate::expf::exp;
use crate::isa::Isa;

/// The largest head dimension served (llama-family models use 64 to 256).
pub const MAX_HEAD_DIM: usize = 512;

/// What a key/value cache holds: halves (the cache itself), or f32 (a batch's widened copy of
/// it: the same values exactly, without a conversion per key the kernel's queries wait on:
/// `examples/attention_speed.rs`).
pub trait CacheValue: Copy + private::Sealed {
    /// `dst` = `src` as f32 (exact).
    fn widen(src: &[Self], dst: &mut [f32]);

    /// Eight values from `p` as f32 (exact).
    ///
    /// # Safety
    /// AVX2 and F16C present; eight values readable at `p`.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256;
}

mod private {
    pub trait Sealed {}
    impl Sealed for half::f16 {}
    impl Sealed for f32 {}
}

impl CacheValue for f16 {
    fn widen(src: &[f16], dst: &mut [f32]) {
        // The `half` crate converts slices with F16C or the aarch64 conversions where the CPU
        // has them.
        src.convert_to_f32_slice(dst)
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const f16) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        // SAFETY: the caller holds F16C and guarantees 8 readable halves at p.
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)) }
    }
}

impl CacheValue for f32 {
    fn widen(src: &[f32], dst: &mut [f32]) {
        dst.copy_from_slice(src)
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const f32) -> std::arch::x86_64::__m256 {
        // SAFETY: the caller holds AVX2 and guarantees 8 readable floats at p.
        unsafe { std::arch::x86_64::_mm256_loadu_ps(p) }
    }
}

/// One key/value head and the query heads that share it.
#[derive(Debug, Clone, Copy)]
pub struct KvHead<'a, E: CacheValue = f16> {
    /// `group` query vectors of `head_dim`, one after another.
    pub queries: &'a [f32],
    /// Cached keys and values of positions 0..n: position t's vector for this head starts at
    /// `t * stride + offset`. Half precision, as llama.cpp caches them by default: half the bytes
    /// a long context reads per step.
    pub keys: &'a [E],
    /// The cached values of those positions, laid out as the keys.
    pub values: &'a [E],
    /// Entries between one position's key and the next's.
    pub stride: usize,
    /// Where the first position's key starts.
    pub offset: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Score scale, 1/sqrt(head_dim).
    pub scale: f32,
}

/// Attention outputs of the head's query group into `out` (`group * head_dim`); `scores` holds
/// `group` rows of `row` floats (row >= positions) as scratch. Panics on inconsistent sizes.
pub fn attend<E: CacheValue>(
    isa: Isa,
    h: KvHead<'_, E>,
    scores: &mut [f32],
    row: usize,
    out: &mut [f32],
) {
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
    body::<Plain, E>(h, positions, scores, row, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn avx2<E: CacheValue>(
    h: KvHead<'_, E>,
    positions: usize,
    scores: &mut [f32],
    row: usize,
    out: &mut [f32],
) {
    body::<Fused, E>(h, positions, scores, row, out)
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
    fn scores<E: CacheValue>(h: &KvHead<'_, E>, positions: usize, scores: &mut [f32], row: usize) {
        scores_by_dot::<Self, E>(h, 0..positions, scores, row)
    }

    /// out_g = Σ_t p_{g,t}·v_t (out zeroed here), summed in position order.
    #[inline(always)]
    fn weighted_sum<E: CacheValue>(
        h: &KvHead<'_, E>,
        positions: usize,
        scores: &[f32],
        row: usize,
        out: &mut [f32],
    ) {
        weighted_sum_by_axpy::<Self, E>(h, positions, scores, row, out)
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

    /// Up to three query heads and four positions at a time (head_dim a multiple of 8): each
    /// cached key's eight-half chunk is widened once (F16C, straight from the cache) and meets the
    /// three queries' chunks, into 3 x 4 accumulators (with the three query chunks and the key,
    /// the sixteen vector registers); one horizontal reduction per four scores.
    #[inline(always)]
    fn scores<E: CacheValue>(h: &KvHead<'_, E>, positions: usize, scores: &mut [f32], row: usize) {
        if !h.head_dim.is_multiple_of(8) {
            return scores_by_dot::<Self, E>(h, 0..positions, scores, row);
        }
        let full = positions / 4 * 4;
        let group = h.queries.len() / h.head_dim;
        for g0 in (0..group).step_by(SUB_GROUP) {
            // SAFETY: only called from `avx2` (V3 token held); `attend` checked that positions
            // 0..positions hold keys and that scores holds `row` >= positions floats per query.
            unsafe {
                match group - g0 {
                    1 => scores_avx2::<1, E>(h, g0, full, scores, row),
                    2 => scores_avx2::<2, E>(h, g0, full, scores, row),
                    _ => scores_avx2::<SUB_GROUP, E>(h, g0, full, scores, row),
                }
            }
        }
        // The last positions % 4, one dot product each.
        scores_by_dot::<Self, E>(h, full..positions, scores, row);
    }

    /// Up to three query heads and 32 output dimensions at a time (head_dim a multiple of 8):
    /// their 3 x 4 output chunks stay in registers over all positions, each cached value chunk
    /// widened once for the three; the same fused sums in the same (position) order.
    #[inline(always)]
    fn weighted_sum<E: CacheValue>(
        h: &KvHead<'_, E>,
        positions: usize,
        scores: &[f32],
        row: usize,
        out: &mut [f32],
    ) {
        if !h.head_dim.is_multiple_of(8) {
            return weighted_sum_by_axpy::<Self, E>(h, positions, scores, row, out);
        }
        let group = h.queries.len() / h.head_dim;
        for g0 in (0..group).step_by(SUB_GROUP) {
            // SAFETY: as in `scores`; out holds group · head_dim floats.
            unsafe {
                match group - g0 {
                    1 => weighted_sum_avx2::<1, E>(h, g0, positions, scores, row, out),
                    2 => weighted_sum_avx2::<2, E>(h, g0, positions, scores, row, out),
                    _ => weighted_sum_avx2::<SUB_GROUP, E>(h, g0, positions, scores, row, out),
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
                let e = crate::expf::avx2::exp8(_mm256_sub_ps(_mm256_loadu_ps(p), c(max)));
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
fn scores_by_dot<M: MulAdd + ?Sized, E: CacheValue>(
    h: &KvHead<'_, E>,
    positions: std::ops::Range<usize>,
    scores: &mut [f32],
    row: usize,
) {
    let hd = h.head_dim;
    let mut wide = [0f32; MAX_HEAD_DIM];
    let k = &mut wide[..hd];
    for t in positions {
        // Widened once for the whole group.
        E::widen(&h.keys[t * h.stride + h.offset..][..hd], k);
        for (g, q) in h.queries.chunks_exact(hd).enumerate() {
            scores[g * row + t] = M::dot(q, k) * h.scale;
        }
    }
}

/// out_g = Σ_t p_{g,t}·v_t (out zeroed here) in position order, one `axpy` per position.
#[inline(always)]
fn weighted_sum_by_axpy<M: MulAdd + ?Sized, E: CacheValue>(
    h: &KvHead<'_, E>,
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
        E::widen(&h.values[t * h.stride + h.offset..][..hd], v);
        for (g, o) in out.chunks_exact_mut(hd).enumerate() {
            M::axpy(scores[g * row + t], v, o);
        }
    }
}

/// Query heads one pass of the AVX2 kernels serves (see `Fused::scores`).
#[cfg(target_arch = "x86_64")]
const SUB_GROUP: usize = 3;

/// scores[(g0 + g)·row + t] = q·k_t · scale for G query heads from g0 and positions 0..full
/// (a multiple of 4). Each cached chunk is widened once for all G heads, in registers: an f32
/// scratch that every query re-read was a third slower (`examples/attention_speed.rs`).
///
/// Safety: AVX2, FMA and F16C present; positions 0..full hold keys at `offset`; G query heads
/// from g0 exist; scores holds `row` >= full floats for each of them; head_dim % 8 == 0.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn scores_avx2<const G: usize, E: CacheValue>(
    h: &KvHead<'_, E>,
    g0: usize,
    full: usize,
    scores: &mut [f32],
    row: usize,
) {
    use std::arch::x86_64::*;
    let hd = h.head_dim;
    // SAFETY: every address below is inside the slices, by the function's contract.
    unsafe {
        let kp = h.keys.as_ptr().add(h.offset);
        let qp = h.queries.as_ptr().add(g0 * hd);
        let scale = _mm_set1_ps(h.scale);
        for t in (0..full).step_by(4) {
            let mut acc = [[_mm256_setzero_ps(); 4]; G];
            for c in (0..hd).step_by(8) {
                let q: [__m256; G] = std::array::from_fn(|g| _mm256_loadu_ps(qp.add(g * hd + c)));
                for p in 0..4 {
                    let k = E::load8(kp.add((t + p) * h.stride + c));
                    for (a, q) in acc.iter_mut().zip(&q) {
                        a[p] = _mm256_fmadd_ps(*q, k, a[p]);
                    }
                }
            }
            for (g, a) in acc.iter().enumerate() {
                let s = _mm_mul_ps(sum_lanes4(*a), scale);
                _mm_storeu_ps(scores.as_mut_ptr().add((g0 + g) * row + t), s);
            }
        }
    }
}

/// out[(g0 + g)·hd ..] = Σ_t p_{g,t}·v_t for G query heads from g0, in position order.
///
/// Safety: as [`scores_avx2`], with values for positions 0..positions, scores read, and out
/// holding G heads of head_dim floats from g0.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn weighted_sum_avx2<const G: usize, E: CacheValue>(
    h: &KvHead<'_, E>,
    g0: usize,
    positions: usize,
    scores: &[f32],
    row: usize,
    out: &mut [f32],
) {
    let hd = h.head_dim;
    let mut c = 0;
    // SAFETY: by the function's contract.
    unsafe {
        while c + 32 <= hd {
            weighted_chunks_avx2::<G, 4, E>(h, g0, c, positions, scores, row, out);
            c += 32;
        }
        while c < hd {
            weighted_chunks_avx2::<G, 1, E>(h, g0, c, positions, scores, row, out);
            c += 8;
        }
    }
}

/// Output dimensions c .. c + 8·C of G query heads (see [`weighted_sum_avx2`]).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn weighted_chunks_avx2<const G: usize, const C: usize, E: CacheValue>(
    h: &KvHead<'_, E>,
    g0: usize,
    c: usize,
    positions: usize,
    scores: &[f32],
    row: usize,
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    let hd = h.head_dim;
    // SAFETY: by the caller's contract (c + 8·C <= head_dim).
    unsafe {
        let vp = h.values.as_ptr().add(h.offset + c);
        let sp = scores.as_ptr().add(g0 * row);
        let mut acc = [[_mm256_setzero_ps(); C]; G];
        for t in 0..positions {
            let p: [__m256; G] = std::array::from_fn(|g| _mm256_set1_ps(*sp.add(g * row + t)));
            for j in 0..C {
                let v = E::load8(vp.add(t * h.stride + 8 * j));
                for (a, p) in acc.iter_mut().zip(&p) {
                    a[j] = _mm256_fmadd_ps(*p, v, a[j]);
                }
            }
        }
        for (g, a) in acc.iter().enumerate() {
            for (j, v) in a.iter().enumerate() {
                _mm256_storeu_ps(out.as_mut_ptr().add((g0 + g) * hd + c + 8 * j), *v);
            }
        }
    }
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

/// The four horizontal sums of four vectors, in order, as one vector.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn sum_lanes4(a: [std::arch::x86_64::__m256; 4]) -> std::arch::x86_64::__m128 {
    use std::arch::x86_64::*;
    // SAFETY: called only from AVX2 code (the caller holds the V3 token).
    unsafe {
        let h01 = _mm256_hadd_ps(a[0], a[1]);
        let h23 = _mm256_hadd_ps(a[2], a[3]);
        // Per 128-bit half: [a0, a1, a2, a3] partial sums.
        let h = _mm256_hadd_ps(h01, h23);
        _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps::<1>(h))
    }
}

#[inline(always)]
fn body<M: MulAdd, E: CacheValue>(
    h: KvHead<'_, E>,
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
