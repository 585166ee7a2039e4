//! Models: their configuration read from GGUF metadata (and, in later steps, their weights and
//! forward pass). Sits between the GGUF layer and the executor.

pub mod config;

pub use config::{ConfigError, ModelConfig};
