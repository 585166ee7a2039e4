//! e^x as a polynomial: within 2 ulp of the true value, branch-free and free of libm calls, so
//! loops over it vectorize and the AVX2 form (`avx2::exp8`) takes the same steps eight lanes at a
//! time. Softmax (attention) and SiLU (the feed-forward gate) use it.

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

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    use std::arch::x86_64::*;

    /// [`super::exp`] on eight lanes, the same steps in the same order (so the same values up to
    /// the fused multiply-adds).
    ///
    /// Safety: the caller runs with AVX2 and FMA enabled.
    #[inline(always)]
    pub unsafe fn exp8(x: __m256) -> __m256 {
        // SAFETY: the intrinsics need AVX2 and FMA, which this function's caller runs with.
        unsafe {
            let c = |v: f32| _mm256_set1_ps(v);
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
            _mm256_mul_ps(_mm256_mul_ps(q, pow), _mm256_blendv_ps(c(1.0), c(2.0), top))
        }
    }
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
