//! Opening a model: mapping the file and validating metadata + tensor table, without reading
//! tensor bytes. Target: well under 100 ms for the 98 MB SmolLM2 file.

use criterion::{criterion_group, criterion_main, Criterion};
use qsparse::gguf::GgufFile;

fn open_real_model(c: &mut Criterion) {
    let path = match qsparse::hub::resolve("smollm2-135m-instruct", &qsparse::cli::models_dir()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("skipping gguf_open: {e}");
            return;
        }
    };
    c.bench_function("gguf_open/smollm2-135m-instruct", |b| {
        b.iter(|| {
            let f = GgufFile::open(&path).expect("model opens");
            std::hint::black_box(f.tensors().len())
        })
    });
    c.bench_function("gguf_open+vocab_walk/smollm2-135m-instruct", |b| {
        b.iter(|| {
            let f = GgufFile::open(&path).expect("model opens");
            let tokens = f.get_array("tokenizer.ggml.tokens").expect("vocab");
            let bytes: usize = tokens.strings().expect("strings").map(str::len).sum();
            std::hint::black_box(bytes)
        })
    });
}

criterion_group!(benches, open_real_model);
criterion_main!(benches);
