//! `qsparse serve`: the OpenAI-compatible HTTP API over one loaded model (see `server`).

use std::sync::atomic::Ordering;

use anyhow::{bail, Context, Result};

use super::common::{choose_profile, context_length, parse_sparsity, LoadArgs, SamplingArgs};
use crate::runtime::conversation::Conversation;
use crate::server::{self, Config, Limits, SHUTDOWN};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: LoadArgs,
    /// Address to listen on; loopback by default (use 0.0.0.0 to accept other machines).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port (0 picks a free one; the address is printed on stderr).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Q-Sparse ratio for requests that do not set `"qsparse": {"sparsity": S}`. Default: 0, or
    /// the profile a packed file holds (`pack --sparsity-profile`).
    #[arg(long, value_parser = parse_sparsity)]
    sparsity: Option<f32>,
    /// A calibrated profile (`qsparse calibrate`, made for this model file) for requests that do
    /// not set `"qsparse": {"sparsity": S}` (those run uniform S).
    #[arg(long, conflicts_with = "sparsity")]
    sparsity_profile: Option<std::path::PathBuf>,
    /// Default sampling (a request's temperature, top_p and seed override these).
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Largest `max_tokens` a request may ask for (also the chat default).
    #[arg(long, default_value_t = 1024)]
    max_tokens: usize,
    /// Requests that may wait while one is generated; more are refused with 503.
    #[arg(long, default_value_t = 16)]
    queue: usize,
    /// Context length in tokens (prompt + reply); default: the model's, at most 4096.
    #[arg(long)]
    ctx: Option<usize>,
    /// Require `Authorization: Bearer KEY` on every endpoint but /health (401 without it).
    /// Default: $QSPARSE_API_KEY if set, else none.
    #[arg(long)]
    api_key: Option<String>,
    /// Let web pages from this origin call the API (CORS), e.g. `http://localhost:3000`, or `*`
    /// for any. Off by default.
    #[arg(long, value_parser = parse_origin)]
    cors: Option<String>,
    /// The log on stderr: `text` (a line a request and a line a generation) or `json` (the same
    /// as one JSON object a line: event, time, method, path, status, ms; id, tokens, speeds,
    /// time to first token, finish, sparsity).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Request bodies above this are refused (413).
const MAX_BODY_BYTES: usize = 1 << 20;

pub fn run(args: Args) -> Result<()> {
    if args.max_tokens == 0 || args.queue == 0 {
        bail!("--max-tokens and --queue must be at least 1");
    }
    let (model, tokenizer) = args.model.load_or_pull()?;
    let ctx = context_length(args.ctx, &model)?;
    let template = Conversation::template_for(&model, &tokenizer)?;
    let profile = choose_profile(
        args.sparsity_profile.as_deref(),
        args.sparsity.is_some(),
        &model,
        &args.model.path()?,
    )?;
    let default_sparsity = profile
        .as_ref()
        .map_or(args.sparsity.unwrap_or(0.0), |p| p.sparsity);
    let config = Config {
        addr: format!("{}:{}", args.host, args.port),
        model_id: model_id(&args.model.model),
        queue: args.queue,
        limits: Limits {
            max_tokens: args.max_tokens,
            default_sparsity,
        },
        max_body_bytes: MAX_BODY_BYTES,
        sampling: args.sampling.config(),
        api_key: args
            .api_key
            .clone()
            .or_else(|| std::env::var("QSPARSE_API_KEY").ok())
            .filter(|k| !k.is_empty()),
        cors: args.cors.clone(),
        select: args.model.select(),
        log_json: args.log_format == LogFormat::Json,
        profile: profile.as_ref().map(|p| (p.select(), p.ratios())),
    };
    let json_log = config.log_json;
    // First signal: stop accepting and finish what is running; a second one ends at once.
    ctrlc::set_handler(move || {
        if SHUTDOWN.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        if json_log {
            eprintln!("{}", serde_json::json!({"event": "shutting_down"}));
        } else {
            eprintln!("shutting down: finishing the requests in progress (again to quit now)");
        }
    })
    .context("cannot install the signal handler")?;
    server::serve(
        &model,
        &tokenizer,
        &template,
        args.model.run_state(&model, ctx),
        &config,
        &mut |addr| {
            if json_log {
                eprintln!(
                    "{}",
                    serde_json::json!({
                        "event": "listening",
                        "url": format!("http://{addr}/v1"),
                        "model": config.model_id,
                        "weights": model.weights.format.name(),
                        "sparsity": default_sparsity,
                        "sparsity_profile": args.sparsity_profile,
                    })
                );
                return;
            }
            eprintln!(
                "qsparse serve: {} ({} weights, {}S={}) on http://{addr}/v1 (Ctrl-C stops)",
                config.model_id,
                model.weights.format.name(),
                if profile.is_some() {
                    "calibrated profile at the bytes of "
                } else {
                    ""
                },
                default_sparsity
            )
        },
    )?;
    if json_log {
        eprintln!("{}", serde_json::json!({"event": "stopped"}));
    } else {
        eprintln!("stopped");
    }
    Ok(())
}

/// The name clients see: the manifest name, or the file name without `.gguf`.
fn model_id(arg: &str) -> String {
    let name = std::path::Path::new(arg)
        .file_name()
        .map_or_else(|| arg.to_owned(), |f| f.to_string_lossy().into_owned());
    name.strip_suffix(".gguf").unwrap_or(&name).to_owned()
}

/// `--cors`: `*` or an origin, never text that would end a header line.
fn parse_origin(s: &str) -> Result<String, String> {
    if s.is_empty() || s.chars().any(|c| c.is_control() || c == ' ') {
        Err(format!(
            "`{s}` is not an origin (like http://localhost:3000) or *"
        ))
    } else {
        Ok(s.to_string())
    }
}
