//! The element-wise pieces of the forward pass: RMSNorm and SiLU.
//!
//! SiLU keeps libm's exp: the kernels' polynomial one (used in attention) would vectorize, but the
//! saving is ~2% of a step and it moves the int8 path's perplexity on short texts (a different
//! rounding realization of the quantized activations).

pub fn rms_norm(out: &mut [f32], x: &[f32], w: &[f32], eps: f32) {
    let ms = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let inv = 1.0 / (ms + eps).sqrt();
    for ((o, &xi), &wi) in out.iter_mut().zip(x).zip(w) {
        *o = xi * inv * wi;
    }
}

pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silu_matches_its_definition() {
        for x in [-30.0f32, -2.5, -0.1, 0.0, 0.3, 4.0, 50.0] {
            let want = x as f64 / (1.0 + (-x as f64).exp());
            assert!(
                (silu(x) as f64 - want).abs() <= 1e-6 * want.abs().max(1e-6),
                "{x}"
            );
        }
    }
}
