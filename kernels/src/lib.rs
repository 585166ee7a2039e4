#![warn(missing_docs)]
//! qsparse-kernels: the SIMD kernels of one Q-Sparse decode step, with no I/O and no model
//! knowledge.
//!
//! 1. [`quant`]: int8 absmax quantization of the activation.
//! 2. [`topk`]: exact Top-K by magnitude and compaction of the kept (index, value) pairs;
//!    [`outliers`]: the few largest activations, kept out of int8 quantization.
//! 3. [`gather`]: y = W·x_sparse over the weight columns of the kept inputs, for ternary (T2),
//!    int8, f16 and f32 weights in the tiled column-major [`layout`]; dense = every column kept.
//!    [`gather_matvec_batch`]: the same for up to 8 activation vectors (a prompt's tokens) at once.
//! 4. [`dense`], [`dense_q8`]: row-major f32/f16 and Q8 (int8 blocks) matvec for the lm_head
//!    (Q8 batched too).
//! 5. [`attention`]: one key/value head's decode-step attention over the KV cache.
//! 6. [`activation`]: SwiGLU's element-wise step (SiLU(gate)·up).
//!
//! Every SIMD kernel runs at a chosen [`Isa`] and has a scalar twin it is tested against.

pub mod activation;
pub mod attention;
pub mod bandwidth;
pub mod dense;
pub mod dense_q8;
pub mod expf;
pub mod gather;
pub mod isa;
pub mod layout;
pub mod memory;
pub mod outliers;
pub mod quant;
pub mod topk;

pub use gather::{
    batch_limit, column_norms, gather_matvec, gather_matvec_batch, BatchInput, Input, MAX_BATCH,
};
pub use isa::{Isa, ISA_VARIABLE};
pub use layout::{ColumnTiles, Format, PackedMatrix, LINES_PER_TILE, LINE_BYTES};
pub use outliers::largest_f32;
pub use quant::{check_finite, quantize_absmax, quantize_with, NonFinite};
pub use topk::{keep_count, topk_f32, topk_i8, Sparse};
