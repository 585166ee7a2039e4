//! Batched against token-by-token products on SmolLM2's shapes (cold: many distinct matrices,
//! far larger than the last-level cache), dense inputs, interleaved round by round: microseconds
//! per token-product and the speedup (median of per-round ratios). Int8 weights, then f16 and
//! f32 (the float run kernels are generic over the batch).
//!
//!     cargo run --release -p qsparse-kernels --example batch_speed -- [batch] [warm] [int8]
//!
//! `warm` multiplies one copy of each matrix, in cache: the kernels' arithmetic rate apart from
//! memory. `int8` skips the float formats.

use std::time::Instant;

mod common;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use qsparse_kernels::{
    batch_limit, gather_matvec, gather_matvec_batch, quantize_absmax, BatchInput, Format, Input,
    Isa, PackedMatrix, Sparse,
};

fn main() {
    let isa = Isa::choose(std::env::var(qsparse_kernels::ISA_VARIABLE).ok().as_deref());
    let args: Vec<String> = std::env::args().skip(1).collect();
    // The largest batch the int8 kernels take here unless given (at most that).
    let limit = batch_limit(isa, Format::I8);
    let b: usize = args
        .iter()
        .find_map(|a| a.parse().ok())
        .unwrap_or(limit)
        .min(limit);
    let warm = args.iter().any(|a| a == "warm");
    let int8_only = args.iter().any(|a| a == "int8");
    let mut rng = SmallRng::seed_from_u64(7);
    let mut rnd = move || rng.random_range(-1.0f32..1.0);
    // As in the executor: on a pool worker while the other one spins, looking for work.
    common::on_busy_pool(|| {
        for (name, d_in, d_out) in common::SMOLLM2_SHAPES {
            let w: Vec<f32> = (0..d_in * d_out).map(|_| rnd()).collect();
            let mats = if warm {
                vec![PackedMatrix::i8_from_f32(&w, d_out, d_in)]
            } else {
                common::cold_copies(&w, d_out, d_in)
            };
            let mut tokens = Vec::new();
            for _ in 0..b {
                let x: Vec<f32> = (0..d_in).map(|_| rnd().powi(3)).collect();
                let mut q = vec![0i8; d_in];
                let g = quantize_absmax(isa, &x, &mut q).unwrap();
                let mut s = Sparse::default();
                s.dense(&q);
                tokens.push((s, g / 127.0));
            }
            let columns: Vec<u32> = (0..d_in as u32).collect();
            let values: Vec<i16> = (0..d_in)
                .flat_map(|j| tokens.iter().map(move |(s, _)| i16::from(s.values[j])))
                .collect();
            let scales: Vec<f32> = tokens.iter().map(|(_, g)| *g).collect();
            let label = format!("{name:8} {d_in}x{d_out}");
            let one = |m: &PackedMatrix, y: &mut [f32]| {
                for ((s, g), y) in tokens.iter().zip(y.chunks_exact_mut(d_out)) {
                    gather_matvec(isa, &m.view(), Input::I8 { x: s, scale: *g }, y);
                }
            };
            let batch = BatchInput::Int {
                indices: &columns,
                values: &values,
                scales: &scales,
            };
            let batched =
                |m: &PackedMatrix, y: &mut [f32]| gather_matvec_batch(isa, &m.view(), batch, y);
            compare(&label, &mats, b, d_out, one, batched);
        }
        if int8_only {
            return;
        }
        for format in [Format::F16, Format::F32] {
            let b = b.min(batch_limit(isa, format));
            for (name, d_in, d_out) in common::SMOLLM2_SHAPES {
                let w: Vec<f32> = (0..d_in * d_out).map(|_| rnd()).collect();
                let pack = || match format {
                    Format::F16 => PackedMatrix::f16_from_f32(&w, d_out, d_in),
                    _ => PackedMatrix::f32_from_f32(&w, d_out, d_in),
                };
                let bytes = d_in * d_out * format.bits_per_weight() / 8;
                let copies = if warm { 1 } else { (192 << 20) / bytes + 1 };
                let mats: Vec<PackedMatrix> = (0..copies).map(|_| pack()).collect();
                let tokens: Vec<Sparse<f32>> = (0..b)
                    .map(|_| {
                        let mut s = Sparse::default();
                        s.dense(&(0..d_in).map(|_| rnd()).collect::<Vec<f32>>());
                        s
                    })
                    .collect();
                let columns: Vec<u32> = (0..d_in as u32).collect();
                let values: Vec<f32> = (0..d_in)
                    .flat_map(|j| tokens.iter().map(move |s| s.values[j]))
                    .collect();
                let label = format!("{} {name:8} {d_in}x{d_out}", format.name());
                let one = |m: &PackedMatrix, y: &mut [f32]| {
                    for (s, y) in tokens.iter().zip(y.chunks_exact_mut(d_out)) {
                        gather_matvec(isa, &m.view(), Input::F32(s), y);
                    }
                };
                let batch = BatchInput::Float {
                    indices: &columns,
                    values: &values,
                    batch: b,
                };
                let batched =
                    |m: &PackedMatrix, y: &mut [f32]| gather_matvec_batch(isa, &m.view(), batch, y);
                compare(&label, &mats, b, d_out, one, batched);
            }
        }
    });
}

/// Times b tokens' products over every matrix one at a time against the batched product,
/// interleaved for 9 rounds, and prints microseconds per token-product and the speedup.
fn compare(
    label: &str,
    mats: &[PackedMatrix],
    b: usize,
    d_out: usize,
    one: impl Fn(&PackedMatrix, &mut [f32]),
    batched: impl Fn(&PackedMatrix, &mut [f32]),
) {
    let per_token = |f: &dyn Fn(&PackedMatrix, &mut [f32]), y: &mut [f32]| {
        // At least 100 products (a warm run's one matrix, again and again).
        let n = mats.len().max(100);
        let t = Instant::now();
        for m in mats.iter().cycle().take(n) {
            f(m, y);
        }
        t.elapsed().as_secs_f64() / (n * b) as f64 * 1e6
    };
    let (mut y1, mut y2) = (vec![0f32; b * d_out], vec![0f32; b * d_out]);
    let (ta, tb, r) = common::interleaved(
        9,
        || per_token(&one, &mut y1),
        || per_token(&batched, &mut y2),
    );
    println!(
        "{label}: one at a time {ta:.1} us, batch of {b} {tb:.1} us per token, speedup {r:.2}"
    );
}
