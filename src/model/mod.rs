//! Models: configuration from GGUF metadata, weights converted into the kernels' formats, and the
//! llama forward pass with Q-Sparse. Sits between the GGUF layer and the sampler/CLI.

pub mod config;
pub mod llama;
mod load;
mod math;
pub mod pack;
pub mod profile;
pub mod proj;
mod residency;
pub mod weights;

pub use config::{ConfigError, FfnActivation, ModelConfig};
pub use llama::{ForwardError, Model, RunState, Select, Sparsity, Traffic, PROMPT_BATCH};
pub use load::{check_supported, load, load_file, load_for, specifics, LoadError, LoadOptions};
pub use profile::{Phase, Profile};
pub use proj::{Proj, Stack};
pub use weights::{ternary_matrix, HeadInput, LmHead, WeightFormat, Weights, WeightsError};
