//! Products on matrices that are *not* in cache, the way a decode step meets them: many distinct
//! matrices of one shape (together far larger than the last-level cache), each used once per
//! round. Compares the gather kernel with a plain parallel read of the same bytes.
//!
//!     cargo run --release -p qsparse-kernels --example cold_matvec -- 576 3072 [sparsity]

use std::time::Instant;

use qsparse_kernels::bandwidth::read_all;
use qsparse_kernels::{
    gather_matvec, keep_count, quantize_absmax, topk_i8, Input, Isa, PackedMatrix, Sparse,
};
use rayon::prelude::*;

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .take(2)
        .map(|a| a.parse().unwrap())
        .collect();
    let (d_in, d_out) = (
        args.first().copied().unwrap_or(576),
        args.get(1).copied().unwrap_or(3072),
    );
    let isa = Isa::choose(std::env::var(qsparse_kernels::ISA_VARIABLE).ok().as_deref());
    let bytes = d_in * d_out;
    let n = (256 << 20) / bytes + 1;
    let mut seed = 1u64;
    let mut rnd = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % 2001) as f32 / 1000.0 - 1.0
    };
    let mats: Vec<PackedMatrix> = (0..n)
        .map(|_| {
            let w: Vec<f32> = (0..bytes).map(|_| rnd()).collect();
            PackedMatrix::i8_from_f32(&w, d_out, d_in)
        })
        .collect();
    let x: Vec<f32> = (0..d_in).map(|_| rnd()).collect();
    let mut q = vec![0i8; d_in];
    let g = quantize_absmax(isa, &x, &mut q).unwrap();
    let mut sel = Sparse::default();
    // Third argument: the sparsity of the input (default 0, dense).
    let sparsity = std::env::args()
        .nth(3)
        .map(|a| a.parse::<f32>().unwrap())
        .unwrap_or(0.0);
    topk_i8(isa, &q, keep_count(d_in, sparsity), &mut sel);
    let mut y = vec![0f32; d_out];
    println!(
        "{n} matrices of {d_in}x{d_out} int8 ({:.2} MB each), S = {sparsity}: bytes below are the whole matrix's",
        bytes as f64 / 1e6
    );
    for threads in [1, 2] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            for round in 0..3 {
                let t = Instant::now();
                for m in &mats {
                    gather_matvec(isa, &m.view(), Input::I8 { x: &sel, scale: g / 127.0 }, &mut y);
                }
                let mv = t.elapsed().as_secs_f64() / n as f64;
                let t = Instant::now();
                let mut s = 0;
                for m in &mats {
                    let d = m.view().data();
                    let per = d.len().div_ceil(threads).div_ceil(64) * 64;
                    s ^= d.par_chunks(per).map(|c| read_all(isa, c)).reduce(|| 0, |a, b| a ^ b);
                }
                std::hint::black_box(s);
                let rd = t.elapsed().as_secs_f64() / n as f64;
                let t = Instant::now();
                for _ in 0..50 {
                    gather_matvec(isa, &mats[0].view(), Input::I8 { x: &sel, scale: g / 127.0 }, &mut y);
                }
                let hot = t.elapsed().as_secs_f64() / 50.0;
                println!("  hot (same matrix 50x): {:.1} us ({:.1} GB/s)", hot * 1e6, bytes as f64 / hot / 1e9);
                println!(
                    "threads {threads} round {round}: matvec {:.1} us ({:.1} GB/s), plain read {:.1} us ({:.1} GB/s)",
                    mv * 1e6,
                    bytes as f64 / mv / 1e9,
                    rd * 1e6,
                    bytes as f64 / rd / 1e9
                );
            }
        });
    }
}
