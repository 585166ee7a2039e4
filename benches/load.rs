//! Time to first logits: loading SmolLM2 and running one token, from the Q4_1 file (every linear
//! layer converted to int8 at load) and from a packed copy (`qsparse pack`: matrices read in
//! place). Both are timed in one run, interleaved by criterion's sample loop.

use criterion::{criterion_group, criterion_main, Criterion};
use qsparse::model::{self, pack, RunState, Sparsity, WeightFormat};

/// Load `path` as int8 and compute the logits of one token.
fn first_logits(path: &std::path::Path) -> f32 {
    let (m, _) = model::load(path, WeightFormat::Int8, &|_, _| {}).expect("model loads");
    let mut state = RunState::new(&m.config, WeightFormat::Int8, 16);
    m.forward(&mut state, 1, 0, Sparsity::dense())
        .expect("forward");
    state.logits()[0]
}

fn load(c: &mut Criterion) {
    let source = match qsparse::hub::resolve("smollm2-135m-instruct", &qsparse::cli::models_dir()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("skipping load: {e}");
            return;
        }
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let packed = dir.path().join("smollm2.int8.gguf");
    let (m, _) = model::load(&source, WeightFormat::Int8, &|_, _| {}).expect("model loads");
    pack::write(&m.file, &m.weights, &packed, &|_, _| {}).expect("pack");
    drop(m);
    let mut group = c.benchmark_group("load_to_first_logits/smollm2-135m-instruct");
    group.sample_size(10);
    group.bench_function("q4_1_converted_to_int8", |b| {
        b.iter(|| first_logits(&source))
    });
    group.bench_function("packed_int8_in_place", |b| b.iter(|| first_logits(&packed)));
    group.finish();
}

criterion_group!(benches, load);
criterion_main!(benches);
