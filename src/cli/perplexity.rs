//! `qsparse perplexity`: how well the model predicts a text, at a given sparsity. The text is
//! tokenized once and cut into non-overlapping windows of `--ctx` tokens, each evaluated from an
//! empty KV cache; every one of a window's ctx−1 next-token predictions is scored (log-softmax in
//! f64).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use super::common::ModelArgs;
use crate::eval::mean_nll;
use crate::model::WeightFormat;

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
    let bytes = std::fs::read(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!(
            "{} is not valid UTF-8 (byte {})",
            args.file.display(),
            e.utf8_error().valid_up_to()
        )
    })?;
    let (model, tokenizer) = args.model.load()?;
    if args.ctx > model.config.context_length {
        bail!(
            "--ctx {} exceeds the model's context length {}",
            args.ctx,
            model.config.context_length
        );
    }
    let tokens = tokenizer.encode(&text)?;
    let windows = (tokens.len() / args.ctx).min(args.chunks.unwrap_or(usize::MAX));
    if windows == 0 {
        bail!(
            "the text has {} tokens, fewer than one window of --ctx {}",
            tokens.len(),
            args.ctx
        );
    }
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
            "sparsity": args.model.sparsity,
            "weights": WeightFormat::from(args.model.weights).name(),
            "tokens_per_s": (windows * args.ctx) as f64 / secs,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "perplexity {:.4} (mean NLL {:.5}) over {n} predictions in {windows} windows of {} tokens",
            nll.exp(),
            nll,
            args.ctx
        );
        eprintln!("{:.1} tokens/s", (windows * args.ctx) as f64 / secs);
    }
    Ok(())
}
