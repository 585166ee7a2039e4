//! `qsparse generate`: text from a prompt. stdout carries only the generated text, streamed;
//! timings and diagnostics go to stderr (or everything into one JSON object with `--json`).

use std::io::Write;
use std::time::Instant;

use anyhow::{bail, Result};
use serde_json::json;

use super::common::{context_length, ModelArgs, SamplingArgs};
use crate::runtime::conversation::Conversation;
use crate::runtime::session::{GenerateParams, Session};
use crate::runtime::template::Message;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// The prompt.
    #[arg(short, long)]
    prompt: String,
    /// How many tokens to generate at most (stops earlier at end-of-sequence).
    #[arg(short = 'n', long, default_value_t = 64)]
    n_predict: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Context length (prompt + generated tokens); default: the model's, at most 4096.
    #[arg(long)]
    ctx: Option<usize>,
    /// Stop before this text (not printed); repeat the flag for several.
    #[arg(long)]
    stop: Vec<String>,
    /// Print one JSON object (token ids, text, timings) instead of streaming text.
    #[arg(long)]
    json: bool,
    /// With --json: the top N candidates (id, piece, logit, logprob) at each step.
    #[arg(long, default_value_t = 0)]
    logprobs: usize,
    /// Wrap the prompt as one user message in the model's chat template (ChatML if it has none).
    #[arg(long)]
    chat: bool,
}

pub fn run(args: Args) -> Result<()> {
    let t_load = Instant::now();
    let (model, tokenizer) = args.model.load()?;
    let load_s = t_load.elapsed().as_secs_f64();
    let ctx = context_length(args.ctx, &model)?;
    if args.prompt.is_empty() {
        bail!("the prompt is empty");
    }
    let text = if args.chat {
        let template = Conversation::template_for(&model, &tokenizer)?;
        template.render(&[Message::new("user", &args.prompt)], true)?
    } else {
        args.prompt.clone()
    };
    let prompt = tokenizer.encode(&text)?;
    if prompt.is_empty() {
        bail!("the prompt encodes to no tokens");
    }
    if prompt.len() + args.n_predict > ctx {
        bail!(
            "the prompt ({} tokens) plus {} generated tokens exceed the context of {ctx} tokens",
            prompt.len(),
            args.n_predict
        );
    }
    let params = GenerateParams {
        max_tokens: args.n_predict,
        sampler: args.sampling.config(),
        sparsity: args.model.sparsity(),
        stop: args.stop.clone(),
        logprobs: if args.json { args.logprobs } else { 0 },
    };
    let mut session = Session::new(&model, &tokenizer, args.model.run_state(&model, ctx));
    let mut stdout = std::io::stdout().lock();
    let mut write_error = None;
    let generation = session.generate(&prompt, &params, &mut |text| {
        if args.json || text.is_empty() {
            return true;
        }
        let written = stdout
            .write_all(text.as_bytes())
            .and_then(|()| stdout.flush());
        // A closed stdout (`| head`) ends the generation; the error is reported below.
        written.map_err(|e| write_error = Some(e)).is_ok()
    })?;
    if let Some(e) = write_error {
        return Err(e.into());
    }
    let g = &generation;
    let weights = model.weights.format.name();
    if args.json {
        let steps: Vec<serde_json::Value> = g
            .top_logprobs
            .iter()
            .map(|step| {
                step.iter()
                    .map(|c| json!({"id": c.id, "piece": tokenizer.piece(c.id), "logit": c.logit, "logprob": c.logprob}))
                    .collect()
            })
            .collect();
        let out = json!({
            "prompt_tokens": prompt,
            "generated_tokens": g.tokens,
            "text": g.text,
            "finish_reason": g.finish.reason(),
            "sparsity": args.model.sparsity,
            "weights": weights,
            "timings": {
                "load_s": load_s,
                "prompt_s": g.prompt_s,
                "prompt_tok_s": g.prompt_tok_s(),
                "generate_s": g.generate_s,
                "decode_tok_s": g.decode_tok_s(),
            },
            "weight_bytes_per_token": g.weight_bytes_per_token,
            "logprobs": if args.logprobs > 0 { serde_json::Value::from(steps) } else { serde_json::Value::Null },
        });
        outln!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        writeln!(stdout)?;
        eprintln!(
            "prompt: {} tokens, {:.1} tok/s | generated: {} tokens, {:.1} tok/s | weights read: {:.1} MB/token (S={}, {weights})",
            g.prompt_tokens,
            g.prompt_tok_s(),
            g.tokens.len(),
            g.decode_tok_s(),
            g.weight_bytes_per_token as f64 / 1e6,
            args.model.sparsity,
        );
    }
    Ok(())
}
