//! SwiGLU's element-wise step: gate ← SiLU(gate)·up, SiLU(x) = x / (1 + e^−x), with the
//! polynomial [`crate::expf::exp`] (within 2 ulp; SIMD and scalar differ by fused rounding only).
//! Eight lanes at a time on one thread, a fraction of what libm's exp took split over two.

use crate::expf::exp;
use crate::isa::Isa;

/// `gate[i] ← SiLU(gate[i])·up[i]`. Panics if the lengths differ.
pub fn swiglu(isa: Isa, gate: &mut [f32], up: &[f32]) {
    assert_eq!(gate.len(), up.len(), "swiglu: gate and up lengths differ");
    #[cfg(target_arch = "x86_64")]
    if matches!(isa, Isa::Avx2 | Isa::Avx512) && crate::isa::x86::v3().is_some() {
        // SAFETY: the V3 token proves AVX2 and FMA; the lengths are equal.
        unsafe { avx2(gate, up) };
        return;
    }
    let _ = isa;
    swiglu_scalar(gate, up);
}

/// `gate[i] ← max(gate[i], 0)²·up[i]`: the squared-ReLU gated FFN of BitNet b1.58 2B4T (no
/// transcendental, so plain code the compiler vectorizes). Panics if the lengths differ.
pub fn relu2_glu(gate: &mut [f32], up: &[f32]) {
    assert_eq!(
        gate.len(),
        up.len(),
        "relu2_glu: gate and up lengths differ"
    );
    for (g, &u) in gate.iter_mut().zip(up) {
        let r = g.max(0.0);
        *g = r * r * u;
    }
}

/// SiLU(x) = x / (1 + e^−x).
#[inline(always)]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

fn swiglu_scalar(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = silu(*g) * u;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn avx2(gate: &mut [f32], up: &[f32]) {
    use std::arch::x86_64::*;
    let main = gate.len() / 8 * 8;
    for i in (0..main).step_by(8) {
        // SAFETY: i + 8 <= main <= both lengths; AVX2 and FMA are enabled here.
        unsafe {
            let g = _mm256_loadu_ps(gate.as_ptr().add(i));
            let e = crate::expf::avx2::exp8(_mm256_sub_ps(_mm256_setzero_ps(), g));
            let s = _mm256_div_ps(g, _mm256_add_ps(_mm256_set1_ps(1.0), e));
            let u = _mm256_loadu_ps(up.as_ptr().add(i));
            _mm256_storeu_ps(gate.as_mut_ptr().add(i), _mm256_mul_ps(s, u));
        }
    }
    swiglu_scalar(&mut gate[main..], &up[main..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relu2_glu_squares_the_positive_part() {
        let mut gate = vec![-2.0, -0.0, 0.5, 3.0, f32::MIN_POSITIVE];
        let up = vec![5.0, 1.0, 2.0, -1.0, 1.0];
        relu2_glu(&mut gate, &up);
        assert_eq!(
            gate,
            [0.0, 0.0, 0.5, -9.0, f32::MIN_POSITIVE * f32::MIN_POSITIVE]
        );
    }
}
