//! Single-thread rate of the gather kernels on a matrix that stays in L2, in weights per cycle
//! (pass the clock in GHz): separates the kernels' compute cost from memory effects.
//!
//!     cargo run --release -p qsparse-kernels --example hot_rate -- 512 512 2.46

use std::time::Instant;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use qsparse_kernels::{
    gather_matvec, keep_count, quantize_absmax, topk_f32, topk_i8, Format, Input, Isa,
    PackedMatrix, Sparse,
};

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let d_in: usize = a.first().map_or(512, |s| s.parse().unwrap());
    let d_out: usize = a.get(1).map_or(512, |s| s.parse().unwrap());
    let ghz: f64 = a.get(2).map_or(2.46, |s| s.parse().unwrap());
    let isa = Isa::choose(std::env::var(qsparse_kernels::ISA_VARIABLE).ok().as_deref());
    let mut rng = SmallRng::seed_from_u64(7);
    let mut rnd = || rng.random_range(-1.0f32..1.0);
    let w: Vec<f32> = (0..d_in * d_out).map(|_| rnd()).collect();
    let x: Vec<f32> = (0..d_in).map(|_| rnd()).collect();
    let mut q = vec![0i8; d_in];
    let g = quantize_absmax(isa, &x, &mut q).unwrap();
    let mut si = Sparse::default();
    topk_i8(isa, &q, keep_count(d_in, 0.0), &mut si);
    let mut sf = Sparse::default();
    topk_f32(isa, &x, keep_count(d_in, 0.0), &mut Vec::new(), &mut sf);
    let mut y = vec![0f32; d_out];
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    for format in [Format::T2, Format::I8, Format::F16, Format::F32] {
        let m = match format {
            Format::T2 => PackedMatrix::t2_from_f32(&w, d_out, d_in),
            Format::I8 => PackedMatrix::i8_from_f32(&w, d_out, d_in),
            Format::F16 => PackedMatrix::f16_from_f32(&w, d_out, d_in),
            Format::F32 => PackedMatrix::f32_from_f32(&w, d_out, d_in),
        };
        let input = if format.is_integer() {
            Input::I8 {
                x: &si,
                scale: g / 127.0,
            }
        } else {
            Input::F32(&sf)
        };
        pool.install(|| {
            let mut best = f64::MAX;
            for _ in 0..20 {
                let t = Instant::now();
                for _ in 0..20 {
                    gather_matvec(isa, &m.view(), input, &mut y);
                }
                best = best.min(t.elapsed().as_secs_f64() / 20.0);
            }
            let wts = (d_in * d_out) as f64;
            println!(
                "{:>3} {d_in}x{d_out}: {:.1} us, {:.2} weights/cycle, {:.1} GB/s",
                format.name(),
                best * 1e6,
                wts / (best * ghz * 1e9),
                m.view().bytes_read(d_in) as f64 / best / 1e9
            );
        });
    }
}
