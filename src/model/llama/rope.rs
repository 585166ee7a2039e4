//! Rotary position embedding: one token's rotation, computed once per position and applied to
//! every query and key head of every layer.

/// One step's RoPE rotation per entry: (a, b) -> (a·cos − b·sin, b·cos + a·sin) is
/// x·cos + swap(x)·sin with `cos` = (cos, cos) and `sin` = (−sin, sin) per pair (the same
/// roundings as the pairwise form: x − y is x + (−y) exactly). Eight entries at a time with a
/// pair swap the compiler turns into one shuffle: ~1 µs per SmolLM2 layer as pairs.
#[derive(Debug, Default)]
pub(super) struct Rope {
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl Rope {
    /// The rotation at position `pos` for the frequencies θ_i `freqs`: pos·θ_i per rotated pair,
    /// cos and sin multiplied by `scale` (LongRoPE's attention factor; 1 for most models).
    pub(super) fn at(&mut self, pos: usize, freqs: &[f32], scale: f32) {
        self.cos.clear();
        self.sin.clear();
        for &f in freqs {
            let (sin, cos) = (pos as f32 * f).sin_cos();
            let (sin, cos) = (sin * scale, cos * scale);
            self.cos.extend([cos, cos]);
            self.sin.extend([-sin, sin]);
        }
    }

    /// Rotate each head (`head_dim` entries) of `v` in its first rope_dim entries: consecutive
    /// pairs (llama), or entries i and i + rope_dim/2 (llama.cpp's NeoX form, which it uses for
    /// `bitnet`).
    pub(super) fn apply(&self, v: &mut [f32], head_dim: usize, neox: bool) {
        for head in v.chunks_exact_mut(head_dim) {
            if neox {
                self.rotate_halves(&mut head[..self.cos.len()]);
            } else {
                self.rotate(&mut head[..self.cos.len()]);
            }
        }
    }

    /// The NeoX form: frequency i turns the pair (x[i], x[i + n/2]).
    fn rotate_halves(&self, x: &mut [f32]) {
        let (lo, hi) = x.split_at_mut(x.len() / 2);
        for (i, (a, b)) in lo.iter_mut().zip(hi.iter_mut()).enumerate() {
            let (c, s) = (self.cos[2 * i], self.sin[2 * i + 1]);
            let (x0, x1) = (*a, *b);
            *a = x0 * c - x1 * s;
            *b = x1 * c + x0 * s;
        }
    }

    fn rotate(&self, x: &mut [f32]) {
        let mut chunks = x.chunks_exact_mut(8);
        for ((x, c), s) in (&mut chunks)
            .zip(self.cos.chunks_exact(8))
            .zip(self.sin.chunks_exact(8))
        {
            let v: [f32; 8] = [x[0], x[1], x[2], x[3], x[4], x[5], x[6], x[7]];
            let swapped = [v[1], v[0], v[3], v[2], v[5], v[4], v[7], v[6]];
            for j in 0..8 {
                x[j] = v[j] * c[j] + swapped[j] * s[j];
            }
        }
        let done = x.len() / 8 * 8;
        for (j, pair) in x[done..].chunks_exact_mut(2).enumerate() {
            let (c, s) = (self.cos[done + 2 * j], self.sin[done + 2 * j + 1]);
            let (a, b) = (pair[0], pair[1]);
            pair[0] = a * c - b * s;
            pair[1] = b * c + a * s;
        }
    }
}
