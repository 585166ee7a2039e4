//! RMSNorm, the forward pass's one normalization (SiLU·up is a kernel:
//! `qsparse_kernels::activation`).

/// out = x / sqrt(mean(x²) + eps) · w. The squares are summed in f64 as llama.cpp does, in eight
/// lanes so the loop vectorizes (one f32 chain took ~1 µs per SmolLM2 norm, 61 per token).
pub fn rms_norm(out: &mut [f32], x: &[f32], w: &[f32], eps: f32) {
    let inv = inverse_rms(x, eps);
    for ((o, &xi), &wi) in out.iter_mut().zip(x).zip(w) {
        *o = xi * inv * wi;
    }
}

/// [`rms_norm`] of `x` into itself (BitNet's sub-norms, on a projection's input in place).
pub fn rms_norm_in_place(x: &mut [f32], w: &[f32], eps: f32) {
    let inv = inverse_rms(x, eps);
    for (xi, &wi) in x.iter_mut().zip(w) {
        *xi = *xi * inv * wi;
    }
}

/// 1 / sqrt(mean(x²) + eps).
fn inverse_rms(x: &[f32], eps: f32) -> f32 {
    let chunks = x.chunks_exact(8);
    let tail: f64 = chunks.remainder().iter().map(|&v| f64::from(v * v)).sum();
    let lanes = chunks.fold([0f64; 8], |mut acc, c| {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += f64::from(v * v);
        }
        acc
    });
    let ms = ((lanes.iter().sum::<f64>() + tail) / x.len() as f64) as f32;
    1.0 / (ms + eps).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rms_norm_matches_its_definition() {
        for n in [1usize, 7, 8, 9, 576, 1000] {
            let x: Vec<f32> = (0..n)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.3)
                .collect();
            let w: Vec<f32> = (0..n).map(|i| 0.5 + (i % 5) as f32 * 0.1).collect();
            let mut out = vec![0f32; n];
            rms_norm(&mut out, &x, &w, 1e-5);
            let mut in_place = x.clone();
            rms_norm_in_place(&mut in_place, &w, 1e-5);
            assert_eq!(in_place, out, "n={n}: in place");
            let ms = x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / n as f64;
            for (i, (&o, (&xi, &wi))) in out.iter().zip(x.iter().zip(&w)).enumerate() {
                let want = xi as f64 / (ms + 1e-5).sqrt() * wi as f64;
                assert!(
                    (o as f64 - want).abs() <= 1e-6 * want.abs().max(1e-6),
                    "n={n} [{i}]"
                );
            }
        }
    }
}
