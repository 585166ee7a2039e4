use qsparse_kernels::bandwidth::{buffer, read_all};
use qsparse_kernels::Isa;
use rayon::prelude::*;
use std::time::Instant;
fn main() {
    let buf = buffer(256 << 20);
    let b = buf.as_slice();
    for run in [64usize, 128, 256, 512, 1024, 2048, 4096] {
        let n = b.len() / run;
        for keep in [1.0f64, 0.5, 0.25] {
            // kept runs: deterministic pseudo-random subset, ascending
            let kept: Vec<usize> = (0..n)
                .filter(|&i| ((i.wrapping_mul(2654435761) >> 7) % 1000) as f64 / 1000.0 < keep)
                .collect();
            let mut best = f64::MAX;
            for _ in 0..3 {
                let t = Instant::now();
                let x: u64 = kept
                    .par_chunks(kept.len() / 2 + 1)
                    .map(|ks| {
                        ks.iter().fold(0u64, |a, &i| {
                            a ^ read_all(Isa::Avx2, &b[i * run..(i + 1) * run])
                        })
                    })
                    .reduce(|| 0, |a, c| a ^ c);
                std::hint::black_box(x);
                best = best.min(t.elapsed().as_secs_f64());
            }
            let bytes = kept.len() * run;
            println!(
                "run {run:5} keep {keep:.2}: {:5.1} GB/s useful, time vs full {:.2}",
                bytes as f64 / best / 1e9,
                best
            );
        }
    }
}
