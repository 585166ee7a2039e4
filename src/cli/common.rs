//! Flags and steps shared by the commands that run a model.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

use crate::gguf::GgufFile;
use crate::hub;
use crate::measure::calibrate::SparsityProfile;
use crate::model::{self, HeadInput, LoadOptions, Model, Select, Sparsity, WeightFormat};
use crate::tokenizer::Tokenizer;
use qsparse_kernels::dense_q8::CodeBits;

/// Model selection and weight format: what every command that runs a model needs.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// A GGUF file path or a manifest model name.
    #[arg(short, long, default_value = "smollm2-135m-instruct")]
    pub model: String,
    /// Weight format the linear layers are converted to at load: f32 (exact reference), f16,
    /// int8 (per-row scale; activations are int8-quantized before Top-K, as in Q-Sparse), or t2
    /// (ternary, 2 bits a weight: a ternary file's weights exactly, any other ternarized as
    /// BitNet b1.58 does, which only models trained for it survive). Default: the format a packed
    /// file (`qsparse pack`) holds, t2 for a file whose projections are stored ternary (TQ1_0,
    /// TQ2_0, I2_S), else int8.
    #[arg(long, value_enum)]
    pub weights: Option<WeightsArg>,
    /// With int8 or t2 weights: how many of each activation vector's largest values skip int8
    /// quantization (as int16 at the same scale against int8 weights, in f32 against ternary
    /// ones), so they do not flatten the rest (0 = plain absmax, as in Q-Sparse and BitNet).
    /// Default: 32 with int8 weights, 0 with t2.
    #[arg(long)]
    pub act_outliers: Option<usize>,
    /// How each projection's kept inputs are chosen at --sparsity S: `magnitude` keeps the K
    /// largest |x_j| (Q-Sparse); `weighted` keeps the K largest |x_j|·‖W[:, j]‖ (the input's
    /// magnitude times its weight column's norm). The same K either way. `sweep` takes a
    /// comma-separated list and measures each.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "magnitude")]
    pub select: Vec<SelectArg>,
    /// Worker threads (default: one per core, or $RAYON_NUM_THREADS).
    #[arg(short = 't', long, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub threads: Option<u16>,
    /// Bits per lm_head weight when its input is dense: 8 (Q8 blocks, the default; a file's
    /// Q8_0 head exactly) or 4 (4-bit codes with the same block scales: about half the head's
    /// bytes, at some cost in perplexity, for any --weights). A packed file holds its own.
    #[arg(long, value_parser = ["8", "4"])]
    pub lm_head_bits: Option<String>,
}

/// `--select`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SelectArg {
    Magnitude,
    Weighted,
}

impl From<SelectArg> for Select {
    fn from(s: SelectArg) -> Self {
        match s {
            SelectArg::Magnitude => Select::Magnitude,
            SelectArg::Weighted => Select::Weighted,
        }
    }
}

/// Sampling flags (llama.cpp's defaults).
#[derive(Debug, Clone, clap::Args)]
pub struct SamplingArgs {
    /// Sampling temperature (>= 0); 0 is greedy.
    #[arg(long, default_value_t = 0.8, allow_negative_numbers = true, value_parser = parse_temperature)]
    pub temp: f32,
    /// Keep only the K most likely tokens (0 = all).
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probabilities add up to P (0 < P <= 1).
    #[arg(long, default_value_t = 0.95, allow_negative_numbers = true, value_parser = parse_top_p)]
    pub top_p: f32,
    /// Drop tokens less likely than P times the most likely one (0 <= P <= 1).
    #[arg(long, default_value_t = 0.05, allow_negative_numbers = true, value_parser = parse_unit)]
    pub min_p: f32,
    /// Penalty for tokens among the last 64 (> 0; 1 = off).
    #[arg(long, default_value_t = 1.1, allow_negative_numbers = true, value_parser = parse_penalty)]
    pub repeat_penalty: f32,
    /// Random seed: the same seed reproduces a generation. Default (or -1): a new one each run,
    /// which `--json` reports.
    #[arg(long, allow_negative_numbers = true, value_parser = parse_seed)]
    pub seed: Option<i64>,
}

impl SamplingArgs {
    /// The sampler's configuration, with the seed `--seed` gave or a fresh one.
    pub fn config(&self) -> crate::sample::SamplerConfig {
        crate::sample::SamplerConfig {
            temperature: self.temp,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            seed: match self.seed {
                Some(s) if s >= 0 => s as u64,
                _ => fresh_seed(),
            },
            ..Default::default()
        }
    }
}

/// A seed that differs from run to run (the clock and the process id).
pub fn fresh_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ u64::from(std::process::id()).rotate_left(32)
}

/// A finite number, from a flag's text.
fn parse_number(s: &str) -> Result<f32, String> {
    match s.trim().parse::<f32>() {
        Ok(v) if v.is_finite() => Ok(v),
        _ => Err(format!("`{s}` is not a number")),
    }
}

fn parse_temperature(s: &str) -> Result<f32, String> {
    let v = parse_number(s)?;
    (v >= 0.0)
        .then_some(v)
        .ok_or_else(|| format!("{v} is negative: the temperature is 0 (greedy) or more"))
}

fn parse_top_p(s: &str) -> Result<f32, String> {
    let v = parse_number(s)?;
    (v > 0.0 && v <= 1.0)
        .then_some(v)
        .ok_or_else(|| format!("{v} is outside (0, 1]: P is a probability mass"))
}

fn parse_unit(s: &str) -> Result<f32, String> {
    let v = parse_number(s)?;
    (0.0..=1.0)
        .contains(&v)
        .then_some(v)
        .ok_or_else(|| format!("{v} is outside [0, 1]"))
}

fn parse_penalty(s: &str) -> Result<f32, String> {
    let v = parse_number(s)?;
    (v > 0.0)
        .then_some(v)
        .ok_or_else(|| format!("{v} is not positive (1 turns the penalty off)"))
}

/// A seed: a non-negative integer, or -1 for a fresh one.
fn parse_seed(s: &str) -> Result<i64, String> {
    match s.trim().parse::<i64>() {
        Ok(v) if v >= -1 => Ok(v),
        _ => Err(format!(
            "`{s}` is not a seed (a non-negative integer, or -1 for a random one)"
        )),
    }
}

/// [`LoadArgs`] plus one sparsity for the run.
#[derive(Debug, Clone, clap::Args)]
pub struct ModelArgs {
    #[command(flatten)]
    pub base: LoadArgs,
    /// Q-Sparse ratio S in [0, 1): keep the top (1-S) of each projection's inputs by magnitude.
    /// 0 is the dense model. Default: 0, or the profile a packed file holds (`pack
    /// --sparsity-profile`).
    #[arg(long, value_parser = parse_sparsity)]
    pub sparsity: Option<f32>,
    /// Also sparsify the lm_head input at this ratio (Q-Sparse leaves it dense).
    #[arg(long, default_value_t = 0.0, value_parser = parse_sparsity)]
    pub lm_head_sparsity: f32,
    /// Per-layer ratios from `qsparse calibrate` (a JSON file made for this model file), in place
    /// of --sparsity: the same bytes a token reads as the sparsity it was calibrated for, and
    /// the selection it was calibrated with.
    #[arg(long, conflicts_with = "sparsity")]
    pub sparsity_profile: Option<PathBuf>,
    /// The profile, once read and checked against the model (at load).
    #[arg(skip)]
    profile: std::sync::OnceLock<SparsityProfile>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WeightsArg {
    F32,
    F16,
    Int8,
    T2,
}

impl From<WeightsArg> for WeightFormat {
    fn from(w: WeightsArg) -> Self {
        match w {
            WeightsArg::F32 => WeightFormat::F32,
            WeightsArg::F16 => WeightFormat::F16,
            WeightsArg::Int8 => WeightFormat::Int8,
            WeightsArg::T2 => WeightFormat::Ternary,
        }
    }
}

/// The lm_head layout a run needs: columns only when its input is sparsified.
pub fn head_input(lm_head_sparsity: f32) -> HeadInput {
    if lm_head_sparsity > 0.0 {
        HeadInput::Sparse
    } else {
        HeadInput::Dense
    }
}

pub fn parse_sparsity(s: &str) -> Result<f32, String> {
    let v: f32 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if (0.0..1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!(
            "{v} is outside [0, 1): S is the fraction of inputs dropped"
        ))
    }
}

impl ModelArgs {
    /// The run's sparsity: --sparsity, or the profile's (its layers' ratios then replace it).
    pub fn sparsity(&self) -> Sparsity {
        Sparsity {
            lm_head: self.lm_head_sparsity,
            ..Sparsity::uniform(self.ratio())
        }
    }

    /// The run's uniform ratio S: --sparsity, or the one the profile reads the bytes of.
    pub fn ratio(&self) -> f32 {
        self.profile
            .get()
            .map_or(self.sparsity.unwrap_or(0.0), |p| p.sparsity)
    }

    /// The profile the run uses, if any: where it came from (for reports).
    pub fn profile_source(&self) -> Option<String> {
        self.profile.get().map(|_| match &self.sparsity_profile {
            Some(path) => path.display().to_string(),
            None => "stored in the model file".to_string(),
        })
    }

    /// A run state for this model, with the profile's per-layer ratios and selection if one is
    /// used.
    pub fn run_state(&self, model: &Model, ctx: usize) -> crate::model::RunState {
        let mut state = self.base.run_state(model, ctx);
        if let Some(p) = self.profile.get() {
            state.set_layer_ratios(Some(p.ratios()));
            state.set_select(p.select());
        }
        state
    }

    /// Load the model, its lm_head laid out for a sparse input only if one was asked for, and
    /// the sparsity profile: --sparsity-profile's, checked against the model file, or without
    /// --sparsity the one a packed file holds.
    pub fn load(&self) -> Result<(Model, Tokenizer)> {
        let loaded = self.base.load_for(head_input(self.lm_head_sparsity))?;
        let profile = choose_profile(
            self.sparsity_profile.as_deref(),
            self.sparsity.is_some(),
            &loaded.0,
            &self.base.path()?,
        )?;
        if let Some(profile) = profile {
            let _ = self.profile.set(profile);
        }
        Ok(loaded)
    }
}

/// The profile a run uses: `flag`'s (--sparsity-profile, checked against the model file at
/// `model_path`), else, unless --sparsity was given, the one a packed file holds, else none.
pub fn choose_profile(
    flag: Option<&Path>,
    sparsity_given: bool,
    model: &Model,
    model_path: &Path,
) -> Result<Option<SparsityProfile>> {
    match flag {
        Some(path) => Ok(Some(read_profile(path, model.config.n_layers, model_path)?)),
        None if !sparsity_given => stored_profile(model),
        None => Ok(None),
    }
}

/// The sparsity profile a packed file holds (`pack --sparsity-profile`), checked against the
/// model; saying on stderr that it is used.
pub fn stored_profile(model: &Model) -> Result<Option<SparsityProfile>> {
    let Some(value) = model.file.get(model::pack::KEY_SPARSITY_PROFILE) else {
        return Ok(None);
    };
    let key = model::pack::KEY_SPARSITY_PROFILE;
    let json = value
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("the model's {key} is not a string"))?;
    let profile: SparsityProfile = serde_json::from_str(json)
        .map_err(|e| anyhow::anyhow!("the model's {key} is not a sparsity profile: {e}"))?;
    profile
        .check_shape(model)
        .map_err(|why| anyhow::anyhow!("the model's {key} does not fit it: {why}"))?;
    eprintln!(
        "running with the sparsity profile stored in the model (the bytes of S = {}, calibrated \
         on {}); --sparsity 0 runs dense",
        profile.sparsity, profile.calibration_text
    );
    Ok(Some(profile))
}

/// Read a sparsity profile and check it against the model file at `model_path` (of `n_layers`
/// layers).
pub fn read_profile(path: &Path, n_layers: usize, model_path: &Path) -> Result<SparsityProfile> {
    let text = read_text(path)?;
    let profile: SparsityProfile = serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{} is not a sparsity profile: {e}", path.display()))?;
    let sha = hub::sha256_file(model_path)?;
    profile
        .check(n_layers, &sha)
        .map_err(|why| anyhow::anyhow!("{} does not fit this model: {why}", path.display()))?;
    Ok(profile)
}

/// The file of `model` (a path or a manifest name); a manifest model that is not here yet is
/// fetched first (saying so on stderr).
pub fn model_path_or_pull(model: &str) -> Result<PathBuf> {
    match hub::resolve(model, &models_dir()) {
        Err(hub::ModelError::NotDownloaded { name, .. }) => {
            let manifest = hub::Manifest::builtin();
            let entry = manifest
                .find(&name)
                .ok_or_else(|| anyhow::anyhow!("`{name}` vanished from the manifest"))?;
            eprintln!(
                "{name} is not here yet: fetching it ({} MB, once) into {}",
                entry.size / 1_000_000,
                models_dir().display()
            );
            hub::pull(entry, &models_dir(), &mut |line| eprintln!("{line}"))?;
            Ok(hub::resolve(model, &models_dir())?)
        }
        other => Ok(other?),
    }
}

impl LoadArgs {
    pub fn path(&self) -> Result<PathBuf> {
        Ok(hub::resolve(&self.model, &models_dir())?)
    }

    /// `--select`: its one method (a list is refused at load, except by `sweep`, which loads
    /// with each of its methods in turn).
    pub fn select(&self) -> Select {
        self.select.first().map_or(Select::Magnitude, |&s| s.into())
    }

    /// Like [`LoadArgs::path`], but a manifest model that is not here yet is fetched first
    /// (saying so on stderr).
    pub fn path_or_pull(&self) -> Result<PathBuf> {
        model_path_or_pull(&self.model)
    }

    /// The weight format to load `file` in: `--weights`, else a packed file's, else the file's
    /// own (t2 when its projections are stored ternary, int8 otherwise).
    fn format_for(&self, file: &GgufFile) -> WeightFormat {
        self.weights
            .map(WeightFormat::from)
            .or_else(|| model::pack::weight_format(file))
            .unwrap_or_else(|| model::weights::default_format(file))
    }

    /// A run state for this model with the chosen options.
    pub fn run_state(&self, model: &Model, ctx: usize) -> crate::model::RunState {
        let mut state = crate::model::RunState::new(&model.config, model.weights.format, ctx);
        state.set_isa(forced_isa());
        state.set_select(self.select());
        if let Some(n) = self.act_outliers {
            state.set_activation_outliers(n);
        }
        state
    }

    /// Load the model with the lm_head laid out for `head_input`, with a progress bar on a
    /// terminal.
    pub fn load_for(&self, head_input: HeadInput) -> Result<(Model, Tokenizer)> {
        self.load_path(self.path()?, head_input)
    }

    /// [`LoadArgs::load_for`] a dense head input, fetching a manifest model first when it is not
    /// here yet.
    pub fn load_or_pull(&self) -> Result<(Model, Tokenizer)> {
        self.load_path(self.path_or_pull()?, HeadInput::Dense)
    }

    fn load_path(&self, path: PathBuf, head_input: HeadInput) -> Result<(Model, Tokenizer)> {
        if self.select.len() > 1 {
            anyhow::bail!("--select takes one method here (only `sweep` compares several)");
        }
        if let Some(n) = self.threads {
            // Before any parallel work: loading converts tensors on the pool.
            rayon::ThreadPoolBuilder::new()
                .num_threads(usize::from(n))
                .build_global()
                .map_err(|e| anyhow::anyhow!("cannot start {n} worker threads: {e}"))?;
        }
        let cannot = || format!("cannot load {}", path.display());
        let file = GgufFile::open(&path).with_context(cannot)?;
        let format = self.format_for(&file);
        let bar = if std::io::stderr().is_terminal() {
            let b = ProgressBar::new(0);
            b.set_style(
                ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} tensors")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            b.set_message(format!("loading {} as {}", path.display(), format.name()));
            Some(b)
        } else {
            None
        };
        let progress = |done: usize, total: usize| {
            if let Some(b) = &bar {
                b.set_length(total as u64);
                b.set_position(done as u64);
            }
        };
        let options = LoadOptions {
            format,
            head_input,
            // `QSPARSE_NO_HUGE_PAGES=1` keeps the weights on ordinary pages, to measure what
            // huge pages bring.
            huge_pages: std::env::var_os("QSPARSE_NO_HUGE_PAGES").is_none_or(|v| v == "0"),
            head_bits: match self.lm_head_bits.as_deref() {
                Some("4") => Some(CodeBits::Four),
                Some(_) => Some(CodeBits::Eight),
                None => None,
            },
        };
        let loaded = model::load_file(file, &options, &progress).with_context(cannot)?;
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        Ok(loaded)
    }
}

/// Where model files live, wherever a command runs: `$QSPARSE_MODELS`, else the per-user cache
/// (`$XDG_CACHE_HOME/qsparse/models`, `~/.cache/qsparse/models`).
pub fn models_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("QSPARSE_MODELS").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    cache.join("qsparse").join("models")
}

/// The kernels' instruction-set level: the best this CPU has, unless `QSPARSE_ISA` names
/// another it has (`scalar`, `avx2`, `avx512`, `neon`), to compare levels end to end.
pub fn forced_isa() -> qsparse_kernels::Isa {
    let name = std::env::var(qsparse_kernels::ISA_VARIABLE).ok();
    qsparse_kernels::Isa::choose(name.as_deref())
}

/// Write `value` as pretty JSON to `path`: atomically (a temp file beside it, renamed into
/// place), with the permissions a new file gets under the umask.
pub fn write_json_file(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    use std::io::Write as _;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = crate::gguf::new_file_builder(".qsparse-write-")
        .tempfile_in(dir)
        .with_context(|| format!("cannot write in {}", dir.display()))?;
    serde_json::to_writer_pretty(&mut tmp, value)?;
    tmp.write_all(b"\n")?;
    tmp.persist(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Read a UTF-8 text file, naming the file and the first bad byte when it is not UTF-8.
pub fn read_text(path: &std::path::Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!(
            "{} is not valid UTF-8 (byte {})",
            path.display(),
            e.utf8_error().valid_up_to()
        )
    })
}

/// The context length of a session: `--ctx` if given (checked against the model), else the
/// model's, at most 4096 (the KV cache is allocated whole).
pub fn context_length(asked: Option<usize>, model: &Model) -> Result<usize> {
    let max = model.config.context_length;
    let ctx = asked.unwrap_or(max.min(4096));
    if ctx < 2 || ctx > max {
        anyhow::bail!("--ctx {ctx} is outside 2..={max} (the model's context length)");
    }
    check_kv_cache(model, ctx)?;
    Ok(ctx)
}

/// Refuse a context whose KV cache (keys and values in half precision, every layer) would not
/// fit in this machine's memory, before allocating it: a file may claim any context length.
pub fn check_kv_cache(model: &Model, ctx: usize) -> Result<()> {
    let c = &model.config;
    let bytes = 2 * 2 * (c.n_layers * c.n_kv_heads * c.head_dim) as u128 * ctx as u128;
    if let Some(total) = physical_memory() {
        if bytes > u128::from(total) {
            anyhow::bail!(
                "a context of {ctx} tokens needs {:.1} GB of KV cache, more than this machine's \
                 {:.1} GB of memory: use a smaller --ctx",
                bytes as f64 / 1e9,
                total as f64 / 1e9
            );
        }
    }
    Ok(())
}

/// This machine's memory in bytes (`MemTotal` of /proc/meminfo), where the OS says.
fn physical_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kb.checked_mul(1024)
}
