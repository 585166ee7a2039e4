//! `qsparse finetune`: train a model to keep its quality at sparsity S (Q-Sparse's Top-K with the
//! straight-through estimator; see `crate::train`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use std::io::IsTerminal;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

use super::common::{models_dir, parse_sparsity};
use super::plot;
use crate::gguf::GgufFile;
use crate::hub;
use crate::measure::calibrate::SparsityProfile;
use crate::model::{ModelConfig, Select};
use crate::synthetic::{write_llama_init, LlamaShape};
use crate::tokenizer::Tokenizer;
use crate::train::corpus::{self, CORPUS_PACKAGE, CORPUS_VERSION};
use crate::train::export::{self, ProjectionType, Provenance};
use crate::train::{self, Job, JobDir, Outcome, Shape};

/// The architectures the trainer's graph (train/qsparse_train.py) builds.
const TRAINED_ARCHITECTURES: [&str; 2] = ["llama", "bitnet"];

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Example: fine-tune the default model at a calibrated profile of S = 0.5 (the recipe that \
    recovers the most here, about 12 minutes):\n  \
    qsparse calibrate --sparsity 0.5 -o s50.json\n  \
    qsparse finetune --sparsity-profile s50.json --distill --tokens 100000 -o models/smollm2-s50.gguf\n  \
    qsparse chat -m models/smollm2-s50.gguf\n\
    A stopped run (Ctrl-C) keeps its checkpoint: continue it with --resume OUTPUT.work"
)]
pub struct Args {
    /// The model to train: a GGUF path or a manifest name.
    #[arg(short, long, default_value = "smollm2-135m-instruct")]
    model: String,
    /// The sparsity S to train for: each projection's input keeps its K = (1-S)·d largest
    /// magnitudes, as `--sparsity S` runs it.
    #[arg(long, value_parser = parse_sparsity, required_unless_present_any = ["resume", "report", "sparsity_profile"])]
    sparsity: Option<f32>,
    /// Train at the per-layer ratios of a profile from `qsparse calibrate` (made for this model
    /// file) in place of a uniform --sparsity; the output stores the profile, so it runs with
    /// it by default.
    #[arg(long, conflicts_with = "sparsity")]
    sparsity_profile: Option<PathBuf>,
    /// The fine-tuned model to write (GGUF; written only when training ends).
    #[arg(short, long, required_unless_present_any = ["resume", "report"])]
    output: Option<PathBuf>,
    /// Text to train on: UTF-8 files, or directories whose .txt files are read. One document
    /// in 20 (by a hash of its name) is held out to evaluate on. Default: the reStructuredText
    /// sources of Python 3.11's documentation (Debian's python3.11-doc, fetched with apt-get
    /// and verified by sha256; PSF license).
    #[arg(long, num_args = 1..)]
    data: Vec<PathBuf>,
    /// Training tokens: the learning-rate schedule's length.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    tokens: u64,
    /// Stop after this many minutes (then write the model), even if --tokens are not all seen.
    /// Counted from this start: with --resume, the time the resumed run may take.
    #[arg(long, value_parser = parse_minutes)]
    minutes: Option<f64>,
    /// Tokens per training sequence.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(2..=8192))]
    seq: u32,
    /// Sequences per micro-batch.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=4096))]
    batch: u32,
    /// Micro-batches accumulated into one optimizer step.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=4096))]
    accumulate: u32,
    /// Peak learning rate (AdamW; linear warm-up, then cosine down to a tenth).
    #[arg(long, default_value_t = 1e-4, value_parser = parse_lr)]
    lr: f64,
    /// Warm-up steps.
    #[arg(long, default_value_t = 20)]
    warmup: u32,
    /// Learn from the dense model's own next-token distribution (KL divergence; the same
    /// weights without Top-K) instead of the text's next tokens.
    #[arg(long)]
    distill: bool,
    /// Steps between held-out perplexity evaluations at S.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    eval_every: u32,
    /// Held-out tokens each evaluation reads.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u32).range(2..))]
    eval_tokens: u32,
    /// Steps between checkpoints (a stop always saves one).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    checkpoint_every: u32,
    /// Stop after this step, checkpointed, without writing the model (resume later).
    #[arg(long)]
    stop_at: Option<u32>,
    /// Seed of the batch order.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// How the trained projections are stored in the output.
    #[arg(long, value_enum, default_value_t = ProjectionType::Q8_0)]
    projections: ProjectionType,
    /// Activations as the run will quantize them: int8 (int8 or ternary weights, the default
    /// run) or f32 (--weights f16/f32).
    #[arg(long, value_enum, default_value_t = Activations::Int8)]
    activations: Activations,
    /// With int8 activations: how many of the largest skip quantization (the runtime's
    /// --act-outliers).
    #[arg(long, default_value_t = 32)]
    act_outliers: usize,
    /// Train the token embedding too (and the lm_head tied to it); frozen by default.
    #[arg(long)]
    train_embeddings: bool,
    /// Keep the RMSNorm weights frozen.
    #[arg(long)]
    freeze_norms: bool,
    /// Train in f32 instead of bf16 autocast (slower, for checking).
    #[arg(long)]
    f32: bool,
    /// Worker threads (default: one per core).
    #[arg(short = 't', long, value_parser = clap::value_parser!(u16).range(1..=1024))]
    threads: Option<u16>,
    /// The job directory (weights, tokens, checkpoint, log). Default: OUTPUT.work
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Continue the stopped run in this job directory (its recipe and output as first given;
    /// --minutes may be set anew).
    #[arg(long, conflicts_with_all = [
        "model", "sparsity", "sparsity_profile", "data", "output", "work_dir", "tokens", "seq", "batch", "accumulate",
        "lr", "warmup", "distill", "eval_every", "eval_tokens", "checkpoint_every", "stop_at",
        "seed", "projections", "activations", "act_outliers", "train_embeddings",
        "freeze_norms", "f32", "threads", "init", "layers", "d_model", "d_ff", "heads", "kv_heads",
    ])]
    resume: Option<PathBuf>,
    /// Train nothing: show how these runs (job directories) went, each held-out evaluation at S
    /// against training tokens; with --plot, one curve a run.
    #[arg(long, num_args = 1.., conflicts_with_all = ["sparsity", "output", "resume"])]
    report: Vec<PathBuf>,
    /// With --report: draw held-out perplexity at S against training tokens (.png or .svg).
    #[arg(long, requires = "report")]
    plot: Option<PathBuf>,
    /// With --report: print JSON.
    #[arg(long, requires = "report")]
    json: bool,
    /// Do not install PyTorch with pip when python3 lacks it: fail instead.
    #[arg(long)]
    no_install: bool,
    /// Start from the weights of -m (`model`), or train a new llama model from scratch
    /// (`random`: its shape from --layers, --d-model, --d-ff, --heads, --kv-heads; -m gives the
    /// tokenizer; every tensor is trained, embeddings included).
    #[arg(long, value_enum, default_value_t = Init::Model)]
    init: Init,
    /// With --init random: transformer blocks.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=256))]
    layers: Option<u32>,
    /// With --init random: width of the residual stream (a multiple of --heads).
    #[arg(long, value_parser = clap::value_parser!(u64).range(8..=16384))]
    d_model: Option<u64>,
    /// With --init random: width of the feed-forward layer.
    #[arg(long, value_parser = clap::value_parser!(u64).range(8..=65536))]
    d_ff: Option<u64>,
    /// With --init random: query heads.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=256))]
    heads: Option<u32>,
    /// With --init random: key/value heads (divides --heads).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=256))]
    kv_heads: Option<u32>,
}

/// `--init`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Init {
    Model,
    Random,
}

/// The shape `--init random` trains, from its flags (6 blocks of width 256 by default).
fn scratch_shape(args: &Args) -> Result<LlamaShape> {
    let shape = LlamaShape {
        layers: args.layers.unwrap_or(6),
        d_model: args.d_model.unwrap_or(256),
        d_ff: args.d_ff.unwrap_or(768),
        heads: args.heads.unwrap_or(4),
        kv_heads: args.kv_heads.unwrap_or(2),
        context_length: 2048,
    };
    let heads = u64::from(shape.heads);
    if !shape.d_model.is_multiple_of(heads) || !(shape.d_model / heads).is_multiple_of(2) {
        bail!(
            "--d-model {} must be --heads {} times an even head dimension",
            shape.d_model,
            shape.heads
        );
    }
    if !shape.heads.is_multiple_of(shape.kv_heads) {
        bail!(
            "--kv-heads {} must divide --heads {}",
            shape.kv_heads,
            shape.heads
        );
    }
    Ok(shape)
}

/// `--activations`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Activations {
    Int8,
    F32,
}

fn parse_minutes(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v),
        _ => Err(format!("`{s}` is not a positive number of minutes")),
    }
}

fn parse_lr(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v < 1.0 => Ok(v),
        _ => Err(format!("`{s}` is not a learning rate in (0, 1)")),
    }
}

/// Set when Ctrl-C or SIGTERM reached us; the trainer is then asked to stop at its next step.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);
/// The trainer's process id while it runs.
static TRAINER: AtomicU32 = AtomicU32::new(0);

pub fn run(args: Args) -> Result<()> {
    if !args.report.is_empty() {
        return report(&args);
    }
    // Before hours of preparation could be wasted.
    train::ensure_torch(!args.no_install, &mut |m| eprintln!("{m}"))?;
    let dir = match &args.resume {
        Some(dir) => {
            let dir = JobDir(dir.clone());
            let mut job = dir.read()?;
            let sha = hub::sha256_file(&job.model_path)?;
            if sha != job.model_sha256 {
                bail!(
                    "{} changed since the run started (sha256 {sha}, was {})",
                    job.model_path.display(),
                    job.model_sha256
                );
            }
            if !dir.base().is_file() {
                bail!("{} has no weights to resume from", dir.0.display());
            }
            // A run stopped by --stop-at goes on to its end; --minutes sets this run's budget.
            job.stop_at = None;
            if args.minutes.is_some() {
                job.minutes = args.minutes;
            }
            super::common::write_json_file(&dir.job(), &job)?;
            eprintln!(
                "resuming {} (S = {}, output {})",
                dir.0.display(),
                job.sparsity,
                job.output.display()
            );
            dir
        }
        None => prepare(&args)?,
    };
    // A stop request (Ctrl-C reaches the trainer too; a SIGTERM may reach us alone) is passed
    // on as SIGTERM: the trainer finishes its step, checkpoints and stops; we wait for it.
    let _ = ctrlc::set_handler(|| {
        INTERRUPTED.store(true, Ordering::SeqCst);
        let pid = TRAINER.load(Ordering::SeqCst);
        if pid != 0 {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
    });
    let job = dir.read()?;
    match train::run_trainer(&dir, &TRAINER)? {
        Outcome::Stopped => {
            if INTERRUPTED.load(Ordering::SeqCst) || job.stop_at.is_none() {
                eprintln!(
                    "stopped: no model written; continue with `qsparse finetune --resume {}`",
                    dir.0.display()
                );
                std::process::exit(130);
            }
            eprintln!(
                "stopped at step {}; continue with `qsparse finetune --resume {}`",
                job.stop_at.unwrap_or(0),
                dir.0.display()
            );
            Ok(())
        }
        Outcome::Finished => {
            let source = GgufFile::open(&job.model_path)?;
            let trained = GgufFile::open(dir.trained())?;
            let method = match (job.from_scratch, job.distill) {
                (true, _) => "topk-ste-from-scratch",
                (false, true) => "topk-ste-distill",
                (false, false) => "topk-ste",
            };
            let provenance = Provenance {
                profile: job
                    .profile
                    .as_ref()
                    .map(serde_json::to_string)
                    .transpose()?,
                sparsity: job.sparsity,
                method: method.to_string(),
                tokens: train::trained_tokens(&dir),
                data: job.data.clone(),
            };
            let bytes =
                export::write(&source, &trained, job.projections, &provenance, &job.output)?;
            let how = match job.profile {
                Some(_) => "(its sparsity profile is stored in it)".to_string(),
                None => format!("--sparsity {}", job.sparsity),
            };
            eprintln!(
                "wrote {} ({:.1} MB); run it with `qsparse chat -m {} {how}`",
                job.output.display(),
                bytes as f64 / 1e6,
                job.output.display(),
            );
            Ok(())
        }
    }
}

/// Run `work`, its progress (done, total) drawn as a bar on stderr when it is a terminal.
fn with_progress<T>(template: &str, work: impl FnOnce(&mut dyn FnMut(usize, usize)) -> T) -> T {
    let bar = std::io::stderr().is_terminal().then(|| {
        let b = ProgressBar::new(0);
        let style = ProgressStyle::with_template(template);
        b.set_style(style.unwrap_or_else(|_| ProgressStyle::default_bar()));
        b
    });
    let result = work(&mut |done, total| {
        if let Some(b) = &bar {
            b.set_length(total as u64);
            b.set_position(done as u64);
        }
    });
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    result
}

/// Check the inputs and write the job directory: the model's tensors in f32, the tokens, the
/// recipe.
fn prepare(args: &Args) -> Result<JobDir> {
    let Some(output) = args.output.clone() else {
        bail!("--output is needed to start a run");
    };
    if args.sparsity.is_none() && args.sparsity_profile.is_none() {
        bail!("--sparsity or --sparsity-profile is needed to start a run");
    }
    if let Some(stop) = args.stop_at {
        if stop == 0 {
            bail!("--stop-at must be a step after the first (1 or more)");
        }
    }
    let scratch = match args.init {
        Init::Random => {
            if args.distill {
                bail!("--distill learns from the model's own dense predictions: a random model has none to teach; train from scratch with cross-entropy");
            }
            if args.sparsity_profile.is_some() {
                bail!("--sparsity-profile was calibrated for an existing model; a model trained from scratch takes --sparsity");
            }
            Some(scratch_shape(args)?)
        }
        Init::Model => {
            let shape_flags = [
                args.layers.is_some(),
                args.d_model.is_some(),
                args.d_ff.is_some(),
                args.heads.is_some(),
                args.kv_heads.is_some(),
            ];
            if shape_flags.contains(&true) {
                bail!("--layers, --d-model, --d-ff, --heads and --kv-heads shape a new model: they need --init random");
            }
            None
        }
    };
    let per_step = u64::from(args.seq) * u64::from(args.batch) * u64::from(args.accumulate);
    if args.tokens < per_step {
        bail!(
            "--tokens {} is less than one step ({} sequences of {} tokens)",
            args.tokens,
            u64::from(args.batch) * u64::from(args.accumulate),
            args.seq
        );
    }
    let out_dir = output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    // An output that cannot be written is found now, not after hours of training.
    tempfile::Builder::new()
        .prefix(".qsparse-write-")
        .tempfile_in(out_dir)
        .with_context(|| format!("cannot write the output in {}", out_dir.display()))?;
    let source_path = super::common::model_path_or_pull(&args.model)?;
    let source = GgufFile::open(&source_path)?;
    if scratch.is_none() {
        // A model that cannot be run is refused before its text is read, and so is one of an
        // architecture the trainer does not build (its graph is llama's and bitnet's).
        let config = ModelConfig::from_gguf(&source)?;
        if !TRAINED_ARCHITECTURES.contains(&config.architecture.as_str()) {
            bail!(
                "finetune trains `llama` and `bitnet` models; {} is `{}`",
                source_path.display(),
                config.architecture
            );
        }
    }
    let profile = match &args.sparsity_profile {
        Some(path) => Some(training_profile(path, &source, &source_path)?),
        None => None,
    };
    let sparsity = profile
        .as_ref()
        .map_or(args.sparsity.unwrap_or(0.0), |p| p.sparsity);
    let tokenizer = Tokenizer::from_gguf(&source)?;
    let (inputs, data) = if args.data.is_empty() {
        let dir = corpus::default_corpus(&models_dir(), &mut |m| eprintln!("{m}"))?;
        (
            vec![dir],
            format!("Debian {CORPUS_PACKAGE} {CORPUS_VERSION} (reStructuredText sources)"),
        )
    } else {
        let names: Vec<String> = args.data.iter().map(|p| p.display().to_string()).collect();
        (args.data.clone(), names.join(", "))
    };
    let docs = corpus::documents(&inputs)?;
    let (train_tokens, held) = with_progress("tokenizing [{bar:30}] {pos}/{len} documents", |p| {
        corpus::tokenize(&docs, &tokenizer, p)
    })?;
    if train_tokens.len() <= args.seq as usize + 1 {
        bail!(
            "the training text has {} tokens, fewer than one sequence of --seq {} + 1",
            train_tokens.len(),
            args.seq
        );
    }
    if held.len() < 2 {
        bail!("too little text to hold any out for evaluation");
    }
    eprintln!(
        "corpus: {} documents, {} training tokens, {} held out",
        docs.len(),
        train_tokens.len(),
        held.len()
    );
    let mut work = output.clone().into_os_string();
    work.push(".work");
    let work = args.work_dir.clone().unwrap_or_else(|| PathBuf::from(work));
    let dir = JobDir(work);
    if dir.job().exists() {
        bail!(
            "{} already holds a run: continue it with --resume {0}, or remove it",
            dir.0.display()
        );
    }
    std::fs::create_dir_all(&dir.0)
        .with_context(|| format!("cannot create {}", dir.0.display()))?;
    // From scratch, the model trained is a new one, written into the job directory.
    let model_path = match scratch {
        Some(shape) => {
            let path = dir.0.join("init.gguf");
            write_llama_init(&path, shape, &source, args.seed)
                .with_context(|| format!("cannot write {}", path.display()))?;
            path
        }
        None => source_path,
    };
    let file = GgufFile::open(&model_path)?;
    let config = ModelConfig::from_gguf(&file)?;
    train::write_tokens(&dir.0.join("train.u32"), &train_tokens)?;
    train::write_tokens(&dir.0.join("heldout.u32"), &held)?;
    with_progress(
        "writing the weights in f32 [{bar:30}] {pos}/{len} tensors",
        |p| train::write_base(&file, &dir.base(), p),
    )?;
    let threads = args.threads.map_or_else(
        || std::thread::available_parallelism().map_or(1, |n| n.get()),
        usize::from,
    );
    let job = Job {
        model_sha256: hub::sha256_file(&model_path)?,
        model_path: std::fs::canonicalize(&model_path)?,
        output: std::path::absolute(&output)?,
        projections: args.projections,
        model: Shape::of(&config),
        sparsity,
        seq: args.seq as usize,
        batch: args.batch as usize,
        accumulate: args.accumulate as usize,
        lr: args.lr,
        warmup: args.warmup as usize,
        tokens: args.tokens,
        minutes: args.minutes,
        eval_every: args.eval_every as usize,
        eval_tokens: args.eval_tokens as usize,
        checkpoint_every: args.checkpoint_every as usize,
        stop_at: args.stop_at.map(|s| s as usize),
        seed: args.seed,
        threads,
        bf16: !args.f32,
        act: match args.activations {
            Activations::Int8 => "int8",
            Activations::F32 => "f32",
        }
        .to_string(),
        outliers: args.act_outliers,
        distill: args.distill,
        train_embeddings: args.train_embeddings || scratch.is_some(),
        freeze_norms: args.freeze_norms && scratch.is_none(),
        clip: 1.0,
        data,
        from_scratch: scratch.is_some(),
        profile,
    };
    super::common::write_json_file(&dir.job(), &job)?;
    Ok(dir)
}

/// The sparsity profile at `path`, checked against the model file being trained (`source`, at
/// `source_path`); the trainer selects by magnitude, so a profile calibrated with another
/// selection is refused.
fn training_profile(path: &Path, source: &GgufFile, source_path: &Path) -> Result<SparsityProfile> {
    let n_layers = ModelConfig::from_gguf(source)?.n_layers;
    let profile = super::common::read_profile(path, n_layers, source_path)?;
    if profile.select() != Select::Magnitude {
        bail!(
            "{} was calibrated with --select {}; the trainer keeps the largest magnitudes: calibrate with --select magnitude",
            path.display(),
            profile.select
        );
    }
    Ok(profile)
}

/// One run of `--report`: its recipe and its held-out evaluations.
#[derive(Debug, serde::Serialize)]
struct RunReport {
    dir: PathBuf,
    sparsity: f32,
    /// Trained at a calibrated profile's per-layer ratios (its bytes those of `sparsity`).
    profile: bool,
    method: &'static str,
    lr: f64,
    /// Held-out perplexity of the untrained model, dense.
    dense_ppl_before: Option<f64>,
    /// (step, tokens, minutes, held-out perplexity at S).
    evals: Vec<(u64, u64, f64, f64)>,
}

impl RunReport {
    /// The sparsity trained at, as a label.
    fn at(&self) -> String {
        match self.profile {
            true => format!("profile of S = {}", self.sparsity),
            false => format!("S = {}", self.sparsity),
        }
    }
}

fn report(args: &Args) -> Result<()> {
    let mut runs = Vec::new();
    for dir in &args.report {
        let job_dir = JobDir(dir.clone());
        let job = job_dir.read()?;
        let log = std::fs::read_to_string(job_dir.log())
            .with_context(|| format!("{} has no training log", dir.display()))?;
        let mut evals = Vec::new();
        let mut dense = None;
        for line in log.lines() {
            let v: serde_json::Value = serde_json::from_str(line)
                .with_context(|| format!("{} is malformed", job_dir.log().display()))?;
            let num = |k: &str| v.get(k).and_then(|x| x.as_f64());
            if let Some(d) = num("eval_dense_ppl") {
                dense = Some(d);
            }
            if let Some(ppl) = num("eval_ppl") {
                let minutes = num("elapsed_s").unwrap_or(0.0) / 60.0;
                let step = num("step").unwrap_or(0.0) as u64;
                evals.push((step, num("tokens").unwrap_or(0.0) as u64, minutes, ppl));
            }
        }
        runs.push(RunReport {
            dir: dir.clone(),
            sparsity: job.sparsity,
            profile: job.profile.is_some(),
            method: match (job.from_scratch, job.distill) {
                (true, _) => "from scratch",
                (false, true) => "distill",
                (false, false) => "cross-entropy",
            },
            lr: job.lr,
            dense_ppl_before: dense,
            evals,
        });
    }
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&runs)?);
    } else {
        for r in &runs {
            outln!(
                "{}: {}, {}, lr {}; held-out perplexity dense before training {}",
                r.dir.display(),
                r.at(),
                r.method,
                r.lr,
                r.dense_ppl_before.map_or("?".into(), |d| format!("{d:.2}"))
            );
            outln!(
                "{:>8} {:>10} {:>8} {:>12}",
                "step",
                "tokens",
                "minutes",
                "ppl at S"
            );
            for (step, tokens, minutes, ppl) in &r.evals {
                outln!("{step:>8} {tokens:>10} {minutes:>8.1} {ppl:>12.2}");
            }
        }
    }
    if let Some(path) = &args.plot {
        let format = plot::Format::of(path)?;
        let mut curves: Vec<plot::Curve> = runs
            .iter()
            .map(|r| {
                let name = r.dir.file_name().map_or_else(String::new, |f| {
                    let f = f.to_string_lossy();
                    f.strip_suffix(".work").unwrap_or(&f).to_string()
                });
                // From scratch, the untrained model is at chance (~the vocabulary size): left
                // out, so the axis shows where the runs part.
                let scratch = r.method == "from scratch";
                plot::Curve {
                    name: format!("{name} ({}, {}, lr {})", r.at(), r.method, r.lr),
                    points: r
                        .evals
                        .iter()
                        .filter(|e| !(scratch && e.1 == 0))
                        .map(|e| (e.1 as f64 / 1e6, e.3))
                        .collect(),
                }
            })
            .collect();
        // The dense model before training, across the same tokens: what recovery aims at (not
        // for a model trained from scratch, which starts at chance).
        let end = runs.iter().flat_map(|r| r.evals.last()).map(|e| e.1).max();
        let first = runs.first().filter(|r| r.method != "from scratch");
        if let (Some(dense), Some(end)) = (first.and_then(|r| r.dense_ppl_before), end) {
            curves.push(plot::Curve {
                name: "the model before training, dense".to_string(),
                points: vec![(0.0, dense), (end as f64 / 1e6, dense)],
            });
        }
        let (lo, hi) = curves
            .iter()
            .flat_map(|c| c.points.iter().map(|p| p.1))
            .fold((f64::INFINITY, 0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
        let title = if runs.iter().all(|r| r.method == "from scratch") {
            "Q-Sparse from scratch: perplexity at S on held-out documents"
        } else {
            "Q-Sparse fine-tuning: perplexity at S on held-out documents"
        };
        plot::draw_curves(
            path,
            format,
            title,
            ("training tokens (millions)", "perplexity"),
            &curves,
            hi > 4.0 * lo,
        )
        .with_context(|| format!("cannot draw {}", path.display()))?;
        eprintln!("plot written to {}", path.display());
    }
    Ok(())
}
