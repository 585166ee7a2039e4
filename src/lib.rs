//! qsparse: a CPU-first SIMD inference runtime for Q-Sparse (top-K activation sparsity) LLMs.
//!
//! Data flows one way: file -> mmap tensors ([`gguf`]) -> kernels (`qsparse-kernels`) ->
//! executor ([`model`]) -> sampler -> CLI ([`cli`]).

pub mod chat;
pub mod cli;
pub mod conversation;
pub mod eval;
pub mod gguf;
pub mod model;
pub mod models;
pub mod sample;
pub mod scaling;
pub mod server;
pub mod session;
pub mod speed;
pub mod sweep;
pub mod synthetic;
pub mod tokenizer;
