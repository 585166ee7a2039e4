//! Time of the selection steps a decode step runs per projection input (d = 576 and 1536):
//! outlier Top-16 on f32, absmax quantization, and Top-K on int8 for K = d - 16 and d / 2.
use std::time::Instant;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use qsparse_kernels::{largest_f32, quantize_absmax, topk_f32, topk_i8, Isa, Sparse};

fn main() {
    let isa = Isa::choose(std::env::var(qsparse_kernels::ISA_VARIABLE).ok().as_deref());
    let mut rng = SmallRng::seed_from_u64(9);
    for d in [576usize, 1536] {
        // Heavy-tailed, like activations: a few large values among many small ones.
        let x: Vec<f32> = (0..d)
            .map(|_| rng.random_range(-1.0f32..1.0).powi(3))
            .collect();
        let (mut scratch, mut out, mut q, mut si) = (
            Vec::new(),
            Sparse::default(),
            vec![0i8; d],
            Sparse::<i8>::default(),
        );
        let time = |f: &mut dyn FnMut()| {
            let t = Instant::now();
            for _ in 0..10000 {
                f();
            }
            t.elapsed().as_secs_f64() / 10000.0 * 1e6
        };
        let a = time(&mut || topk_f32(isa, &x, 16, &mut scratch, &mut out));
        let mut list = qsparse_kernels::outliers::Scratch::default();
        let l = time(&mut || {
            largest_f32(isa, &x, 16, &mut list, &mut out);
        });
        let b = time(&mut || {
            quantize_absmax(isa, &x, &mut q).unwrap();
        });
        let c = time(&mut || topk_i8(isa, &q, d - 16, &mut si));
        let e = time(&mut || topk_i8(isa, &q, d / 2, &mut si));
        println!("d={d}: top16 f32 {a:.2} us, largest_f32(16) {l:.2} us, quantize {b:.2} us, top(d-16) i8 {c:.2} us, top(d/2) i8 {e:.2} us");
    }
}
