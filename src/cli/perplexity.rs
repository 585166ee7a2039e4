//! `qsparse perplexity`: how well the model predicts a text, at a given sparsity. The text is
//! tokenized once and cut into non-overlapping windows of `--ctx` tokens, each evaluated from an
//! empty KV cache; every one of a window's ctx−1 next-token predictions is scored (log-softmax in
//! f64).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use super::common::{read_text, ModelArgs};
use crate::measure::eval::mean_nll;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// The text file to score (UTF-8).
    #[arg(short = 'f', long)]
    file: PathBuf,
    /// Window length in tokens.
    #[arg(long, default_value_t = 256)]
    ctx: usize,
    /// Score only the first N windows.
    #[arg(long)]
    chunks: Option<usize>,
    /// Print one JSON object: {"ppl", "mean_nll", "n_predictions", ...}.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<()> {
    if args.ctx < 2 {
        bail!("--ctx must be at least 2 tokens");
    }
    let text = read_text(&args.file)?;
    let (model, tokenizer) = args.model.load()?;
    if args.ctx > model.config.context_length {
        bail!(
            "--ctx {} exceeds the model's context length {}",
            args.ctx,
            model.config.context_length
        );
    }
    let tokens = tokenizer.encode(&text)?;
    let windows = crate::measure::eval::window_count(tokens.len(), args.ctx, args.chunks);
    if windows == 0 {
        bail!(
            "the text has {} tokens, fewer than one window of --ctx {}",
            tokens.len(),
            args.ctx
        );
    }
    super::common::check_kv_cache(&model, args.ctx)?;
    let bar = std::io::stderr().is_terminal().then(|| {
        let b = ProgressBar::new(windows as u64);
        b.set_style(
            ProgressStyle::with_template("perplexity [{bar:30}] {pos}/{len} windows {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b
    });
    let t = Instant::now();
    let (nll, n) = mean_nll(
        &model,
        args.model.run_state(&model, args.ctx),
        &tokens,
        args.ctx,
        args.chunks,
        args.model.sparsity(),
        &mut |done, _| {
            if let Some(b) = &bar {
                b.set_position(done as u64);
            }
        },
    )?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let secs = t.elapsed().as_secs_f64();
    if args.json {
        let out = json!({
            "ppl": nll.exp(),
            "mean_nll": nll,
            "n_predictions": n,
            "windows": windows,
            "ctx": args.ctx,
            "sparsity": args.model.ratio(),
            "sparsity_profile": args.model.profile_source(),
            "weights": model.weights.format.name(),
            "tokens_per_s": (windows * args.ctx) as f64 / secs,
        });
        outln!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        outln!(
            "perplexity {:.4} (mean NLL {:.5}) over {n} predictions in {windows} windows of {} tokens",
            nll.exp(),
            nll,
            args.ctx
        );
        eprintln!("{:.1} tokens/s", (windows * args.ctx) as f64 / secs);
    }
    Ok(())
}
