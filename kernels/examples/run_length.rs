//! How coarse must a sparse read be to save time? Reads a pseudo-random subset (100%, 50%, 25%)
//! of a 256 MiB buffer in runs of 64 B .. 16 KiB (576 and 960 B: SmolLM2's int8 column runs),
//! split over the rayon pool, and prints the useful bandwidth two ways: plain reads (the
//! hardware prefetchers alone), and on x86-64 with each run requested into L2 about 8 KB of
//! kept runs ahead, as the gather kernels do. The tiled layout's 4 KiB column runs come from the
//! first measurement (see layout.rs); the second is the ceiling a sparse product's reads meet.
//!
//!     cargo run --release -p qsparse-kernels --example run_length

use std::time::Instant;

use qsparse_kernels::bandwidth::{buffer, prefetch_l2, read_all};
use qsparse_kernels::Isa;
use rayon::prelude::*;

/// Bytes of kept runs requested ahead of the one being read (the gather kernels' lead).
const AHEAD_BYTES: usize = 8192;

/// XOR of the kept runs, each one first requested `ahead` runs before it is read.
fn read_runs(isa: Isa, b: &[u8], run: usize, kept: &[usize], ahead: usize) -> u64 {
    let mut x = 0;
    for (k, &i) in kept.iter().enumerate() {
        if let Some(&j) = kept.get(k + ahead).filter(|_| ahead > 0) {
            prefetch_l2(&b[j * run..(j + 1) * run]);
        }
        x ^= read_all(isa, &b[i * run..(i + 1) * run]);
    }
    x
}

fn main() {
    let isa = Isa::choose(std::env::var(qsparse_kernels::ISA_VARIABLE).ok().as_deref());
    let buf = buffer(256 << 20);
    let b = buf.as_slice();
    println!(
        "{:>6} {:>6} {:>12} {:>18}",
        "run B", "kept", "useful GB/s", "prefetched GB/s"
    );
    for run in [64usize, 256, 576, 960, 1024, 2048, 4096, 8192, 16384] {
        let n = b.len() / run;
        for keep in [1.0f64, 0.5, 0.25] {
            // A fixed pseudo-random subset of the runs, in ascending order.
            let kept: Vec<usize> = (0..n)
                .filter(|&i| ((i.wrapping_mul(2_654_435_761) >> 7) % 1000) as f64 / 1000.0 < keep)
                .collect();
            let per = kept.len().div_ceil(rayon::current_num_threads()).max(1);
            let rate = |ahead: usize| {
                let mut best = f64::MAX;
                for _ in 0..3 {
                    let t = Instant::now();
                    let x = kept
                        .par_chunks(per)
                        .map(|ks| read_runs(isa, b, run, ks, ahead))
                        .reduce(|| 0, |a, c| a ^ c);
                    std::hint::black_box(x);
                    best = best.min(t.elapsed().as_secs_f64());
                }
                (kept.len() * run) as f64 / best / 1e9
            };
            let plain = rate(0);
            let ahead = if cfg!(target_arch = "x86_64") {
                format!("{:.1}", rate(AHEAD_BYTES.div_ceil(run)))
            } else {
                "-".to_string()
            };
            println!("{run:>6} {keep:>6.2} {plain:>12.1} {ahead:>18}");
        }
    }
}
