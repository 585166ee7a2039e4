//! Loading a model: the GGUF file's configuration and tokenizer, and its weights either
//! converted into the kernels' formats ([`weights`](super::weights)) or, for a packed file
//! ([`pack`](super::pack)), read in place; then placed in memory.

use std::path::Path;

use super::config::{self, ModelConfig};
use super::pack::{self, PackError};
use super::weights::{self, Embedding, HeadInput, Layer, WeightFormat, Weights, WeightsError};
use super::Model;
use crate::gguf::{dequantize, GgufError, GgufFile};
use crate::tokenizer::{Tokenizer, TokenizerError};

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
    #[error("architecture `{0}` is not supported (qsparse runs `llama` and `bitnet`)")]
    Architecture(String),
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
}

impl LoadOptions {
    /// `format`, a dense head input, huge pages.
    pub fn new(format: WeightFormat) -> LoadOptions {
        LoadOptions {
            format,
            head_input: HeadInput::Dense,
            huge_pages: true,
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
    let config = ModelConfig::from_gguf(&file)?;
    if !config::ARCHITECTURES.contains(&config.architecture.as_str()) {
        return Err(LoadError::Architecture(config.architecture));
    }
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
        let read = pack::matrices(file, config, format, head_input)?;
        progress(1, 1);
        read
    } else {
        weights::convert_all(file, config, format, head_input, progress)?
    };
    let d = config.d_model as u64;
    let norm_of = |name: String, d: u64| -> Result<Vec<f32>, WeightsError> {
        let info = weights::shape(file, &name, &[d])?;
        let mut v = vec![0f32; d as usize];
        dequantize(info.ty, file.tensor_data(&info), &mut v).map_err(|source| {
            WeightsError::Dequant {
                tensor: name.clone(),
                source,
            }
        })?;
        Ok(v)
    };
    let norm = |name: String| norm_of(name, d);
    let q_dim = (config.n_heads * config.head_dim) as u64;
    let sub = |name: String, d: u64| config.sub_norms.then(|| norm_of(name, d)).transpose();
    let mut layers = Vec::with_capacity(config.n_layers);
    for (l, [wqkv, wo, w_gate_up, w_down]) in matrices.into_iter().enumerate() {
        layers.push(Layer {
            attn_norm: norm(format!("blk.{l}.attn_norm.weight"))?,
            wqkv,
            wo,
            ffn_norm: norm(format!("blk.{l}.ffn_norm.weight"))?,
            w_gate_up,
            w_down,
            attn_sub_norm: sub(format!("blk.{l}.attn_sub_norm.weight"), q_dim)?,
            ffn_sub_norm: sub(format!("blk.{l}.ffn_sub_norm.weight"), config.d_ff as u64)?,
        });
    }
    let emb = weights::shape(file, "token_embd.weight", &[d, config.vocab_size as u64])?;
    let mut weights = Weights {
        format,
        embedding: Embedding::new(emb)?,
        layers,
        output_norm: norm("output_norm.weight".to_string())?,
        lm_head,
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
