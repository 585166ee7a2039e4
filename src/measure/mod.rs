//! Measuring models: scoring text ([`eval`]: perplexity), timing decoding ([`speed`]), the
//! sparsity sweep that puts bytes, speed and quality side by side ([`sweep`]), and the Q-Sparse
//! paper's scaling law ([`scaling`]), and per-layer ratios calibrated on a text ([`calibrate`]).

pub mod calibrate;
pub mod eval;
pub mod scaling;
pub mod speed;
pub mod sweep;
