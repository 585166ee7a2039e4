//! The library from Rust: load a model and generate with Q-Sparse.
//!
//! `cargo run --release --example generate -- "What is the capital of France?" 0.25` (a user
//! message, sparsity S); the default model must have been pulled (`cargo run --release -- pull`).

use std::io::Write;

use qsparse::model::{self, RunState, Sparsity, WeightFormat};
use qsparse::runtime::conversation::Conversation;
use qsparse::runtime::session::{GenerateParams, Session};
use qsparse::runtime::template::Message;
use qsparse::sample::SamplerConfig;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let message = args
        .next()
        .unwrap_or_else(|| "Tell me a story.".to_string());
    let sparsity: f32 = args.next().map_or(Ok(0.25), |s| s.parse())?;

    let path = qsparse::hub::resolve("smollm2-135m-instruct", &qsparse::cli::models_dir())?;
    let (model, tokenizer) = model::load(&path, WeightFormat::Int8, &|_, _| {})?;
    let state = RunState::new(&model.config, WeightFormat::Int8, 512);
    let mut session = Session::new(&model, &tokenizer, state);
    let params = GenerateParams {
        max_tokens: 48,
        sampler: SamplerConfig::greedy(),
        sparsity: Sparsity::uniform(sparsity),
        stop: Vec::new(),
        logprobs: None,
    };
    let template = Conversation::template_for(&model, &tokenizer)?;
    let text = template.render(&[Message::new("user", &message)], true)?;
    let prompt = tokenizer.encode(&text)?;
    let g = session.generate(&prompt, &params, &mut |text| {
        print!("{text}");
        std::io::stdout().flush().is_ok()
    })?;
    let mb = g.weight_bytes_per_token as f64 / 1e6;
    let (n, tok_s) = (g.tokens.len(), g.decode_tok_s());
    println!("\n[{n} tokens at {tok_s:.0} tok/s, {mb:.1} MB of weights a token]");
    Ok(())
}
