//! What 32 activation outliers add to an int8 product (SmolLM2's gate/up shape, 576 x 3072, and
//! its lm_head, 576 x 49152; hot where it fits, 2 threads): as f32 columns summed beside the
//! integer pass (`Input::Mixed`) against int16 entries inside it (`Input::I16`, what the executor
//! uses with I8 weights), next to the plain int8 product.
//!
//!     cargo run --release -p qsparse-kernels --example mixed_cost
use std::time::Instant;

use qsparse_kernels::{gather_matvec, Input, Isa, PackedMatrix, Sparse};

fn main() {
    let isa = Isa::choose(std::env::var(qsparse_kernels::ISA_VARIABLE).ok().as_deref());
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
        // 32 outliers, every 17th input: f32 values, or the same at the int8 scale as int16.
        let outliers = Sparse {
            indices: (0..32u32).map(|i| i * 17).collect(),
            values: (0..32).map(|i| i as f32 * 0.5 - 8.0).collect(),
        };
        let scale = 0.01;
        let mut x16 = Sparse::default();
        x16.dense(&x.values.iter().map(|&v| i16::from(v)).collect::<Vec<i16>>());
        for (&j, &v) in outliers.indices.iter().zip(&outliers.values) {
            x16.values[j as usize] = (v / scale).round() as i16;
        }
        let mut y = vec![0f32; d_out];
        let n = if d_out > 10000 { 40 } else { 400 };
        let mut time = |input: Input<'_>| {
            for _ in 0..n / 10 {
                gather_matvec(isa, &m.view(), input, &mut y);
            }
            let t = Instant::now();
            for _ in 0..n {
                gather_matvec(isa, &m.view(), input, &mut y);
            }
            t.elapsed().as_secs_f64() * 1e6 / n as f64
        };
        let plain = time(Input::I8 { x: &x, scale });
        let mixed = time(Input::Mixed {
            x: &x,
            scale,
            exact: &outliers,
        });
        let wide = time(Input::I16 { x: &x16, scale });
        println!(
            "{d_in}x{d_out}: int8 {plain:.1} us; + 32 f32 columns {mixed:.1} us ({:+.0}%); \
             int16 outliers in the pass {wide:.1} us ({:+.0}%)",
            (mixed / plain - 1.0) * 100.0,
            (wide / plain - 1.0) * 100.0
        );
    }
}
