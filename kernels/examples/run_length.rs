//! How coarse must a sparse read be to save time? Reads a pseudo-random subset (100%, 50%, 25%)
//! of a 256 MiB buffer in runs of 64 B .. 4 KiB, split over the rayon pool, and prints the useful
//! bandwidth. The tiled layout's 4 KiB column runs come from this measurement (see layout.rs).
//!
//!     cargo run --release -p qsparse-kernels --example run_length

use std::time::Instant;

use qsparse_kernels::bandwidth::{buffer, read_all};
use qsparse_kernels::Isa;
use rayon::prelude::*;

fn main() {
    let isa = Isa::best();
    let buf = buffer(256 << 20);
    let b = buf.as_slice();
    println!("{:>6} {:>6} {:>12}", "run B", "kept", "useful GB/s");
    for run in [64usize, 256, 1024, 2048, 4096, 8192, 16384] {
        let n = b.len() / run;
        for keep in [1.0f64, 0.5, 0.25] {
            // A fixed pseudo-random subset of the runs, in ascending order.
            let kept: Vec<usize> = (0..n)
                .filter(|&i| ((i.wrapping_mul(2_654_435_761) >> 7) % 1000) as f64 / 1000.0 < keep)
                .collect();
            let per = kept.len().div_ceil(rayon::current_num_threads()).max(1);
            let mut best = f64::MAX;
            for _ in 0..3 {
                let t = Instant::now();
                let x = kept
                    .par_chunks(per)
                    .map(|ks| {
                        ks.iter()
                            .fold(0u64, |a, &i| a ^ read_all(isa, &b[i * run..(i + 1) * run]))
                    })
                    .reduce(|| 0, |a, c| a ^ c);
                std::hint::black_box(x);
                best = best.min(t.elapsed().as_secs_f64());
            }
            println!(
                "{run:>6} {keep:>6.2} {:>12.1}",
                (kept.len() * run) as f64 / best / 1e9
            );
        }
    }
}
