//! Models: configuration from GGUF metadata, weights converted into the kernels' formats, and the
//! llama forward pass with Q-Sparse. Sits between the GGUF layer and the sampler/CLI.

pub mod config;
pub mod llama;
mod math;
pub mod pack;
pub mod profile;
pub mod proj;
pub mod weights;

pub use config::{ConfigError, FfnActivation, ModelConfig};
pub use llama::{ForwardError, Model, RunState, Sparsity, Traffic, PROMPT_BATCH};
pub use profile::{Phase, Profile};
pub use proj::{Proj, Stack};
pub use weights::{ternary_matrix, HeadInput, LmHead, WeightFormat, Weights, WeightsError};

use std::path::Path;

use crate::gguf::{GgufError, GgufFile};
use crate::tokenizer::{Tokenizer, TokenizerError};

/// Why a model could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Weights(#[from] WeightsError),
    #[error("architecture `{0}` is not supported (qsparse runs `llama` and `bitnet`)")]
    Architecture(String),
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
    load_file(GgufFile::open(path)?, format, head_input, progress)
}

/// [`load_for`] an already opened file (the command line reads a packed file's format from it
/// first).
pub fn load_file(
    file: GgufFile,
    format: WeightFormat,
    head_input: HeadInput,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<(Model, Tokenizer), LoadError> {
    let config = ModelConfig::from_gguf(&file)?;
    if !config::ARCHITECTURES.contains(&config.architecture.as_str()) {
        return Err(LoadError::Architecture(config.architecture));
    }
    let tokenizer = Tokenizer::from_gguf(&file)?;
    let weights = Weights::load(&file, &config, format, head_input, progress)?;
    Ok((Model::new(file, config, weights), tokenizer))
}
