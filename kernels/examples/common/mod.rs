//! Shared by the examples that time products as a decode step meets them (each uses a part).
#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, Ordering};

/// Runs `f` on a rayon pool worker while the pool's other worker spins, looking for its parallel
/// work, as the executor's forward step does (`src/model/llama/pool.rs`, `on_pool`).
pub fn on_busy_pool(f: impl FnOnce() + Send) {
    let done = AtomicBool::new(false);
    rayon::scope(|_| {
        rayon::join(
            || {
                f();
                done.store(true, Ordering::Release);
            },
            || {
                while !done.load(Ordering::Acquire) {
                    if rayon::yield_now() != Some(rayon::Yield::Executed) {
                        std::hint::spin_loop();
                    }
                }
            },
        )
    });
}

/// SmolLM2's four int8 projection shapes: (name, d_in, d_out).
pub const SMOLLM2_SHAPES: [(&str, usize, usize); 4] = [
    ("q/k/v", 576, 960),
    ("o", 576, 576),
    ("gate/up", 576, 3072),
    ("down", 1536, 576),
];

/// Enough int8 copies of the row-major f32 `w` ([d_out][d_in]) to exceed the last-level cache
/// many times over (192 MiB of codes), so each product meets its matrix cold, as a decode step
/// does.
pub fn cold_copies(w: &[f32], d_out: usize, d_in: usize) -> Vec<qsparse_kernels::PackedMatrix> {
    let n = (192 << 20) / (d_in * d_out) + 1;
    (0..n)
        .map(|_| qsparse_kernels::PackedMatrix::i8_from_f32(w, d_out, d_in))
        .collect()
}

/// Times `a` and `b` alternately for `rounds` rounds: the medians of each and of the per-round
/// ratios a/b (both sides seconds apart, so a noisy machine's drift cancels in the ratio).
pub fn interleaved(
    rounds: usize,
    mut a: impl FnMut() -> f64,
    mut b: impl FnMut() -> f64,
) -> (f64, f64, f64) {
    let (mut ta, mut tb, mut r) = (vec![], vec![], vec![]);
    for _ in 0..rounds {
        let (x, y) = (a(), b());
        ta.push(x);
        tb.push(y);
        r.push(x / y);
    }
    let med = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    (med(ta), med(tb), med(r))
}
