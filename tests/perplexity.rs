//! Perplexity on data/english.txt (ctx 256): the f32 path against llama.cpp (fixture made by
//! scripts/make_fixtures.py), and int8 weights against f32. A window of 256 tokens takes the f32
//! path ~13 s here, so these use the first windows only; the full-text figures are in the README.

mod common;

use qsparse::eval::mean_nll;
use qsparse::model::{self, RunState, Sparsity, WeightFormat};

const CTX: usize = 256;

fn window_nlls(key: &str) -> Vec<f64> {
    let fx = common::fixture("smollm2_llamacpp.json");
    assert_eq!(fx[key]["ctx"], CTX);
    fx[key]["window_mean_nll"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect()
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

#[test]
fn f32_perplexity_matches_llama_cpp() {
    let nll = ours(WeightFormat::F32, 1);
    let on_f32 = window_nlls("perplexity_f32")[0];
    let on_q4_1 = window_nlls("perplexity")[0];
    eprintln!(
        "window 0 ppl: ours {:.4}, llama.cpp F32 {:.4}, llama.cpp Q4_1 {:.4}",
        nll.exp(),
        on_f32.exp(),
        on_q4_1.exp()
    );
    // Same arithmetic up to f32 rounding order (0.09% in perplexity observed on this window,
    // 0.01% over the whole text): 0.3%.
    assert!(
        (nll - on_f32).abs() < 1.003f64.ln(),
        "vs llama.cpp on F32 weights: {nll} vs {on_f32}"
    );
    // llama.cpp's 8-bit activations on the Q4_1 file: within 1% in perplexity.
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
