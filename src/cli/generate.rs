//! `qsparse generate`: text from a prompt. stdout carries only the generated text, streamed;
//! timings and diagnostics go to stderr (or everything into one JSON object with `--json`).

use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::json;

use super::common::{context_length, read_text, ModelArgs, SamplingArgs};
use crate::runtime::conversation::Conversation;
use crate::runtime::session::{GenerateParams, Session};
use crate::runtime::template::Message;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// The prompt; `-` reads it from standard input.
    #[arg(short, long, required_unless_present = "file", conflicts_with = "file")]
    prompt: Option<String>,
    /// Read the prompt from this file.
    #[arg(short, long)]
    file: Option<PathBuf>,
    /// How many tokens to generate at most (stops earlier at end-of-sequence); -1: until the end
    /// of the sequence or of the context.
    #[arg(short = 'n', long, default_value_t = 64, allow_negative_numbers = true, value_parser = parse_n_predict)]
    n_predict: i64,
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
    #[arg(long, requires = "json")]
    logprobs: Option<usize>,
    /// Wrap the prompt as one user message in the model's chat template (ChatML if it has none).
    #[arg(long)]
    chat: bool,
    /// A system message before the prompt (implies --chat).
    #[arg(long)]
    system: Option<String>,
}

/// `-n`: a count of at least 1, or -1 for no limit but the context.
fn parse_n_predict(s: &str) -> Result<i64, String> {
    match s.trim().parse::<i64>() {
        Ok(n) if n == -1 || n >= 1 => Ok(n),
        _ => Err(format!(
            "`{s}` is not a token count (1 or more, or -1 for no limit)"
        )),
    }
}

impl Args {
    /// The prompt's text: `-p`, standard input for `-p -`, or the `-f` file.
    fn prompt_text(&self) -> Result<String> {
        match (&self.prompt, &self.file) {
            (Some(p), _) if p == "-" => {
                let mut text = String::new();
                std::io::stdin()
                    .read_to_string(&mut text)
                    .context("cannot read the prompt from standard input")?;
                Ok(text)
            }
            (Some(p), _) => Ok(p.clone()),
            (None, Some(path)) => read_text(path),
            (None, None) => bail!("give a prompt with -p TEXT, -p - (standard input) or -f FILE"),
        }
    }
}

pub fn run(args: Args) -> Result<()> {
    let t_load = Instant::now();
    let (model, tokenizer) = args.model.load()?;
    let load_s = t_load.elapsed().as_secs_f64();
    let ctx = context_length(args.ctx, &model)?;
    let user = args.prompt_text()?;
    if user.is_empty() {
        bail!("the prompt is empty");
    }
    let text = if args.chat || args.system.is_some() {
        let template = Conversation::template_for(&model, &tokenizer)?;
        let mut messages = Vec::new();
        if let Some(system) = &args.system {
            messages.push(Message::new("system", system));
        }
        messages.push(Message::new("user", &user));
        template.render(&messages, true)?
    } else {
        user
    };
    let prompt = tokenizer.encode(&text)?;
    if prompt.is_empty() {
        bail!("the prompt encodes to no tokens");
    }
    // -1: as many as the context holds after the prompt.
    let max_tokens = usize::try_from(args.n_predict).unwrap_or(ctx.saturating_sub(prompt.len()));
    if max_tokens == 0 || prompt.len() + max_tokens > ctx {
        bail!(
            "the prompt ({} tokens) plus {max_tokens} generated tokens exceed the context of {ctx} tokens",
            prompt.len(),
        );
    }
    let sampler = args.sampling.config();
    let params = GenerateParams {
        max_tokens,
        sampler,
        sparsity: args.model.sparsity(),
        stop: args.stop.clone(),
        logprobs: args.logprobs,
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
            "seed": sampler.seed,
            "sparsity": args.model.ratio(),
            "sparsity_profile": args.model.profile_source(),
            "weights": weights,
            "timings": {
                "load_s": load_s,
                "prompt_s": g.prompt_s,
                "prompt_tok_s": g.prompt_tok_s(),
                "generate_s": g.generate_s,
                "decode_tok_s": g.decode_tok_s(),
            },
            "weight_bytes_per_token": g.weight_bytes_per_token,
            "logprobs": if params.logprobs.is_some() { serde_json::Value::from(steps) } else { serde_json::Value::Null },
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
            args.model.ratio(),
        );
    }
    Ok(())
}
