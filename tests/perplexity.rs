//! Perplexity on data/english.txt (ctx 256): the f32 path against llama.cpp (fixture made by
//! scripts/make_fixtures.py), and int8 weights against f32, over the whole text (7 windows of 256
//! tokens, evaluated 8 positions at a time).

mod common;

use qsparse::measure::eval::mean_nll;
use qsparse::model::{self, RunState, Sparsity, WeightFormat};

const CTX: usize = 256;

/// llama.cpp's mean NLL over the whole text (7 windows of 256, 1785 predictions).
fn llama_cpp_nll(key: &str) -> f64 {
    let fx = common::fixture("smollm2_llamacpp.json");
    assert_eq!(fx[key]["ctx"], CTX);
    assert_eq!(fx[key]["n_predictions"], 7 * (CTX - 1));
    fx[key]["mean_nll"].as_f64().unwrap()
}

fn ours(format: WeightFormat, windows: usize) -> f64 {
    let (model, tokenizer) = model::load(&common::smollm2(), format, &|_, _| {}).unwrap();
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/data/english.txt")).unwrap();
    let tokens = tokenizer.encode(&text).unwrap();
    let state = RunState::new(&model.config, format, CTX);
    let (nll, n) = mean_nll(
        &model,
        state,
        &tokens,
        CTX,
        Some(windows),
        Sparsity::dense(),
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(n, windows * (CTX - 1));
    nll
}

/// The criterion, on the whole text: llama.cpp on the F32 copy computes what the f32
/// path does up to rounding order (0.01% in perplexity observed): 0.3%; on the Q4_1 file it
/// quantizes activations to 8 bits for its dot products: within 1% (0.68% against the fixture,
/// made on the AVX2 machine; 0.18% against llama.cpp's AVX-512 build on Zen4, whose first window
/// alone differs by 1.08%, why the check is on the whole text).
#[test]
fn f32_perplexity_matches_llama_cpp() {
    let nll = ours(WeightFormat::F32, 7);
    let (on_f32, on_q4_1) = (llama_cpp_nll("perplexity_f32"), llama_cpp_nll("perplexity"));
    eprintln!(
        "whole text ppl: ours {:.4}, llama.cpp F32 {:.4}, llama.cpp Q4_1 {:.4}",
        nll.exp(),
        on_f32.exp(),
        on_q4_1.exp()
    );
    assert!(
        (nll - on_f32).abs() < 1.003f64.ln(),
        "vs llama.cpp on F32 weights: {nll} vs {on_f32}"
    );
    assert!(
        (nll - on_q4_1).abs() < 1.01f64.ln(),
        "vs llama.cpp on Q4_1: {nll} vs {on_q4_1}"
    );
}

/// Over the whole text (7 windows, 1785 predictions): int8 quantization's effect on perplexity
/// moves by ~0.5% with ulp-level changes elsewhere (a different rounding realization) on two
/// windows, so the bound is checked where it is stable.
#[test]
fn int8_perplexity_is_within_2_percent_of_f32() {
    let f32_nll = ours(WeightFormat::F32, 7);
    let int8_nll = ours(WeightFormat::Int8, 7);
    eprintln!(
        "whole text ppl: f32 {:.4}, int8 {:.4}",
        f32_nll.exp(),
        int8_nll.exp()
    );
    assert!(
        (int8_nll - f32_nll).abs() < 1.02f64.ln(),
        "int8 {int8_nll} vs f32 {f32_nll}"
    );
}
