//! Speedup of S = 0.5 over dense, int8, on SmolLM2's four projection shapes as a decode step meets
//! them (cold: many distinct matrices, together far larger than the last-level cache), dense and
//! sparse interleaved round by round; medians of the per-round ratios.
//!
//!     cargo run --release -p qsparse-kernels --example sparse_ratio -- [sparsity]

use std::time::Instant;

mod common;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use qsparse_kernels::{gather_matvec, keep_count, quantize_absmax, topk_i8, Input, Isa, Sparse};

fn main() {
    let s: f32 = std::env::args()
        .nth(1)
        .map(|a| a.parse().unwrap())
        .unwrap_or(0.5);
    let isa = Isa::choose(std::env::var(qsparse_kernels::ISA_VARIABLE).ok().as_deref());
    let mut rng = SmallRng::seed_from_u64(7);
    let mut rnd = move || rng.random_range(-1.0f32..1.0);
    // As in the executor: the step runs on a pool worker while the other one spins, looking for
    // the products' parallel work.
    common::on_busy_pool(|| {
        for (name, d_in, d_out) in common::SMOLLM2_SHAPES {
            let w: Vec<f32> = (0..d_in * d_out).map(|_| rnd()).collect();
            let mats = common::cold_copies(&w, d_out, d_in);
            let n = mats.len();
            let x: Vec<f32> = (0..d_in).map(|_| rnd().powi(3)).collect();
            let mut q = vec![0i8; d_in];
            let g = quantize_absmax(isa, &x, &mut q).unwrap();
            let (mut dense, mut sparse) = (Sparse::default(), Sparse::default());
            dense.dense(&q);
            topk_i8(isa, &q, keep_count(d_in, s), &mut sparse);
            let (mut y1, mut y2) = (vec![0f32; d_out], vec![0f32; d_out]);
            let time = |sel: &Sparse<i8>, y: &mut [f32]| {
                let t = Instant::now();
                for m in &mats {
                    let input = Input::I8 {
                        x: sel,
                        scale: g / 127.0,
                    };
                    gather_matvec(isa, &m.view(), input, y);
                }
                t.elapsed().as_secs_f64() / n as f64 * 1e6
            };
            let (td, ts, r) =
                common::interleaved(15, || time(&dense, &mut y1), || time(&sparse, &mut y2));
            println!(
                "{name:8} {d_in}x{d_out}: dense {td:.1} us, S={s} {ts:.1} us, speedup {r:.2} (ideal {:.2})",
                1.0 / (1.0 - s)
            );
        }
    });
}
