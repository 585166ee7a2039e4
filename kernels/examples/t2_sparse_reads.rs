//! Sparse ternary products against plain reads of the same bytes. On BitNet b1.58 2B4T's four
//! projection shapes, T2 weights met cold (distinct copies far larger than the last-level cache,
//! as a decode step meets them), dense and at sparsity S (default 0.6125), in alternated rounds,
//! medians: the product's time, and the time to read its bytes without arithmetic (dense: the
//! whole matrix in two halves; at S: the kept columns' runs, split in two halves across the two
//! workers, each run requested into L2 about 8 KB of runs ahead). Where the product takes longer
//! than the read, the kernel's arithmetic, not the memory, sets its speed.
//!
//!     cargo run --release -p qsparse-kernels --example t2_sparse_reads -- [sparsity]

use std::time::Instant;

mod common;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

use qsparse_kernels::bandwidth::{prefetch_l2, read_all};
use qsparse_kernels::{
    gather_matvec, keep_count, quantize_absmax, topk_i8, Input, Isa, PackedMatrix, Sparse,
};

/// BitNet b1.58 2B4T's projections: (name, d_in, d_out).
const SHAPES: [(&str, usize, usize); 4] = [
    ("q/k/v", 2560, 3840),
    ("o", 2560, 2560),
    ("gate/up", 2560, 13824),
    ("down", 6912, 2560),
];

/// Bytes of kept runs requested ahead of the one being read (the gather kernels' lead).
const AHEAD_BYTES: usize = 8192;

fn main() {
    let s: f32 = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("a sparsity in [0, 1)"))
        .unwrap_or(0.6125);
    let isa = Isa::choose(std::env::var(qsparse_kernels::ISA_VARIABLE).ok().as_deref());
    let mut rng = SmallRng::seed_from_u64(7);
    let mut rnd = move || rng.random_range(-1.0f32..1.0);
    println!("shape          dense: product / read µs    S={s}: product / read of kept runs µs    speedup: product (reads, bytes)");
    common::on_busy_pool(|| {
        for (name, d_in, d_out) in SHAPES {
            let w: Vec<f32> = (0..d_in * d_out).map(|_| rnd()).collect();
            let bytes = d_in * d_out / 4;
            // Distinct copies (a clone may share its mapping), 192 MiB in all.
            let n = (192 << 20) / bytes + 1;
            let mats: Vec<PackedMatrix> = (0..n)
                .map(|_| PackedMatrix::t2_from_f32(&w, d_out, d_in))
                .collect();
            drop(w);
            let view = mats[0].view();
            assert_eq!(view.n_tiles(), 1, "one tile: column j's run at j · run");
            let run = view.tile_lines(0) * 64;
            let x: Vec<f32> = (0..d_in).map(|_| rnd().powi(3)).collect();
            let mut q = vec![0i8; d_in];
            let g = quantize_absmax(isa, &x, &mut q).unwrap();
            let (mut dense, mut sparse) = (Sparse::default(), Sparse::default());
            dense.dense(&q);
            topk_i8(isa, &q, keep_count(d_in, s), &mut sparse);
            let mut y = vec![0f32; d_out];
            let mut product = |sel: &Sparse<i8>| {
                let t = Instant::now();
                for m in &mats {
                    let input = Input::I8 {
                        x: sel,
                        scale: g / 127.0,
                    };
                    gather_matvec(isa, &m.view(), input, &mut y);
                }
                t.elapsed().as_secs_f64() / n as f64 * 1e6
            };
            let kept: Vec<usize> = sparse.indices.iter().map(|&j| j as usize).collect();
            let ahead = (AHEAD_BYTES / run).max(1);
            let read_kept = || {
                let t = Instant::now();
                let mut acc = 0;
                for m in &mats {
                    let data = m.view().data();
                    acc ^= kept
                        .par_chunks(kept.len().div_ceil(2))
                        .map(|half| {
                            let mut x = 0;
                            for (k, &j) in half.iter().enumerate() {
                                if let Some(&next) = half.get(k + ahead) {
                                    prefetch_l2(&data[next * run..(next + 1) * run]);
                                }
                                x ^= read_all(isa, &data[j * run..(j + 1) * run]);
                            }
                            x
                        })
                        .reduce(|| 0, |a, b| a ^ b);
                }
                std::hint::black_box(acc);
                t.elapsed().as_secs_f64() / n as f64 * 1e6
            };
            let read_whole = || {
                let t = Instant::now();
                let mut acc = 0;
                for m in &mats {
                    let data = m.view().data();
                    let per = data.len().div_ceil(2).div_ceil(64) * 64;
                    acc ^= data
                        .par_chunks(per)
                        .map(|c| read_all(isa, c))
                        .reduce(|| 0, |a, b| a ^ b);
                }
                std::hint::black_box(acc);
                t.elapsed().as_secs_f64() / n as f64 * 1e6
            };
            let med = |mut v: Vec<f64>| {
                v.sort_by(f64::total_cmp);
                v[v.len() / 2]
            };
            let mut t = [vec![], vec![], vec![], vec![]];
            for _ in 0..9 {
                t[0].push(product(&dense));
                t[1].push(read_whole());
                t[2].push(product(&sparse));
                t[3].push(read_kept());
            }
            let [pd, rd, ps, rs] = t.map(med);
            println!(
                "{name:8} {d_in:>5}x{d_out:<5}  {pd:8.1} / {rd:8.1}            {ps:8.1} / {rs:8.1} ({} runs of {run} B)          {:.2}x ({:.2}x, {:.2}x)",
                kept.len(),
                pd / ps,
                rd / rs,
                d_in as f64 / kept.len() as f64
            );
        }
    });
}
