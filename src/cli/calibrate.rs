//! `qsparse calibrate`: sparsity ratios for a model's projection inputs, calibrated on a text,
//! written as a JSON profile that `--sparsity-profile` runs with (see `measure::calibrate`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Result};

use super::common::{check_kv_cache, parse_sparsity, read_text, write_json_file, LoadArgs};
use crate::hub;
use crate::measure::calibrate::{block_bytes, calibrate, SparsityProfile, PROFILE_VERSION};
use crate::model::{Model, Sparsity};
use crate::runtime::session::{GenerateParams, Session};
use crate::sample::SamplerConfig;
use crate::tokenizer::Tokenizer;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: LoadArgs,
    /// The sparsity whose bytes per token the profile reads (the same speed as uniform S).
    #[arg(long, value_parser = parse_sparsity)]
    sparsity: f32,
    /// The calibration text (UTF-8). Default: text the dense model writes itself from a few
    /// prompts (deterministic), so that no evaluation text is calibrated on.
    #[arg(short = 'f', long)]
    file: Option<PathBuf>,
    /// Calibration tokens scored (each try of the search runs over all of them).
    #[arg(long, default_value_t = 256)]
    tokens: usize,
    /// Window length (each window runs from an empty cache).
    #[arg(long, default_value_t = 256)]
    ctx: usize,
    /// Where to write the profile (JSON).
    #[arg(short, long)]
    output: PathBuf,
}

/// Prompts the dense model continues to make the default calibration text.
const PROMPTS: [&str; 4] = [
    "The history of the city began",
    "Scientists have long wondered why",
    "Here is a short story about a traveller who",
    "The best way to learn a new language is",
];

/// The calibration text as tokens, and where it came from: `file`, or (None) about `tokens`
/// tokens the dense model writes itself from [`PROMPTS`], the same each run.
pub(super) fn calibration_text(
    load: &LoadArgs,
    model: &Model,
    tokenizer: &Tokenizer,
    file: Option<&Path>,
    tokens: usize,
) -> Result<(Vec<u32>, String)> {
    if let Some(path) = file {
        return Ok((
            tokenizer.encode(&read_text(path)?)?,
            path.display().to_string(),
        ));
    }
    // Each prompt continued at temperature 0.8 with a fixed seed: the same text each run.
    let mut text = Vec::new();
    let per = tokens.div_ceil(PROMPTS.len());
    for (i, p) in PROMPTS.iter().enumerate() {
        let state = load.run_state(model, per + 64);
        let mut session = Session::new(model, tokenizer, state);
        let params = GenerateParams {
            max_tokens: per,
            sampler: SamplerConfig {
                temperature: 0.8,
                seed: 1 + i as u64,
                ..Default::default()
            },
            sparsity: Sparsity::dense(),
            stop: Vec::new(),
            logprobs: None,
        };
        let prompt = tokenizer.encode(p)?;
        let g = session.generate(&prompt, &params, &mut |_| true)?;
        text.extend(prompt);
        text.extend(g.tokens);
    }
    Ok((text, "generated".to_string()))
}

pub fn run(args: Args) -> Result<()> {
    if args.ctx < 2 || args.tokens < args.ctx {
        bail!("--tokens must hold at least one window of --ctx (at least 2 tokens)");
    }
    let t = Instant::now();
    let (model, tokenizer) = args.model.load_for(crate::model::HeadInput::Dense)?;
    check_kv_cache(&model, args.ctx)?;
    let model_path = args.model.path()?;
    let (tokens, source) = calibration_text(
        &args.model,
        &model,
        &tokenizer,
        args.file.as_deref(),
        args.tokens,
    )?;
    if tokens.len() < args.ctx {
        bail!(
            "the calibration text has {} tokens, fewer than one window of --ctx {}",
            tokens.len(),
            args.ctx
        );
    }
    let used = &tokens[..tokens.len().min(args.tokens)];
    let mut state = args.model.run_state(&model, args.ctx);
    let layers = calibrate(
        &model,
        &mut state,
        used,
        args.ctx,
        args.sparsity,
        &mut |what| {
            eprintln!("calibrate: {what}");
        },
    )?;
    let uniform = block_bytes(&model, &vec![[args.sparsity; 4]; layers.len()]);
    let profiled = block_bytes(&model, &layers);
    let select = args.model.select().name();
    let profile = SparsityProfile {
        version: PROFILE_VERSION,
        model: model_path
            .file_name()
            .map_or_else(String::new, |f| f.to_string_lossy().into_owned()),
        model_sha256: hub::sha256_file(&model_path)?,
        sparsity: args.sparsity,
        select: select.to_string(),
        calibration_text: source,
        calibration_tokens: used.len(),
        layers,
    };
    write_json_file(&args.output, &profile)?;
    outln!("layer   qkv     o  gate_up  down");
    for (l, r) in profile.layers.iter().enumerate() {
        outln!(
            "{l:>5} {:>5.2} {:>5.2} {:>8.2} {:>5.2}",
            r[0],
            r[1],
            r[2],
            r[3]
        );
    }
    outln!(
        "block bytes a token: {profiled} against uniform S={}'s {uniform} ({:+.2}%); {} calibration tokens ({}); {:.1} s; written to {}",
        args.sparsity,
        100.0 * (profiled as f64 / uniform as f64 - 1.0),
        profile.calibration_tokens,
        profile.calibration_text,
        t.elapsed().as_secs_f64(),
        args.output.display()
    );
    Ok(())
}
