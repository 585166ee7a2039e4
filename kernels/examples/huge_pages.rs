//! Heap-backed against huge-page-backed weights, interleaved in one process (the machine is
//! noisy): many distinct matrices of one shape, each used once per round, 2 threads.
//!
//!     cargo run --release -p qsparse-kernels --example huge_pages -- 4096 11008 0.5
use std::time::Instant;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use qsparse_kernels::memory::{share_huge_pages, AlignedBytes};
use qsparse_kernels::{
    gather_matvec, keep_count, quantize_absmax, topk_i8, Input, Isa, PackedMatrix, Sparse,
};

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let d_in: usize = a.first().map_or(576, |v| v.parse().unwrap());
    let d_out: usize = a.get(1).map_or(3072, |v| v.parse().unwrap());
    let sparsity: f32 = a.get(2).map_or(0.5, |v| v.parse().unwrap());
    let isa = Isa::choose(std::env::var(qsparse_kernels::ISA_VARIABLE).ok().as_deref());
    let n = (160 << 20) / (d_in * d_out) + 1;
    let mut rng = SmallRng::seed_from_u64(1);
    let w: Vec<f32> = (0..d_in * d_out)
        .map(|_| rng.random_range(-1.0f32..1.0))
        .collect();
    // Heap: every matrix on 4 KB pages. Huge: all in one huge-page mapping, as the executor
    // places a model's matrices.
    let build = |huge: bool| -> Vec<PackedMatrix> {
        let mut mats: Vec<PackedMatrix> = (0..n)
            .map(|_| PackedMatrix::i8_from_f32(&w, d_out, d_in))
            .collect();
        let mut data: Vec<&mut AlignedBytes> = mats.iter_mut().map(|m| &mut m.data).collect();
        if huge {
            assert!(share_huge_pages(&mut data));
        } else {
            data.iter_mut().for_each(|d| d.move_to_small_pages());
        }
        mats
    };
    let sets = [build(false), build(true)];
    let x: Vec<f32> = (0..d_in)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let mut q = vec![0i8; d_in];
    let g = quantize_absmax(isa, &x, &mut q).unwrap();
    let mut sel = Sparse::default();
    topk_i8(isa, &q, keep_count(d_in, sparsity), &mut sel);
    let mut y = vec![0f32; d_out];
    let mut times = [Vec::new(), Vec::new()];
    for _round in 0..9 {
        for (h, mats) in sets.iter().enumerate() {
            let t = Instant::now();
            for m in mats {
                gather_matvec(
                    isa,
                    &m.view(),
                    Input::I8 {
                        x: &sel,
                        scale: g / 127.0,
                    },
                    &mut y,
                );
            }
            times[h].push(t.elapsed().as_secs_f64() / n as f64 * 1e6);
        }
    }
    for t in &mut times {
        t.sort_by(f64::total_cmp);
    }
    println!(
        "{d_in}x{d_out} S={sparsity} ({n} matrices): heap median {:.1} us [{:.1}..{:.1}], huge median {:.1} us [{:.1}..{:.1}], huge/heap {:.3}",
        times[0][4], times[0][0], times[0][8], times[1][4], times[1][0], times[1][8], times[1][4] / times[0][4]
    );
}
