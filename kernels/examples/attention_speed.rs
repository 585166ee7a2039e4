//! Time of one key/value head's attention (SmolLM2 shape: head_dim 64, 3 query heads per
//! key/value head) at a few context lengths, per ISA, with the cache hot: over the half-precision
//! cache and over a widened (f32) copy of it.
//!
//!     cargo run --release -p qsparse-kernels --example attention_speed

use std::time::Instant;

use qsparse_kernels::attention::{attend, KvHead};
use qsparse_kernels::Isa;

fn main() {
    let (hd, group, stride) = (64, 3, 192);
    for positions in [64usize, 380, 2000] {
        let keys: Vec<half::f16> = (0..positions * stride)
            .map(|i| half::f16::from_f32(((i * 7919) % 1000) as f32 / 1000.0 - 0.5))
            .collect();
        let values = keys.clone();
        let queries: Vec<f32> = (0..group * hd)
            .map(|i| (i % 13) as f32 / 13.0 - 0.5)
            .collect();
        let mut scores = vec![0f32; group * positions];
        let mut out = vec![0f32; group * hd];
        let wide: Vec<f32> = keys.iter().map(|h| h.to_f32()).collect();
        for isa in Isa::available() {
            let h = KvHead {
                queries: &queries,
                keys: &keys,
                values: &values,
                stride,
                offset: 64,
                head_dim: hd,
                scale: 0.125,
            };
            let n = 2000;
            let flops = 2.0 * 2.0 * (group * positions * hd) as f64;
            let t = Instant::now();
            for _ in 0..n {
                attend(isa, h, &mut scores, positions, &mut out);
            }
            let us = t.elapsed().as_secs_f64() * 1e6 / n as f64;
            // The same cache widened to f32, as a batched pass holds it.
            let h = KvHead {
                queries: &queries,
                keys: &wide,
                values: &wide,
                stride,
                offset: 64,
                head_dim: hd,
                scale: 0.125,
            };
            let t = Instant::now();
            for _ in 0..n {
                attend(isa, h, &mut scores, positions, &mut out);
            }
            let wide_us = t.elapsed().as_secs_f64() * 1e6 / n as f64;
            println!(
                "positions {positions:>5} {isa:<7} f16 {us:>8.2} us  {:.1} GFLOP/s   f32 {wide_us:>8.2} us  {:.1} GFLOP/s",
                flops / us / 1e3,
                flops / wide_us / 1e3
            );
        }
    }
}
