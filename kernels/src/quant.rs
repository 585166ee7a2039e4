//! int8 absmax activation quantization (Q-Sparse with quantization, BitNet b1.58):
//! γ = max|x|, x_q = round(clamp(127·x/γ, −127, 127)), and x ≈ x_q · γ/127.
//!
//! Every ISA computes `x * (127/γ)` and rounds half to even, so SIMD and scalar agree bit for bit.
//! A non-finite input is an error the executor reports, never silent garbage.

use crate::isa::Isa;

/// The input held a NaN or an infinity (the first one found is named).
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
#[error("activation {index} is {value}, not a finite number")]
pub struct NonFinite {
    /// The position of the first non-finite entry.
    pub index: usize,
    /// Its value.
    pub value: f32,
}

/// Quantize `x` into `out` (same length) and return γ = max|x| (0 for an all-zero input, whose
/// output is all zeros). The dequantization factor is γ/127.
pub fn quantize_absmax(isa: Isa, x: &[f32], out: &mut [i8]) -> Result<f32, NonFinite> {
    assert_eq!(
        x.len(),
        out.len(),
        "quantize_absmax: input and output lengths differ"
    );
    let gamma = match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => match crate::isa::x86::v4() {
            // SAFETY: the V4 token proves AVX-512 F/BW/VL are present.
            Some(_) => unsafe { avx512::absmax(x) },
            None => absmax_scalar(x),
        },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => match crate::isa::x86::v3() {
            // SAFETY: the V3 token proves AVX2 and FMA are present.
            Some(_) => unsafe { avx2::absmax(x) },
            None => absmax_scalar(x),
        },
        _ => absmax_scalar(x),
    };
    if !gamma.is_finite() {
        return Err(first_non_finite(x));
    }
    quantize_with(isa, x, gamma, out);
    Ok(gamma)
}

/// Quantize `x` into `out` (same length) with a given γ (finite, >= 0): x_q = round(clamp(127·x/γ)).
/// Entries above γ saturate at ±127; γ = 0 gives all zeros, and so does a γ below the smallest
/// normal f32 (127/γ would overflow to infinity). The executor passes the largest
/// magnitude left after taking the activation outliers out, so it needs no masked copy of x.
pub fn quantize_with(isa: Isa, x: &[f32], gamma: f32, out: &mut [i8]) {
    assert_eq!(
        x.len(),
        out.len(),
        "quantize_with: input and output lengths differ"
    );
    assert!(
        gamma.is_finite() && gamma >= 0.0,
        "quantize_with: γ = {gamma} is not a finite non-negative number"
    );
    if gamma < f32::MIN_POSITIVE {
        out.fill(0);
        return;
    }
    let inv = 127.0 / gamma;
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 if crate::isa::x86::v4().is_some() => {
            // SAFETY: the V4 token proves AVX-512 F/BW/VL are present; lengths are equal.
            unsafe { avx512::scale_round(x, inv, out) }
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 if crate::isa::x86::v3().is_some() => {
            // SAFETY: the V3 token proves AVX2 is present; lengths are equal.
            unsafe { avx2::scale_round(x, inv, out) }
        }
        _ => scale_round_scalar(x, inv, out),
    }
}

/// max|x|, or a non-finite value if any input is NaN or infinite.
fn absmax_scalar(x: &[f32]) -> f32 {
    let mut m = 0.0f32;
    for &v in x {
        if !v.is_finite() {
            return f32::NAN;
        }
        m = m.max(v.abs());
    }
    m
}

/// Whether every value is finite, in lanes of 8 so the pass vectorizes.
pub(crate) fn all_finite(x: &[f32]) -> bool {
    let chunks = x.chunks_exact(8);
    let tail = chunks.remainder().iter().all(|v| v.is_finite());
    tail && chunks.fold(true, |ok, c| {
        ok & c.iter().fold(true, |o, &v| o & (v.abs() < f32::INFINITY))
    })
}

/// An error naming the first NaN or infinity of `x`, if it has one: one vectorized pass, the
/// position looked for only when something is wrong.
pub fn check_finite(x: &[f32]) -> Result<(), NonFinite> {
    if all_finite(x) {
        Ok(())
    } else {
        Err(first_non_finite(x))
    }
}

/// Values to int8 by their absmax: writes q = round(v·127/m) (within ±127) and returns the scale
/// m/127, for a weight row (the column layout's per-row scale) or a block of 32 (`dense_q8`). A
/// maximum below the smallest normal f32 gives 0 and zeros (127/m would overflow).
pub(crate) fn quantize_block_absmax(values: &[f32], q: &mut [i8]) -> f32 {
    let m = absmax(values);
    if m < f32::MIN_POSITIVE {
        q.fill(0);
        return 0.0;
    }
    let inv = 127.0 / m;
    for (o, &v) in q.iter_mut().zip(values) {
        *o = round_to_code(v * inv);
    }
    m / 127.0
}

/// max |x| (0 for none), NaN ignored as `f32::max` does; eight independent lanes, so that it
/// vectorizes. (A chained `max` fold and a saturating cast in the rounding kept the quantization
/// scalar: 8 cycles a weight, 425 ms of the cores' time in SmolLM2's int8 load, then 103-113.)
fn absmax(x: &[f32]) -> f32 {
    let wider = |m: f32, v: f32| if v.abs() > m { v.abs() } else { m };
    let chunks = x.chunks_exact(8);
    let tail = chunks.remainder().iter().fold(0.0f32, |m, &v| wider(m, v));
    let mut lanes = [0.0f32; 8];
    for c in chunks {
        for (m, &v) in lanes.iter_mut().zip(c) {
            *m = wider(*m, v);
        }
    }
    lanes.iter().fold(tail, |m, &v| wider(m, v))
}

/// The int8 code of y = v·127/m: `f32::round` (half away from zero) clamped to ±127 (|y|
/// exceeds 127 by rounding at most); NaN gives 0, as `round` then the cast do. Without
/// `round`'s libm call (not inlined on baseline x86-64: ~8% of SmolLM2's int8 load went to
/// `roundf`): y − trunc(y) is exact here. Clamped before rounding (the same codes: rounding is
/// monotonic and 127 is whole), so that the truncation needs no saturation and the loop
/// vectorizes (the saturating `as` kept it scalar).
#[inline(always)]
fn round_to_code(y: f32) -> i8 {
    let y = if y.is_nan() {
        0.0
    } else {
        y.clamp(-127.0, 127.0)
    };
    // SAFETY: y is finite and within ±127, where truncation toward zero is exact in i32.
    let i = unsafe { y.to_int_unchecked::<i32>() };
    let frac = y - i as f32;
    (i + i32::from(frac >= 0.5) - i32::from(frac <= -0.5)) as i8
}

fn first_non_finite(x: &[f32]) -> NonFinite {
    let index = x.iter().position(|v| !v.is_finite()).unwrap_or(0);
    NonFinite {
        index,
        value: x.get(index).copied().unwrap_or(f32::NAN),
    }
}

#[inline(always)]
fn quantize_one(v: f32, inv: f32) -> i8 {
    (v * inv).round_ties_even().clamp(-127.0, 127.0) as i8
}

fn scale_round_scalar(x: &[f32], inv: f32, out: &mut [i8]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = quantize_one(v, inv);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// max|x| over 16 lanes; returns NaN when any element is non-finite.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub unsafe fn absmax(x: &[f32]) -> f32 {
        let abs_mask = _mm512_set1_epi32(0x7fff_ffff);
        let exp_mask = _mm512_set1_epi32(0x7f80_0000);
        let mut m = _mm512_setzero_ps();
        let mut bad: u16 = 0;
        let n = x.len();
        let mut i = 0;
        while i < n {
            let rem = n - i;
            let k: __mmask16 = if rem >= 16 { 0xffff } else { (1u16 << rem) - 1 };
            // SAFETY: the mask covers only elements i..n of x.
            let v = _mm512_castps_si512(unsafe { _mm512_maskz_loadu_ps(k, x.as_ptr().add(i)) });
            let a = _mm512_and_si512(v, abs_mask);
            bad |= _mm512_cmpeq_epi32_mask(_mm512_and_si512(a, exp_mask), exp_mask);
            m = _mm512_max_ps(m, _mm512_castsi512_ps(a));
            i += 16;
        }
        if bad != 0 {
            return f32::NAN;
        }
        _mm512_reduce_max_ps(m)
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub unsafe fn scale_round(x: &[f32], inv: f32, out: &mut [i8]) {
        let s = _mm512_set1_ps(inv);
        // Clamped in f32 before the conversion: a product beyond i32 would convert to i32::MIN.
        let lo = _mm512_set1_ps(-127.0);
        let hi = _mm512_set1_ps(127.0);
        let n = x.len();
        let mut i = 0;
        while i < n {
            let rem = n - i;
            let k: __mmask16 = if rem >= 16 { 0xffff } else { (1u16 << rem) - 1 };
            // SAFETY: masked load and store touch only elements i..n of x and out.
            unsafe {
                let v = _mm512_maskz_loadu_ps(k, x.as_ptr().add(i));
                // Default MXCSR rounding: to nearest, ties to even, as `round_ties_even`.
                let q = _mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(v, s), lo), hi);
                let q = _mm512_cvtps_epi32(q);
                _mm512_mask_cvtepi32_storeu_epi8(out.as_mut_ptr().add(i) as *mut _, k, q);
            }
            i += 16;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn absmax(x: &[f32]) -> f32 {
        let abs_mask = _mm256_set1_epi32(0x7fff_ffff);
        let exp_mask = _mm256_set1_epi32(0x7f80_0000);
        let mut m = _mm256_setzero_ps();
        let mut bad = _mm256_setzero_si256();
        let chunks = x.chunks_exact(8);
        let tail = chunks.remainder();
        for c in chunks {
            // SAFETY: c holds exactly 8 floats.
            let v = _mm256_castps_si256(unsafe { _mm256_loadu_ps(c.as_ptr()) });
            let a = _mm256_and_si256(v, abs_mask);
            bad = _mm256_or_si256(
                bad,
                _mm256_cmpeq_epi32(_mm256_and_si256(a, exp_mask), exp_mask),
            );
            m = _mm256_max_ps(m, _mm256_castsi256_ps(a));
        }
        if _mm256_testz_si256(bad, bad) == 0 {
            return f32::NAN;
        }
        let mut lanes = [0f32; 8];
        // SAFETY: lanes has room for 8 floats.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), m) };
        let mut r = lanes.iter().fold(0.0f32, |a, &b| a.max(b));
        for &v in tail {
            if !v.is_finite() {
                return f32::NAN;
            }
            r = r.max(v.abs());
        }
        r
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn scale_round(x: &[f32], inv: f32, out: &mut [i8]) {
        let s = _mm256_set1_ps(inv);
        // Clamped in f32 before the conversion: a product beyond i32 would convert to i32::MIN.
        let lo = _mm256_set1_ps(-127.0);
        let hi = _mm256_set1_ps(127.0);
        // packs interleave 128-bit lanes; this restores element order.
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        let n32 = x.len() / 32 * 32;
        let mut i = 0;
        while i < n32 {
            // SAFETY: i + 32 <= len for both slices.
            unsafe {
                let p = x.as_ptr().add(i);
                let q = |o: usize| {
                    let v = _mm256_mul_ps(_mm256_loadu_ps(p.add(o)), s);
                    _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(v, lo), hi))
                };
                let ab = _mm256_packs_epi32(q(0), q(8));
                let cd = _mm256_packs_epi32(q(16), q(24));
                let bytes = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(ab, cd), order);
                _mm256_storeu_si256(out.as_mut_ptr().add(i) as *mut __m256i, bytes);
            }
            i += 32;
        }
        super::scale_round_scalar(&x[n32..], inv, &mut out[n32..]);
    }
}

#[cfg(test)]
mod round_tests {
    use super::round_to_code;

    #[test]
    fn codes_are_f32_round_clamped() {
        let want = |v: f32| v.round().clamp(-127.0, 127.0) as i8;
        let mut y = -200.0f32;
        while y <= 200.0 {
            for v in [y, y + 0.5, y - 0.5, y.next_up(), y.next_down()] {
                assert_eq!(round_to_code(v), want(v), "{v}");
            }
            y += 0.0371;
        }
        for v in [
            0.5f32,
            -0.5,
            1.5,
            -1.5,
            2.5,
            126.5,
            -126.5,
            127.49999,
            -127.5,
            0.49999997,
            -0.49999997,
            0.0,
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
        ] {
            assert_eq!(round_to_code(v), want(v), "{v}");
        }
        assert_eq!(round_to_code(f32::NAN), f32::NAN.round() as i8);
    }

    /// The vectorized absmax quantization gives the codes of its definition, round(v·127/m)
    /// clamped to ±127 (NaN to 0), and the scale m/127: ties at .5 (m = 127 makes v·127/m = v),
    /// values just below a half, NaN entries (ignored by the maximum), all-zero and tiny rows,
    /// lengths around the eight lanes.
    #[test]
    fn absmax_quantization_matches_its_definition() {
        use super::quantize_block_absmax;
        let mut seed = 99u64;
        let mut rnd = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
            ((seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        };
        let special = [
            2.5f32,
            -2.5,
            126.5,
            -126.5,
            0.5,
            -0.5,
            0.49999997,
            -1.5,
            f32::NAN,
        ];
        for n in [0usize, 1, 7, 8, 9, 31, 32, 33, 64, 100] {
            for case in 0..6 {
                let mut v: Vec<f32> = (0..n).map(|_| rnd() * 10.0).collect();
                match case {
                    1 if n > 0 => {
                        v[0] = 127.0;
                        for (x, &s) in v.iter_mut().skip(1).zip(special.iter().cycle()) {
                            *x = s;
                        }
                    }
                    2 => v.iter_mut().for_each(|x| *x = 0.0),
                    3 => v.iter_mut().for_each(|x| *x *= 1e-39),
                    4 if n > 2 => v[n / 2] = f32::NAN,
                    _ => {}
                }
                let m = v.iter().fold(0.0f32, |a, x| a.max(x.abs()));
                let mut q = vec![0i8; n];
                let scale = quantize_block_absmax(&v, &mut q);
                if m < f32::MIN_POSITIVE {
                    assert_eq!(scale, 0.0);
                    assert!(q.iter().all(|&c| c == 0));
                    continue;
                }
                assert_eq!(scale, m / 127.0, "n {n} case {case}");
                let inv = 127.0 / m;
                for (i, (&x, &c)) in v.iter().zip(&q).enumerate() {
                    let want = (x * inv).round().clamp(-127.0, 127.0) as i8;
                    assert_eq!(c, want, "n {n} case {case} [{i}] = {x}");
                }
            }
        }
    }
}
