//! Loading a model: the GGUF file's configuration and tokenizer, and its weights either
//! converted into the kernels' formats ([`weights`](super::weights)) or, for a packed file
//! ([`pack`](super::pack)), read in place; then placed in memory.

use std::path::Path;

use super::config::{self, ModelConfig};
use super::pack::{self, PackError};
use super::proj::{Proj, Stack};
use super::weights::{self, Embedding, HeadInput, Layer, WeightFormat, Weights, WeightsError};
use super::Model;
use crate::gguf::{dequantize, GgufError, GgufFile};
use crate::tokenizer::{Tokenizer, TokenizerError};
use qsparse_kernels::dense_q8::CodeBits;

/// Why a model could not be loaded.
// Each variant's `#[error]` message is its documentation.
#[allow(missing_docs)]
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Weights(#[from] WeightsError),
    #[error(transparent)]
    Pack(#[from] PackError),
    #[error("architecture `{0}` is not supported (qsparse runs {archs})", archs = config::ARCHITECTURES.join(", "))]
    Architecture(String),
    #[error("tensor `{0}` is not supported for this architecture (the model would run wrongly without it)")]
    UnknownTensor(String),
}

/// How to load a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadOptions {
    /// The format the linear layers run in (a packed file must hold it).
    pub format: WeightFormat,
    /// Whether the lm_head's input may be sparsified, which decides its layout.
    pub head_input: HeadInput,
    /// Put the matrices on 2 MB pages where the OS allows (true unless measuring the
    /// difference: SmolLM2 decodes 5% faster dense and 13% at S = 0.5 with them).
    pub huge_pages: bool,
    /// The lm_head's code width when it is held row-major (a dense head input): None for the
    /// default (8 bits; what a packed file holds), `Four` for the lighter 4-bit head, which any
    /// weight format may ask for.
    pub head_bits: Option<CodeBits>,
}

impl LoadOptions {
    /// `format`, a dense head input, huge pages.
    pub fn new(format: WeightFormat) -> LoadOptions {
        LoadOptions {
            format,
            head_input: HeadInput::Dense,
            huge_pages: true,
            head_bits: None,
        }
    }
}

/// Open a GGUF model file and convert its weights to `format`, for a dense lm_head input.
/// `progress(done, total)` reports converted tensors.
pub fn load(
    path: &Path,
    format: WeightFormat,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<(Model, Tokenizer), LoadError> {
    load_for(path, format, HeadInput::Dense, progress)
}

/// [`load`], with the lm_head laid out for `head_input` (a sparse head input needs columns).
pub fn load_for(
    path: &Path,
    format: WeightFormat,
    head_input: HeadInput,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<(Model, Tokenizer), LoadError> {
    let options = LoadOptions {
        head_input,
        ..LoadOptions::new(format)
    };
    load_file(GgufFile::open(path)?, &options, progress)
}

/// Load an already opened file (the command line reads a packed file's format from it first).
pub fn load_file(
    file: GgufFile,
    options: &LoadOptions,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<(Model, Tokenizer), LoadError> {
    let arch = file.get_str("general.architecture")?;
    if !config::ARCHITECTURES.contains(&arch) {
        return Err(LoadError::Architecture(arch.to_string()));
    }
    let config = ModelConfig::from_gguf(&file)?;
    check_tensors(&file, &config)?;
    let tokenizer = Tokenizer::from_gguf(&file)?;
    let weights = load_weights(&file, &config, options, progress)?;
    Ok((Model::new(file, config, weights), tokenizer))
}

/// Every weight of `file`: a plain file's converted (parallel over tensors), a packed file's
/// (`qsparse pack`) read in place. `progress(done, total)` is called as tensors finish.
fn load_weights(
    file: &GgufFile,
    config: &ModelConfig,
    options: &LoadOptions,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<Weights, LoadError> {
    let (format, head_input) = (options.format, options.head_input);
    let packed = pack::is_packed(file);
    let (matrices, lm_head) = if packed {
        let read = pack::matrices(file, config, format, head_input, options.head_bits)?;
        progress(1, 1);
        read
    } else {
        weights::convert_all(
            file,
            config,
            format,
            head_input,
            options.head_bits,
            progress,
        )?
    };
    let d = config.d_model as u64;
    let norm_of = |name: String, d: u64| vector(file, &name, d as usize);
    let norm = |name: String| norm_of(name, d);
    let q_dim = (config.n_heads * config.head_dim) as u64;
    let sub = |name: String, d: u64| config.sub_norms.then(|| norm_of(name, d)).transpose();
    // Optional vectors: read when the file has them (their presence was checked against the
    // architecture by `check_tensors`).
    let optional = |name: String, d: u64| {
        file.tensor(&name)
            .is_some()
            .then(|| norm_of(name, d))
            .transpose()
    };
    let head_dim = config.head_dim as u64;
    let mut layers = Vec::with_capacity(config.n_layers);
    for (l, mut mats) in matrices.into_iter().enumerate() {
        for (stack, m) in Stack::LAYER.into_iter().zip(&mut mats) {
            m.bias = stack_bias(file, config, stack, l)?;
        }
        let [wqkv, wo, w_gate_up, w_down] = mats;
        layers.push(Layer {
            attn_norm: norm(format!("blk.{l}.attn_norm.weight"))?,
            wqkv,
            wo,
            ffn_norm: norm(format!("blk.{l}.ffn_norm.weight"))?,
            w_gate_up,
            w_down,
            attn_sub_norm: sub(format!("blk.{l}.attn_sub_norm.weight"), q_dim)?,
            ffn_sub_norm: sub(format!("blk.{l}.ffn_sub_norm.weight"), config.d_ff as u64)?,
            q_norm: optional(format!("blk.{l}.attn_q_norm.weight"), head_dim)?,
            k_norm: optional(format!("blk.{l}.attn_k_norm.weight"), head_dim)?,
        });
    }
    // RoPE factors: Llama 3's for every context, else LongRoPE's short and long ones.
    let half = config.rope_dim as u64 / 2;
    let factors = |name: &str| -> Result<Option<Vec<f32>>, WeightsError> {
        let f = optional(name.to_string(), half)?;
        if f.as_ref()
            .is_some_and(|f| f.iter().any(|&x| !(x.is_finite() && x > 0.0)))
        {
            return Err(WeightsError::Unsupported {
                tensor: name.to_string(),
                what: "RoPE frequency factors must be positive numbers".to_string(),
            });
        }
        Ok(f)
    };
    let (rope_factors, rope_factors_long) = match factors("rope_freqs.weight")? {
        Some(f) => (Some(f), None),
        None => (
            factors("rope_factors_short.weight")?,
            factors("rope_factors_long.weight")?,
        ),
    };
    if layers
        .iter()
        .any(|l| l.q_norm.is_some() != l.k_norm.is_some())
    {
        return Err(WeightsError::Unsupported {
            tensor: "blk.N.attn_q_norm.weight".to_string(),
            what: "a layer has a query norm without a key norm, or the reverse".to_string(),
        }
        .into());
    }
    let emb = weights::shape(file, "token_embd.weight", &[d, config.vocab_size as u64])?;
    let mut weights = Weights {
        format,
        embedding: Embedding::new(emb)?,
        layers,
        output_norm: norm("output_norm.weight".to_string())?,
        lm_head,
        output_bias: optional("output.bias".to_string(), config.vocab_size as u64)?,
        rope_factors,
        rope_factors_long,
    };
    // A packed file's matrices are read in place where the OS maps the file with huge pages
    // (advised from its opening, `GgufFile::open`), else copied like converted ones.
    if !packed {
        weights.place_in_memory(options.huge_pages);
    } else {
        let matrices = pack::matrix_bytes(file);
        if !pack::read_in_place(file, matrices.clone()) {
            weights.place_in_memory(options.huge_pages);
            file.release(matrices);
        }
    }
    Ok(weights)
}

/// The one-dimensional tensor `name` of `n` values (a norm's weights, a bias), checked for its
/// shape and dequantized.
fn vector(file: &GgufFile, name: &str, n: usize) -> Result<Vec<f32>, WeightsError> {
    let info = weights::shape(file, name, &[n as u64])?;
    let mut v = vec![0f32; n];
    dequantize(info.ty, file.tensor_data(&info), &mut v).map_err(|source| {
        WeightsError::Dequant {
            tensor: name.to_string(),
            source,
        }
    })?;
    Ok(v)
}

/// The bias added to the outputs of block stack `stack` in layer `l`, stacked like its rows:
/// from one fused tensor (`attn_qkv.bias`; an `ffn_up.bias` covering gate and up), or from one
/// per projection, a projection without one adding 0. None when no projection has one.
fn stack_bias(
    file: &GgufFile,
    config: &ModelConfig,
    stack: Stack,
    l: usize,
) -> Result<Option<Vec<f32>>, WeightsError> {
    let read = |name: &str, n: usize| vector(file, name, n);
    let rows = stack.shape(config).1;
    let fused = match stack {
        Stack::Qkv => Some(format!("blk.{l}.attn_qkv.bias")),
        Stack::GateUp if file.tensor(&format!("blk.{l}.ffn_gate.bias")).is_none() => file
            .tensor(&format!("blk.{l}.ffn_up.bias"))
            .filter(|t| t.dims == [rows as u64])
            .map(|t| t.name.clone()),
        _ => None,
    };
    if let Some(name) = fused.filter(|n| file.tensor(n).is_some()) {
        return read(&name, rows).map(Some);
    }
    let parts: Vec<(String, usize)> = stack
        .projections()
        .iter()
        .map(|p| (bias_name(*p, l), p.shape(config).1))
        .collect();
    if parts.iter().all(|(name, _)| file.tensor(name).is_none()) {
        return Ok(None);
    }
    let mut bias = Vec::with_capacity(rows);
    for (name, n) in parts {
        match file.tensor(&name) {
            Some(_) => bias.extend(read(&name, n)?),
            None => bias.extend(std::iter::repeat_n(0.0, n)),
        }
    }
    Ok(Some(bias))
}

fn bias_name(p: Proj, l: usize) -> String {
    let weight = p.tensor(l);
    format!("{}.bias", weight.strip_suffix(".weight").unwrap_or(&weight))
}

/// What sets this model's architecture apart, in words (`inspect` prints them): the tensors and
/// settings the loader found beyond a plain llama block.
pub fn specifics(file: &GgufFile, config: &ModelConfig) -> Vec<String> {
    let has = |stem: &str| {
        (0..config.n_layers).any(|l| file.tensor(&format!("blk.{l}.{stem}")).is_some())
    };
    let mut out = Vec::new();
    let biases: Vec<&str> = [
        ("attn_q.bias", "q"),
        ("attn_k.bias", "k"),
        ("attn_v.bias", "v"),
        ("attn_qkv.bias", "q/k/v"),
        ("attn_output.bias", "o"),
        ("ffn_gate.bias", "gate"),
        ("ffn_up.bias", "up"),
        ("ffn_down.bias", "down"),
    ]
    .into_iter()
    .filter(|(stem, _)| has(stem))
    .map(|(_, name)| name)
    .collect();
    if !biases.is_empty() {
        out.push(format!("biases on {}", biases.join(", ")));
    }
    if has("attn_qkv.weight") {
        out.push("fused q/k/v tensor".into());
    }
    if !has("ffn_gate.weight") && has("ffn_up.weight") {
        out.push("fused gate/up tensor".into());
    }
    if has("attn_q_norm.weight") {
        out.push("RMSNorm of each query and key head".into());
    }
    if config.sub_norms {
        out.push("sub-norms before o and down".into());
    }
    if config.rope_neox {
        out.push("NeoX RoPE (halves)".into());
    }
    if file.tensor("rope_freqs.weight").is_some() {
        out.push("RoPE frequency factors (Llama 3)".into());
    }
    if file.tensor("rope_factors_long.weight").is_some() {
        out.push(format!(
            "LongRoPE (long factors past {} positions, attention factor {})",
            config.rope_original_context, config.rope_attn_factor
        ));
    }
    if config.rope_freq_scale != 1.0 {
        out.push(format!(
            "linear RoPE scaling x{}",
            1.0 / config.rope_freq_scale
        ));
    }
    if config.n_heads * config.head_dim != config.d_model {
        out.push(format!(
            "heads of {} entries ({} x {} != d_model {})",
            config.head_dim, config.n_heads, config.head_dim, config.d_model
        ));
    }
    let separate = file.tensor("output.weight").is_some() || file.tensor("output.packed").is_some();
    out.push(
        if separate {
            "separate lm_head"
        } else {
            "lm_head tied to the embedding"
        }
        .into(),
    );
    if file.tensor("output.bias").is_some() {
        out.push("logit bias".into());
    }
    out
}

/// Whether qsparse runs `file`: its architecture is one of [`config::ARCHITECTURES`] and it has
/// no tensor that architecture does not read. The error names what is not supported.
pub fn check_supported(file: &GgufFile, config: &ModelConfig) -> Result<(), LoadError> {
    if !config::ARCHITECTURES.contains(&config.architecture.as_str()) {
        return Err(LoadError::Architecture(config.architecture.clone()));
    }
    check_tensors(file, config)
}

/// Refuse a file with a tensor this architecture does not read (a norm's bias, a scaling-factor
/// tensor, experts, ...): running without it would compute something else than the model.
fn check_tensors(file: &GgufFile, config: &ModelConfig) -> Result<(), LoadError> {
    const TOP: [&str; 9] = [
        "token_embd.weight",
        "output_norm.weight",
        "output.weight",
        "output.bias",
        "rope_freqs.weight",
        "rope_factors_short.weight",
        "rope_factors_long.weight",
        "output.packed",
        "output.packed_scale",
    ];
    const PROJECTIONS: [&str; 9] = [
        "attn_q",
        "attn_k",
        "attn_v",
        "attn_qkv",
        "attn_output",
        "ffn_gate",
        "ffn_up",
        "ffn_down",
        "ffn_gate_up",
    ];
    let known = |name: &str| -> bool {
        if TOP.contains(&name) {
            return true;
        }
        let Some((layer, rest)) = name.strip_prefix("blk.").and_then(|r| r.split_once('.')) else {
            return false;
        };
        if !layer.parse::<usize>().is_ok_and(|l| l < config.n_layers) {
            return false;
        }
        let Some((stem, suffix)) = rest.split_once('.') else {
            return false;
        };
        match suffix {
            "weight" | "bias" | "packed" | "packed_scale" if PROJECTIONS.contains(&stem) => true,
            "weight" => match stem {
                "attn_norm" | "ffn_norm" => true,
                "attn_sub_norm" | "ffn_sub_norm" => config.sub_norms,
                "attn_q_norm" | "attn_k_norm" => config.architecture == "qwen3",
                _ => false,
            },
            _ => false,
        }
    };
    match file.tensors().iter().find(|t| !known(&t.name)) {
        Some(t) => Err(LoadError::UnknownTensor(t.name.clone())),
        None => Ok(()),
    }
}
