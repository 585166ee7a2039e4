//! `qsparse sweep`: bytes read, speed and quality of a model across sparsity ratios, as a table,
//! JSON or CSV, and a figure.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use super::calibrate::calibration_text;
use super::common::{
    head_input, parse_sparsity, read_profile, read_text, stored_profile, LoadArgs,
};
use super::plot;
use crate::measure::calibrate::calibrate;
use crate::measure::sweep::{self, Method, Point, Settings, Sweep};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: LoadArgs,
    /// Comma-separated sparsity ratios to measure; the dense model (0) is always measured too, as
    /// the reference.
    #[arg(long, value_delimiter = ',', value_parser = parse_sparsity,
          default_value = "0,0.25,0.4,0.5,0.6,0.75,0.9")]
    sparsity: Vec<f32>,
    /// Also measure these calibrated profiles (`qsparse calibrate`, made for this model file):
    /// a row each, at the bytes of the uniform S it was calibrated for, method `calibrated`. A
    /// model file that holds a profile (`pack --sparsity-profile`, `finetune
    /// --sparsity-profile`) gets that row without the flag.
    #[arg(long, num_args = 1..)]
    sparsity_profile: Vec<PathBuf>,
    /// Also calibrate a profile at each --sparsity ratio (as `qsparse calibrate` does, on
    /// --calibration-file) and measure it: a `calibrated` row next to each uniform one. About
    /// three minutes a ratio here.
    #[arg(long)]
    calibrated: bool,
    /// With --calibrated: the calibration text, which must not be the evaluated text. Default:
    /// text the dense model writes itself (as `qsparse calibrate` makes it).
    #[arg(long, requires = "calibrated")]
    calibration_file: Option<PathBuf>,
    /// With --calibrated: calibration tokens (windows of 256 tokens, or fewer when shorter).
    #[arg(long, default_value_t = 256, requires = "calibrated")]
    calibration_tokens: usize,
    /// Also sparsify the lm_head input at this ratio in the sparse rows (Q-Sparse leaves it dense).
    #[arg(long, default_value_t = 0.0, value_parser = parse_sparsity)]
    lm_head_sparsity: f32,
    /// Text for perplexity and agreement with dense (UTF-8). Default: the English sample shipped
    /// with qsparse (data/english.txt).
    #[arg(short = 'f', long)]
    file: Option<PathBuf>,
    /// Compare every row (top-1 agreement, KL) with this model's dense predictions instead of the
    /// model's own dense row: a fine-tuned model against the model it was tuned from. Loaded
    /// with the same --weights.
    #[arg(long)]
    reference: Option<String>,
    /// Tokens of the text scored at each ratio (whole windows of --ctx).
    #[arg(long, default_value_t = 512)]
    tokens: usize,
    /// Window length for scoring; the same windows `qsparse perplexity --ctx` scores. Default:
    /// 256, or --tokens when fewer.
    #[arg(long)]
    ctx: Option<usize>,
    /// Speed: prompt tokens evaluated before decoding.
    #[arg(long, default_value_t = 32)]
    prompt_tokens: usize,
    /// Speed: tokens decoded (greedy) per timed run.
    #[arg(long, default_value_t = 64)]
    gen_tokens: usize,
    /// Speed: timed runs per ratio (the median is reported), interleaved across ratios after a
    /// warm-up round.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Draw speedup (measured and ideal) and perplexity against S into this file (.svg or .png).
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Print one JSON object: {"machine": {...}, "rows": [...]}.
    #[arg(long, conflicts_with = "csv")]
    json: bool,
    /// Print the rows as CSV.
    #[arg(long)]
    csv: bool,
    /// Also show each projection's bytes per token and natural input sparsity.
    #[arg(long)]
    per_layer: bool,
}

const DEFAULT_TEXT: &str = include_str!("../../data/english.txt");

pub fn run(args: Args) -> Result<()> {
    let ctx = args.ctx.unwrap_or(args.tokens.min(256));
    if ctx < 2 {
        bail!("--ctx (and --tokens) must be at least 2 tokens");
    }
    if args.tokens < ctx {
        bail!(
            "--tokens {} is less than one window of --ctx {ctx}",
            args.tokens
        );
    }
    // Fail before the long measurement, not after it.
    let plot_format = args.plot.as_deref().map(plot::Format::of).transpose()?;
    if plot_format.is_some() {
        plot::load_font()?;
    }
    let text = match &args.file {
        Some(path) => read_text(path)?,
        None => DEFAULT_TEXT.to_owned(),
    };
    if args.calibrated && args.calibration_tokens < 2 {
        bail!("--calibration-tokens must be at least 2");
    }
    // The model loads with one selection; each row sets its own.
    let load = LoadArgs {
        select: args.model.select[..1].to_vec(),
        ..args.model.clone()
    };
    let (model, tokenizer) = load.load_for(head_input(args.lm_head_sparsity))?;
    let mut points: Vec<Point> = args
        .model
        .select
        .iter()
        .flat_map(|&select| {
            args.sparsity.iter().map(move |&sparsity| Point {
                sparsity,
                method: Method::Uniform(select.into()),
            })
        })
        .collect();
    for path in &args.sparsity_profile {
        let profile = read_profile(path, model.config.n_layers, &load.path()?)?;
        points.push(Point {
            sparsity: profile.sparsity,
            method: Method::Calibrated {
                source: path.display().to_string(),
                select: profile.select(),
                layers: profile.ratios(),
            },
        });
    }
    // A model that holds a profile (packed with one, or fine-tuned at one) is measured with it.
    if let Some(profile) = stored_profile(&model)? {
        points.push(Point {
            sparsity: profile.sparsity,
            method: Method::Calibrated {
                source: "stored in the model".to_string(),
                select: profile.select(),
                layers: profile.ratios(),
            },
        });
    }
    let longest = ctx.max(args.prompt_tokens + args.gen_tokens);
    if longest > model.config.context_length {
        bail!(
            "{longest} tokens exceed the model's context length {}",
            model.config.context_length
        );
    }
    super::common::check_kv_cache(&model, longest)?;
    let tokens = tokenizer.encode(&text)?;
    if args.calibrated {
        points.extend(calibrate_each(&args, &load, &model, &tokenizer, &text)?);
    }
    let settings = Settings {
        points,
        lm_head_sparsity: args.lm_head_sparsity,
        ctx,
        windows: args.tokens / ctx,
        prompt_tokens: args.prompt_tokens,
        gen_tokens: args.gen_tokens,
        runs: args.runs,
    };
    let bar = std::io::stderr().is_terminal().then(|| {
        let b = ProgressBar::new(1);
        b.set_style(
            ProgressStyle::with_template("sweep [{bar:30}] {percent}% {elapsed}/{duration} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b
    });
    let new_state = |ctx| load.run_state(&model, ctx);
    let reference = match &args.reference {
        Some(name) => {
            let reference = LoadArgs {
                model: name.clone(),
                ..load.clone()
            };
            let (m, _) = reference.load_for(head_input(0.0))?;
            Some((reference, m))
        }
        None => None,
    };
    let reference_state = reference
        .as_ref()
        .map(|(load, m)| move |ctx| load.run_state(m, ctx));
    let against = reference
        .as_ref()
        .zip(reference_state.as_ref())
        .map(|((_, m), new_state)| sweep::ReferenceModel {
            model: m,
            new_state,
        });
    let result = sweep::run(
        &model,
        &new_state,
        &tokens,
        &settings,
        against,
        &mut |done, total, what| {
            if let Some(b) = &bar {
                b.set_length(total);
                b.set_position(done);
                b.set_message(what.to_owned());
            }
        },
    )?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }

    let title = format!(
        "{} ({} weights)",
        model_name(&args.model.model),
        model.weights.format.name()
    );
    if args.json {
        let out = json!({
            "model": args.model.model,
            "weights": model.weights.format.name(),
            "machine": result.machine,
            "settings": {
                "ctx": ctx,
                "windows": settings.windows,
                "n_predictions": result.n_predictions,
                "prompt_tokens": args.prompt_tokens,
                "gen_tokens": args.gen_tokens,
                "runs": args.runs,
                "lm_head_sparsity": args.lm_head_sparsity,
            },
            "reference": args.reference,
            "reference_ppl": result.reference_ppl,
            "rows": result.rows,
        });
        outln!("{}", serde_json::to_string_pretty(&out)?);
    } else if args.csv {
        out!("{}", csv(&result));
    } else {
        out!("{}", table(&title, &result, args.per_layer));
        if let (Some(name), Some(ppl)) = (&args.reference, result.reference_ppl) {
            outln!("top-1 and KL against {name}, dense (its perplexity {ppl:.2})");
        }
    }
    if let (Some(path), Some(format)) = (&args.plot, plot_format) {
        plot::draw(path, format, &title, &result)
            .with_context(|| format!("cannot draw {}", path.display()))?;
        eprintln!("plot written to {}", path.display());
    }
    Ok(())
}

/// A profile calibrated at each sparsity of the sweep (with its first --select), on the
/// calibration text, which may not be the evaluated `text`.
fn calibrate_each(
    args: &Args,
    load: &LoadArgs,
    model: &crate::model::Model,
    tokenizer: &crate::tokenizer::Tokenizer,
    text: &str,
) -> Result<Vec<Point>> {
    if let Some(path) = &args.calibration_file {
        if read_text(path)? == text {
            bail!(
                "--calibration-file {} is the evaluated text: calibrate on another text",
                path.display()
            );
        }
    }
    let (tokens, source) = calibration_text(
        load,
        model,
        tokenizer,
        args.calibration_file.as_deref(),
        args.calibration_tokens,
    )?;
    let window = 256.min(args.calibration_tokens).min(tokens.len());
    if window < 2 {
        bail!("the calibration text has fewer than 2 tokens");
    }
    let used = &tokens[..tokens.len().min(args.calibration_tokens)];
    let mut state = load.run_state(model, window);
    let mut points = Vec::new();
    for &sparsity in args.sparsity.iter().filter(|&&s| s != 0.0) {
        let layers = calibrate(model, &mut state, used, window, sparsity, &mut |what| {
            eprintln!("calibrate S={sparsity}: {what}");
        })?;
        points.push(Point {
            sparsity,
            method: Method::Calibrated {
                source: format!("calibrated here on {source} ({} tokens)", used.len()),
                select: load.select(),
                layers: layers.into(),
            },
        });
    }
    Ok(points)
}

fn model_name(arg: &str) -> String {
    std::path::Path::new(arg)
        .file_name()
        .map_or_else(|| arg.to_owned(), |f| f.to_string_lossy().into_owned())
}

const CSV_COLUMNS: &str = "method,profile,sparsity,weight_bytes_per_token,fraction_of_dense,active_params,\
decode_tok_s,prefill_tok_s,speedup,speedup_of_medians,ideal_speedup,effective_gb_s,roofline_fraction,ppl,mean_nll,\
top1_agreement,kl,natural_sparsity";

fn csv(s: &Sweep) -> String {
    let mut out = format!("{CSV_COLUMNS}\n");
    for r in &s.rows {
        out += &format!(
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}\n",
            r.method,
            r.profile
                .as_deref()
                .map_or_else(String::new, |p| format!("\"{}\"", p.replace('"', "\"\""))),
            r.sparsity,
            r.weight_bytes_per_token,
            r.fraction_of_dense,
            r.active_params,
            r.decode_tok_s,
            r.prefill_tok_s,
            r.speedup,
            r.speedup_of_medians,
            r.ideal_speedup,
            r.effective_gb_s,
            r.roofline_fraction,
            r.ppl,
            r.mean_nll,
            r.top1_agreement,
            r.kl,
            r.natural_sparsity
        );
    }
    out
}

fn table(title: &str, s: &Sweep, per_layer: bool) -> String {
    let m = &s.machine;
    let mut out = format!(
        "{title}: {} predictions scored per row; machine read bandwidth {:.1} GB/s ({} threads, {})\n\n",
        s.n_predictions,
        m.read_gb_s,
        m.threads,
        m.isa
    );
    out += &format!(
        "{:>10} {:>5} {:>9} {:>7} {:>8} {:>7} {:>7} {:>6} {:>6} {:>6} {:>8} {:>6} {:>7}\n",
        "method",
        "S",
        "MB/token",
        "of dense",
        "active",
        "tok/s",
        "speedup",
        "ideal",
        "GB/s",
        "of BW",
        "ppl",
        "top-1",
        "KL"
    );
    for r in &s.rows {
        out += &format!(
            "{:>10} {:>5.2} {:>9.2} {:>7.1}% {:>7.1}M {:>7.1} {:>6.2}x {:>5.2}x {:>6.1} {:>5.0}% {:>8.3} {:>5.1}% {:>7.4}\n",
            r.method,
            r.sparsity,
            r.weight_bytes_per_token as f64 / 1e6,
            100.0 * r.fraction_of_dense,
            r.active_params as f64 / 1e6,
            r.decode_tok_s,
            r.speedup,
            r.ideal_speedup,
            r.effective_gb_s,
            100.0 * r.roofline_fraction,
            r.ppl,
            100.0 * r.top1_agreement,
            r.kl,
        );
    }
    out += "\nMB/token: weight bytes one decoded token reads; active: weights used per token; \
            speedup: median of the rounds' ratios to dense;\nideal: dense bytes / these bytes; of BW: effective GB/s over the machine's read \
            bandwidth; top-1 and KL: next-token agreement with the dense model.\n";
    if per_layer {
        out +=
            "\nPer projection (summed over layers): MB/token, and natural sparsity of its input \
                (exact zeros before Top-K)\n";
        out += &format!("{:>10} {:>5}", "method", "S");
        for p in &s.rows[0].projections {
            out += &format!(" {:>15}", p.name);
        }
        out += "\n";
        for r in &s.rows {
            out += &format!("{:>10} {:>5.2}", r.method, r.sparsity);
            for p in &r.projections {
                out += &format!(
                    " {:>7.2} {:>6.1}%",
                    p.weight_bytes_per_token as f64 / 1e6,
                    100.0 * p.natural_sparsity
                );
            }
            out += "\n";
        }
    }
    out
}
