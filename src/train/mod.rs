//! Q-Sparse fine-tuning (`qsparse finetune`): the model trained with Top-K sparsity on each
//! projection's input and the straight-through estimator, by PyTorch on the CPU.
//!
//! qsparse prepares a job directory (the model's tensors in f32, the corpus as token ids, the
//! recipe in job.json), runs the trainer (`train/qsparse_train.py`, carried inside the binary)
//! with python3, and builds the output model from the tensors it trained ([`export`]). The
//! directory holds the trainer's checkpoint, so a stopped run resumes where it stopped. PyTorch
//! rather than candle: one training step of SmolLM2-135M ran at ~73 tokens/s in candle 0.9 (f32;
//! its CPU matmul has no bf16) against ~260-400 in PyTorch 2.15 with bf16 autocast
//! (docs/training.md has the measurement).

pub mod corpus;
pub mod export;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::gguf::{dequantize, GgmlType, GgufFile, GgufWriter};
use crate::measure::calibrate::SparsityProfile;
use crate::model::{FfnActivation, ModelConfig};

/// The trainer, written into each job directory.
pub const TRAINER: &str = include_str!("../../train/qsparse_train.py");
/// The PyTorch release the trainer was measured with (installed by `finetune` if missing).
pub const TORCH_VERSION: &str = "2.15.0";

/// The model's shape as the trainer builds it: the trainer's own copy of the few
/// [`ModelConfig`] fields it reads, so that a job directory stays readable by a later qsparse.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Shape {
    /// "llama" or "bitnet".
    pub arch: String,
    /// Transformer blocks.
    pub n_layers: usize,
    /// Residual width.
    pub d_model: usize,
    /// Feed-forward width.
    pub d_ff: usize,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads.
    pub n_kv_heads: usize,
    /// Entries per head.
    pub head_dim: usize,
    /// RoPE base.
    pub rope_base: f32,
    /// Rotated entries per head.
    pub rope_dim: usize,
    /// Whether RoPE turns halves (NeoX) rather than consecutive pairs.
    pub rope_neox: bool,
    /// RMSNorm epsilon.
    pub rms_eps: f32,
    /// "silu" or "relu2".
    pub ffn: String,
}

impl Shape {
    /// The shape of `config`.
    pub fn of(config: &ModelConfig) -> Shape {
        Shape {
            arch: config.architecture.clone(),
            n_layers: config.n_layers,
            d_model: config.d_model,
            d_ff: config.d_ff,
            n_heads: config.n_heads,
            n_kv_heads: config.n_kv_heads,
            head_dim: config.head_dim,
            rope_base: config.rope_base,
            rope_dim: config.rope_dim,
            rope_neox: config.rope_neox,
            rms_eps: config.rms_eps,
            ffn: match config.ffn_activation {
                FfnActivation::Silu => "silu",
                FfnActivation::Relu2 => "relu2",
            }
            .to_string(),
        }
    }
}

/// A training run's recipe and where its output goes (job.json).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    /// The model trained (its path when the job was made).
    pub model_path: PathBuf,
    /// Its sha256: a resumed job refuses another file.
    pub model_sha256: String,
    /// The output model.
    pub output: PathBuf,
    /// The trained projections' type in the output.
    pub projections: export::ProjectionType,
    /// The model's shape.
    pub model: Shape,
    /// Sparsity S trained at.
    pub sparsity: f32,
    /// Tokens per sequence.
    pub seq: usize,
    /// Sequences per micro-batch.
    pub batch: usize,
    /// Micro-batches per optimizer step.
    pub accumulate: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Warm-up steps.
    pub warmup: usize,
    /// Training tokens (the cosine schedule's length).
    pub tokens: u64,
    /// A wall-clock budget: stop (and write the model) after this many minutes.
    pub minutes: Option<f64>,
    /// Steps between held-out evaluations.
    pub eval_every: usize,
    /// Held-out tokens each evaluation reads.
    pub eval_tokens: usize,
    /// Steps between checkpoints.
    pub checkpoint_every: usize,
    /// Stop (checkpointed, resumable) after this step.
    pub stop_at: Option<usize>,
    /// Seed of the batches.
    pub seed: u64,
    /// PyTorch threads.
    pub threads: usize,
    /// bf16 autocast.
    pub bf16: bool,
    /// "int8" (activations quantized as int8/t2 weights run them) or "f32".
    pub act: String,
    /// Activation outliers kept out of int8 quantization (the runtime's `--act-outliers`).
    pub outliers: usize,
    /// Self-distillation from the dense model instead of cross-entropy.
    pub distill: bool,
    /// Train the token embedding (and a tied lm_head).
    pub train_embeddings: bool,
    /// Keep the RMSNorm weights frozen.
    pub freeze_norms: bool,
    /// Gradient clipping (global L2 norm).
    pub clip: f64,
    /// Where the training text came from (recorded in the output).
    pub data: String,
    /// Trained from a random initialization (`--init random`), not from a trained model.
    #[serde(default)]
    pub from_scratch: bool,
    /// Per-layer ratios to train at (a calibrated profile, its `sparsity` = `sparsity`); none:
    /// uniform `sparsity`.
    #[serde(default)]
    pub profile: Option<SparsityProfile>,
}

/// Files of a job directory.
pub struct JobDir(pub PathBuf);

impl JobDir {
    /// job.json.
    pub fn job(&self) -> PathBuf {
        self.0.join("job.json")
    }
    /// The model's tensors in f32.
    pub fn base(&self) -> PathBuf {
        self.0.join("base.gguf")
    }
    /// The trained tensors the trainer writes when it finishes.
    pub fn trained(&self) -> PathBuf {
        self.0.join("trained.gguf")
    }
    /// One JSON line a step (loss, learning rate, held-out perplexity).
    pub fn log(&self) -> PathBuf {
        self.0.join("log.jsonl")
    }
    /// The trainer's checkpoint.
    pub fn checkpoint(&self) -> PathBuf {
        self.0.join("checkpoint.pt")
    }
    /// Read job.json.
    pub fn read(&self) -> Result<Job> {
        let text = fs::read_to_string(self.job())
            .with_context(|| format!("{} is not a finetune job directory", self.0.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("{} is malformed", self.job().display()))
    }
}

/// Write every tensor of `file` as f32 into `out` (the trainer's starting weights).
pub fn write_base(
    file: &GgufFile,
    out: &Path,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<()> {
    let mut w = GgufWriter::new();
    for info in file.tensors() {
        w.add_tensor(info.name.clone(), GgmlType::F32, &info.dims);
    }
    let n = file.tensors().len();
    w.write_file(out, |i, _, sink| {
        progress(i, n);
        let info = &file.tensors()[i];
        let mut values = vec![0f32; info.n_elements() as usize];
        dequantize(info.ty, file.tensor_data(info), &mut values)
            .map_err(|e| std::io::Error::other(format!("cannot dequantize {}: {e}", info.name)))?;
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        sink.write_all(&bytes)
    })
    .with_context(|| format!("cannot write {}", out.display()))?;
    progress(n, n);
    Ok(())
}

/// Token ids as the trainer reads them (little-endian u32).
pub fn write_tokens(path: &Path, tokens: &[u32]) -> Result<()> {
    let bytes: Vec<u8> = tokens.iter().flat_map(|t| t.to_le_bytes()).collect();
    fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))
}

/// Whether python3 can import PyTorch; if not and `install`, install it with pip.
pub fn ensure_torch(install: bool, log: &mut dyn FnMut(&str)) -> Result<()> {
    let check = || {
        Command::new("python3")
            .args(["-c", "import torch, gguf, numpy"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
    };
    match check() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("finetune trains with PyTorch and needs python3, which is not installed")
        }
        Err(e) => return Err(e).context("cannot run python3"),
        Ok(s) if s.success() => return Ok(()),
        Ok(_) => {}
    }
    let specs = [
        format!("torch=={TORCH_VERSION}"),
        "gguf==0.19.0".to_string(),
        "numpy".to_string(),
    ];
    if !install {
        bail!(
            "finetune trains with PyTorch, which python3 cannot import; install it with \
             `python3 -m pip install {}` (or run without --no-install)",
            specs.join(" ")
        );
    }
    log(&format!(
        "installing PyTorch {TORCH_VERSION} for python3 with pip (a few GB, once)"
    ));
    let status = Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args(&specs)
        .stdin(Stdio::null())
        .status()
        .context("cannot run python3 -m pip")?;
    if !status.success() || !check().is_ok_and(|s| s.success()) {
        bail!(
            "`python3 -m pip install {}` failed ({status})",
            specs.join(" ")
        );
    }
    Ok(())
}

/// How a trainer run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It trained to its budget and wrote trained.gguf.
    Finished,
    /// It was stopped (Ctrl-C, SIGTERM or `stop_at`) and left a checkpoint to resume from.
    Stopped,
}

/// Run the trainer on `dir` (python3 `qsparse_train.py train DIR`), its progress on stderr; its
/// process id goes to `pid` while it runs (to pass a stop request on).
pub fn run_trainer(dir: &JobDir, pid: &AtomicU32) -> Result<Outcome> {
    let script = dir.0.join("qsparse_train.py");
    fs::write(&script, TRAINER).with_context(|| format!("cannot write {}", script.display()))?;
    let _ = fs::remove_file(dir.trained());
    let mut child = Command::new("python3")
        .arg(&script)
        .arg("train")
        .arg(&dir.0)
        .stdin(Stdio::null())
        .spawn()
        .context("cannot run python3")?;
    pid.store(child.id(), Ordering::SeqCst);
    let status = child.wait().context("cannot wait for the trainer")?;
    pid.store(0, Ordering::SeqCst);
    match status.code() {
        Some(0) if dir.trained().is_file() => Ok(Outcome::Finished),
        Some(130) => Ok(Outcome::Stopped),
        _ => bail!("the trainer failed ({status})"),
    }
}

/// The tokens the trainer saw: those of its last logged step.
pub fn trained_tokens(dir: &JobDir) -> u64 {
    let Ok(log) = fs::read_to_string(dir.log()) else {
        return 0;
    };
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v.get("tokens").and_then(|t| t.as_u64()))
        .next_back()
        .unwrap_or(0)
}
