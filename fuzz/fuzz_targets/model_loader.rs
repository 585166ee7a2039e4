//! Fuzz the model loader on top of the reader: any byte string either fails to load with an
//! error, or loads into a model (config, weights, tokenizer from its metadata) that tokenizes a
//! text and runs a dense and a sparse step without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qsparse::gguf::GgufFile;
use qsparse::model::{load_file, LoadOptions, RunState, Sparsity, WeightFormat};

fuzz_target!(|data: &[u8]| {
    let Ok(file) = GgufFile::from_bytes(data.to_vec()) else {
        return;
    };
    let options = LoadOptions {
        huge_pages: false,
        ..LoadOptions::new(WeightFormat::Int8)
    };
    let Ok((model, tokenizer)) = load_file(file, &options, &|_, _| {}) else {
        return;
    };
    let _ = tokenizer.encode("Hello, world! 123");
    let mut state = RunState::new(&model.config, model.weights.format, 4);
    let _ = model.forward(&mut state, 0, 0, Sparsity::dense());
    let _ = model.forward(&mut state, 0, 1, Sparsity::uniform(0.5));
});
