//! The lm_head product both ways, side by side: the column gather (every column kept) against the
//! row-major Q8 kernel (int8 blocks of 32 with a scale each, weights and activation), its 4-bit
//! form, and a plain parallel read of the column bytes, on two threads (SmolLM2's head: 576 x
//! 49152; the matrix is far larger than the L3).
//!
//!     cargo run --release -p qsparse-kernels --example head_speed -- [d_in d_out]

use std::time::Instant;

use qsparse_kernels::bandwidth::read_all;
use qsparse_kernels::dense_q8::{matvec_rows_q8, BlockQ8, CodeBits, RowsQ8};
use qsparse_kernels::{gather_matvec, quantize_absmax, Input, Isa, PackedMatrix, Sparse};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().unwrap())
        .collect();
    let (d_in, d_out) = (
        args.first().copied().unwrap_or(576),
        args.get(1).copied().unwrap_or(49152),
    );
    let isa = Isa::choose(std::env::var(qsparse_kernels::ISA_VARIABLE).ok().as_deref());
    let mut rng = SmallRng::seed_from_u64(1);
    let mut rnd = || rng.random_range(-1.0f32..1.0);
    let w: Vec<f32> = (0..d_in * d_out).map(|_| rnd()).collect();
    let x: Vec<f32> = (0..d_in).map(|_| rnd()).collect();
    let cols = PackedMatrix::i8_from_f32(&w, d_out, d_in);
    let rows = RowsQ8::from_f32(&w, d_out, d_in);
    let rows4 = RowsQ8::from_f32_bits(&w, d_out, d_in, CodeBits::Four);
    drop(w);
    let mut q = vec![0i8; d_in];
    let g = quantize_absmax(isa, &x, &mut q).unwrap();
    let mut dense = Sparse::default();
    dense.dense(&q);
    let mut blocks = BlockQ8::default();
    let mut y = vec![0f32; d_out];
    let mb = (d_in * d_out) as f64 / 1e6;
    let time = |f: &mut dyn FnMut()| {
        f();
        let t = Instant::now();
        for _ in 0..20 {
            f();
        }
        t.elapsed().as_secs_f64() / 20.0 * 1e6
    };
    for round in 0..4 {
        let c = time(&mut || {
            gather_matvec(
                isa,
                &cols.view(),
                Input::I8 {
                    x: &dense,
                    scale: g / 127.0,
                },
                &mut y,
            )
        });
        let r = time(&mut || {
            blocks.quantize(&x).unwrap();
            matvec_rows_q8(isa, &rows, &blocks, &mut y)
        });
        let r4 = time(&mut || {
            blocks.quantize(&x).unwrap();
            matvec_rows_q8(isa, &rows4, &blocks, &mut y)
        });
        let data = cols.view().data();
        let per = data.len().div_ceil(2).div_ceil(64) * 64;
        let p = time(&mut || {
            std::hint::black_box(
                data.par_chunks(per)
                    .map(|c| read_all(isa, c))
                    .reduce(|| 0, |a, b| a ^ b),
            );
        });
        println!(
            "round {round}: {d_in}x{d_out} columns {c:.0} us ({:.1} GB/s), rows {r:.0} us ({:.1} GB/s, {:.2}x), 4-bit rows {r4:.0} us ({:.1} GB/s), plain read {p:.0} us ({:.1} GB/s)",
            mb / c * 1e3,
            rows.bytes() as f64 / r / 1e3,
            c / r,
            rows4.bytes() as f64 / r4 / 1e3,
            mb / p * 1e3
        );
    }
}
