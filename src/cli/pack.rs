//! `qsparse pack -m MODEL -o OUT`: convert a model's linear layers once into the layout the
//! kernels read, and write them with the rest of the model to a new GGUF file that runs map in
//! place (see `model::pack`).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

use super::common::{read_profile, LoadArgs, WeightsArg};
use crate::model::{pack, HeadInput};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A GGUF file path or a manifest model name (any type `inspect` lists as supported).
    #[arg(short, long, default_value = "smollm2-135m-instruct")]
    model: String,
    /// Where to write the packed model (a new GGUF file; written to a temporary file and renamed
    /// into place, so a failed pack leaves nothing behind).
    #[arg(short, long)]
    output: PathBuf,
    /// Weight format to pack the linear layers in: f32 (exact reference), f16, int8 (per-row
    /// scale) or t2 (ternary). Runs of the packed file use it (`--weights` may only repeat it).
    /// Default: t2 for a file whose projections are stored ternary, else int8.
    #[arg(long, value_enum)]
    weights: Option<WeightsArg>,
    /// Lay the lm_head out in columns, so that runs may sparsify its input
    /// (`--lm-head-sparsity`). By default an int8 head is packed for a dense input (row-major
    /// Q8, as runs without that flag use it).
    #[arg(long)]
    sparse_head: bool,
    /// Bits per lm_head weight of a head packed for a dense input: 8 (default) or 4 (about
    /// half the head's bytes; see `--lm-head-bits` of the run commands).
    #[arg(long, value_parser = ["8", "4"], conflicts_with = "sparse_head")]
    lm_head_bits: Option<String>,
    /// Store this calibrated profile (`qsparse calibrate`, made for the input file) in the
    /// packed file: runs of it use the profile unless given --sparsity or another profile.
    #[arg(long)]
    sparsity_profile: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<()> {
    let load = LoadArgs {
        model: args.model,
        weights: args.weights,
        act_outliers: None,
        select: vec![super::common::SelectArg::Magnitude],
        threads: None,
        lm_head_bits: args.lm_head_bits,
    };
    let input = load.path()?;
    if same_file(&input, &args.output) {
        bail!(
            "the output {} is the input model: choose another path",
            args.output.display()
        );
    }
    let dir = match args.output.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    if !dir.is_dir() {
        bail!(
            "cannot write {}: the directory {} does not exist",
            args.output.display(),
            dir.display()
        );
    }
    let start = Instant::now();
    let head_input = if args.sparse_head {
        HeadInput::Sparse
    } else {
        HeadInput::Dense
    };
    let (model, _) = load.load_for(head_input)?;
    let profile = args
        .sparsity_profile
        .as_deref()
        .map(|path| -> Result<String> {
            let profile = read_profile(path, model.config.n_layers, &input)?;
            Ok(serde_json::to_string(&profile)?)
        })
        .transpose()?;
    let converted = start.elapsed();
    let bar = std::io::stderr().is_terminal().then(|| {
        let b = ProgressBar::new(0);
        b.set_style(
            ProgressStyle::with_template("writing {msg} [{bar:30}] {bytes}/{total_bytes}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b.set_message(args.output.display().to_string());
        b
    });
    let progress = |done: u64, total: u64| {
        if let Some(b) = &bar {
            b.set_length(total);
            b.set_position(done);
        }
    };
    let bytes = pack::write_with_profile(
        &model.file,
        &model.weights,
        &args.output,
        profile.as_deref(),
        &progress,
    )
    .with_context(|| format!("cannot write {}", args.output.display()))?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    eprintln!(
        "packed {} as {} into {} ({:.1} MB; converted in {:.2} s, written in {:.2} s)",
        input.display(),
        model.weights.format.name(),
        args.output.display(),
        bytes as f64 / 1e6,
        converted.as_secs_f64(),
        (start.elapsed() - converted).as_secs_f64()
    );
    Ok(())
}

/// Whether `a` and `b` name the same existing file.
fn same_file(a: &std::path::Path, b: &std::path::Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}
