//! Choosing a token from SmolLM2-sized logits (49152): the CLI's default sampling (repetition
//! penalty over 64 tokens, top-k 40, top-p 0.95, min-p 0.05, temperature 0.8) and greedy. Every
//! sampled token pays this on top of its forward pass (~6-9 ms here): sorting every pair took
//! 164-169 µs (greedy 16, copying the logits first), the group-maximum bar 28-32 (greedy 10).

use criterion::{criterion_group, criterion_main, Criterion};
use qsparse::sample::{Sampler, SamplerConfig};

fn sampling(c: &mut Criterion) {
    let mut s = 1u64;
    let logits: Vec<f32> = (0..49152)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 20.0 - 10.0
        })
        .collect();
    let history: Vec<u32> = (0..64).map(|i| i * 700).collect();
    for (name, config) in [
        ("default", SamplerConfig::default()),
        ("greedy", SamplerConfig::greedy()),
    ] {
        let mut sampler = Sampler::new(config);
        c.bench_function(&format!("sample/{name}/49152"), |b| {
            b.iter(|| sampler.sample(std::hint::black_box(&logits), &history))
        });
    }
}

criterion_group!(benches, sampling);
criterion_main!(benches);
