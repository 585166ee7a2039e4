#![warn(missing_docs)]
//! qsparse: a CPU-first SIMD inference runtime for Q-Sparse (top-K activation sparsity) LLMs.
//!
//! Data flows one way: file -> mmap tensors ([`gguf`]) -> kernels (`qsparse-kernels`) ->
//! executor ([`model`]) -> sampler ([`sample`]) -> generation ([`runtime`]) -> CLI ([`cli`]) and
//! server ([`server`]). [`measure`] scores and times models; [`hub`] fetches them.

pub mod cli;
pub mod gguf;
pub mod hub;
pub mod measure;
pub mod model;
pub mod runtime;
pub mod sample;
pub mod server;
pub mod synthetic;
pub mod tokenizer;
pub mod train;
