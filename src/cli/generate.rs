//! `qsparse generate`: text from a prompt. stdout carries only the generated text, streamed;
//! timings and diagnostics go to stderr (or everything into one JSON object with `--json`).

use std::io::Write;
use std::time::Instant;

use anyhow::{bail, Result};
use serde_json::json;

use super::common::{ModelArgs, SamplingArgs};
use crate::chat::{ChatTemplate, Message};
use crate::sample::{log_prob, Sampler};
use crate::tokenizer::StreamDecoder;

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
    let ctx = args.ctx.unwrap_or(model.config.context_length.min(4096));
    if args.prompt.is_empty() {
        bail!("the prompt is empty");
    }
    let text = if args.chat {
        let bos = tokenizer
            .bos()
            .map(|t| tokenizer.piece(t))
            .unwrap_or_default();
        let eos = tokenizer
            .eos()
            .map(|t| tokenizer.piece(t))
            .unwrap_or_default();
        let template = ChatTemplate::from_gguf(&model.file, &bos, &eos)?;
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
    let sparsity = args.model.sparsity();
    let mut state = args.model.run_state(&model, ctx);
    let mut sampler = Sampler::new(args.sampling.config());

    let t_prompt = Instant::now();
    model.feed_prompt(&mut state, &prompt, 0, sparsity)?;
    let prompt_s = t_prompt.elapsed().as_secs_f64();

    let mut history = prompt.clone();
    let mut generated = Vec::new();
    let mut steps = Vec::new();
    let mut stream = StreamDecoder::new();
    let mut stdout = std::io::stdout().lock();
    let mut bytes_read = 0u64;
    let t_gen = Instant::now();
    for i in 0..args.n_predict {
        if args.logprobs > 0 {
            steps.push(top_candidates(&state.logits, args.logprobs, &tokenizer));
        }
        let next = sampler.sample(&state.logits, &history);
        history.push(next);
        generated.push(next);
        if tokenizer.is_end(next) {
            break;
        }
        if !args.json {
            stdout.write_all(stream.push(tokenizer.token_bytes(next)).as_bytes())?;
            stdout.flush()?;
        }
        if i + 1 < args.n_predict {
            model.forward(&mut state, next, prompt.len() + i, sparsity)?;
            bytes_read += state.traffic.total_bytes();
        }
    }
    let gen_s = t_gen.elapsed().as_secs_f64();
    let decode_steps = generated.len().saturating_sub(1).max(1);
    let text = tokenizer.decode(
        generated
            .iter()
            .copied()
            .filter(|&t| !tokenizer.is_end(t))
            .collect::<Vec<_>>()
            .as_slice(),
    );

    if args.json {
        let out = json!({
            "prompt_tokens": prompt,
            "generated_tokens": generated,
            "text": text,
            "sparsity": args.model.sparsity,
            "weights": model.weights.format.name(),
            "timings": {
                "load_s": load_s,
                "prompt_s": prompt_s,
                "prompt_tok_s": prompt.len() as f64 / prompt_s,
                "generate_s": gen_s,
                "decode_tok_s": decode_steps as f64 / gen_s,
            },
            "weight_bytes_per_token": bytes_read as f64 / decode_steps as f64,
            "logprobs": if args.logprobs > 0 { serde_json::Value::from(steps) } else { serde_json::Value::Null },
        });
        outln!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        stdout.write_all(stream.finish().as_bytes())?;
        writeln!(stdout)?;
        eprintln!(
            "prompt: {} tokens, {:.1} tok/s | generated: {} tokens, {:.1} tok/s | weights read: {:.1} MB/token (S={}, {})",
            prompt.len(),
            prompt.len() as f64 / prompt_s,
            generated.len(),
            decode_steps as f64 / gen_s,
            bytes_read as f64 / decode_steps as f64 / 1e6,
            args.model.sparsity,
            model.weights.format.name(),
        );
    }
    Ok(())
}

/// The `n` most likely next tokens with their logits and log-probabilities.
fn top_candidates(
    logits: &[f32],
    n: usize,
    tokenizer: &crate::tokenizer::Tokenizer,
) -> serde_json::Value {
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    let n = n.min(idx.len());
    idx.select_nth_unstable_by(n - 1, |&a, &b| logits[b].total_cmp(&logits[a]));
    idx.truncate(n);
    idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    serde_json::Value::from(
        idx.iter()
            .map(|&i| {
                json!({"id": i, "piece": tokenizer.piece(i as u32), "logit": logits[i], "logprob": log_prob(logits, i)})
            })
            .collect::<Vec<_>>(),
    )
}
