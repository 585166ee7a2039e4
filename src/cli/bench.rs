//! `qsparse bench`: prompt-evaluation and decode speed of a model at a sparsity, as medians of
//! several runs after a warm-up, with the weight bytes each decoded token reads.

use anyhow::{bail, Result};
use serde_json::json;

use super::common::ModelArgs;
use crate::measure::speed::{median, time_decode};
use crate::model::profile::Profile;

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
    /// Print one JSON object: decode_tok_s, prefill_tok_s, weight_bytes_per_token, sparsity, threads, isa (the kernels' instruction set).
    #[arg(long)]
    json: bool,
    /// Also time each phase of the forward pass (matvecs, selection, attention, ...) and show
    /// where a token's time goes.
    #[arg(long)]
    profile: bool,
}

const SAMPLE_TEXT: &str = include_str!("../../data/english.txt");

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
    super::common::check_kv_cache(&model, ctx)?;
    let mut state = args.model.run_state(&model, ctx);
    if args.profile {
        state.enable_profile();
    }

    let (mut prefill, mut decode, mut bytes) = (Vec::new(), Vec::new(), 0u64);
    for run in 0..=args.runs {
        let r = time_decode(&model, &mut state, &prompt, args.gen_tokens, sparsity)?;
        if run > 0 {
            prefill.push(r.prefill_tok_s);
            decode.push(r.decode_tok_s);
            bytes = r.traffic.total_bytes();
        }
    }
    let (prefill_tok_s, decode_tok_s) = (median(prefill), median(decode));
    let threads = rayon::current_num_threads();
    let isa = state.isa();
    let rows = |p: &Profile| {
        p.breakdown()
            .into_iter()
            .map(|(phase, t, share)| {
                json!({
                    "phase": phase.name(),
                    "us_per_token": t.as_secs_f64() * 1e6 / p.tokens.max(1) as f64,
                    "share": share,
                })
            })
            .collect::<Vec<_>>()
    };
    let profile = state.profile.as_ref().map(rows);
    let prompt_profile = state
        .prompt_profile
        .as_ref()
        .filter(|p| p.tokens > 0)
        .map(rows);
    if args.json {
        let out = json!({
            "decode_tok_s": decode_tok_s,
            "prefill_tok_s": prefill_tok_s,
            "weight_bytes_per_token": bytes,
            "weight_gb_s": bytes as f64 * decode_tok_s / 1e9,
            "sparsity": args.model.ratio(),
            "sparsity_profile": args.model.profile_source(),
            "weights": model.weights.format.name(),
            "threads": threads,
            "isa": isa.name(),
            "prompt_tokens": args.prompt_tokens,
            "gen_tokens": args.gen_tokens,
            "runs": args.runs,
            "profile": profile,
            "prompt_profile": prompt_profile,
        });
        outln!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        outln!(
            "decode {decode_tok_s:.1} tok/s, prefill {prefill_tok_s:.1} tok/s, {:.1} MB of weights per token ({:.1} GB/s), S={}, {}, {threads} threads, {isa}",
            bytes as f64 / 1e6,
            bytes as f64 * decode_tok_s / 1e9,
            args.model.ratio(),
            model.weights.format.name(),
        );
        let sections = [
            (
                &profile,
                "per single-token pass (decode steps, each prompt's last token):",
            ),
            (
                &prompt_profile,
                "per prompt token in batched passes (the prompt's other tokens):",
            ),
        ];
        for (rows, title) in sections {
            let Some(rows) = rows else { continue };
            outln!("\n{title}");
            for r in rows {
                outln!(
                    "  {:<28} {:>8.1} us {:>5.1}%",
                    r["phase"].as_str().unwrap_or_default(),
                    r["us_per_token"].as_f64().unwrap_or_default(),
                    100.0 * r["share"].as_f64().unwrap_or_default()
                );
            }
        }
    }
    Ok(())
}
