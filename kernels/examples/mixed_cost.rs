//! What the f32 activation outliers add to an int8 product (`Input::Mixed` against
//! `Input::I8`), hot in cache, on the SmolLM2 gate/up shape (576 x 3072) and its lm_head
//! (576 x 49152), 2 threads.
//!
//!     cargo run --release -p qsparse-kernels --example mixed_cost
use std::time::Instant;

use qsparse_kernels::{gather_matvec, Input, Isa, PackedMatrix, Sparse};

fn main() {
    let isa = Isa::best();
    for (d_in, d_out) in [(576usize, 3072usize), (576, 49152)] {
        let w: Vec<f32> = (0..d_in * d_out)
            .map(|i| ((i * 7919) % 255) as f32 - 127.0)
            .collect();
        let m = PackedMatrix::i8_from_f32(&w, d_out, d_in);
        let mut x = Sparse::default();
        x.dense(
            &(0..d_in)
                .map(|i| (i % 200) as i8 - 100)
                .collect::<Vec<i8>>(),
        );
        let mut y = vec![0f32; d_out];
        for outliers in [0usize, 16, 32] {
            let exact = Sparse {
                indices: (0..outliers as u32).map(|i| i * 17).collect(),
                values: (0..outliers).map(|i| i as f32 * 0.5 - 3.0).collect(),
            };
            let input = Input::Mixed {
                x: &x,
                scale: 0.01,
                exact: &exact,
            };
            let n = if d_out > 10000 { 40 } else { 400 };
            for _ in 0..n / 10 {
                gather_matvec(isa, &m.view(), input, &mut y);
            }
            let t = Instant::now();
            for _ in 0..n {
                gather_matvec(isa, &m.view(), input, &mut y);
            }
            let us = t.elapsed().as_secs_f64() * 1e6 / n as f64;
            println!("{d_in}x{d_out} with {outliers:>2} f32 columns: {us:.1} us");
        }
    }
}
