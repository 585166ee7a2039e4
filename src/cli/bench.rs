//! `qsparse bench`: prompt-evaluation and decode speed of a model at a sparsity, as medians of
//! several runs after a warm-up, with the weight bytes each decoded token reads.

use std::time::Instant;

use anyhow::{bail, Result};
use serde_json::json;

use super::common::ModelArgs;
use crate::model::WeightFormat;
use crate::sample::argmax;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Tokens of prompt evaluated before decoding (taken from data/english.txt's tokens,
    /// repeated as needed).
    #[arg(long, default_value_t = 128)]
    prompt_tokens: usize,
    /// Tokens decoded per run (greedy).
    #[arg(long, default_value_t = 128)]
    gen_tokens: usize,
    /// Timed runs (the median is reported), after one warm-up run.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Print one JSON object: decode_tok_s, prefill_tok_s, weight_bytes_per_token, sparsity, threads.
    #[arg(long)]
    json: bool,
}

const SAMPLE_TEXT: &str = include_str!("../../data/english.txt");

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn run(args: Args) -> Result<()> {
    if args.prompt_tokens == 0 || args.gen_tokens == 0 || args.runs == 0 {
        bail!("--prompt-tokens, --gen-tokens and --runs must be at least 1");
    }
    let (model, tokenizer) = args.model.load()?;
    let ctx = args.prompt_tokens + args.gen_tokens;
    if ctx > model.config.context_length {
        bail!(
            "{ctx} tokens exceed the model's context length {}",
            model.config.context_length
        );
    }
    let text_tokens = tokenizer.encode(SAMPLE_TEXT)?;
    let prompt: Vec<u32> = text_tokens
        .iter()
        .copied()
        .cycle()
        .take(args.prompt_tokens)
        .collect();
    let sparsity = args.model.sparsity();
    let mut state = args.model.run_state(&model, ctx);

    let (mut prefill, mut decode, mut bytes) = (Vec::new(), Vec::new(), 0u64);
    for run in 0..=args.runs {
        let t = Instant::now();
        for (pos, &tok) in prompt.iter().enumerate() {
            model.forward(&mut state, tok, pos, sparsity)?;
        }
        let p = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let mut run_bytes = 0;
        for i in 0..args.gen_tokens {
            let next = argmax(&state.logits);
            model.forward(&mut state, next, prompt.len() + i, sparsity)?;
            run_bytes += state.traffic.total_bytes();
        }
        let d = t.elapsed().as_secs_f64();
        if run > 0 {
            prefill.push(args.prompt_tokens as f64 / p);
            decode.push(args.gen_tokens as f64 / d);
            bytes = run_bytes / args.gen_tokens as u64;
        }
    }
    let (prefill_tok_s, decode_tok_s) = (median(prefill), median(decode));
    let threads = rayon::current_num_threads();
    if args.json {
        let out = json!({
            "decode_tok_s": decode_tok_s,
            "prefill_tok_s": prefill_tok_s,
            "weight_bytes_per_token": bytes,
            "weight_gb_s": bytes as f64 * decode_tok_s / 1e9,
            "sparsity": args.model.sparsity,
            "weights": WeightFormat::from(args.model.weights).name(),
            "threads": threads,
            "prompt_tokens": args.prompt_tokens,
            "gen_tokens": args.gen_tokens,
            "runs": args.runs,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "decode {decode_tok_s:.1} tok/s, prefill {prefill_tok_s:.1} tok/s, {:.1} MB of weights per token ({:.1} GB/s), S={}, {}, {threads} threads",
            bytes as f64 / 1e6,
            bytes as f64 * decode_tok_s / 1e9,
            args.model.sparsity,
            WeightFormat::from(args.model.weights).name(),
        );
    }
    Ok(())
}
