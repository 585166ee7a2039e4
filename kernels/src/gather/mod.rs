//! Sparse column-gather matvec: y = W·x_sparse, reading only the weight columns of the kept
//! inputs. The dense product is the same kernel with every column kept.
//!
//! One driver serves every format and ISA. It checks the input once; splits the work across the
//! rayon workers (small products stay on one thread) — dense-ish integer products by kept
//! columns, each worker streaming one contiguous stretch of every tile and the int32 partial sums
//! added exactly; sparse or tall ones and float formats by output lines, so no reduction reorders
//! a row's sum — and, per tile, hands the per-format, per-ISA *run kernel* the kept columns. A run
//! kernel sweeps each kept column's run (the column's lines for the tile, see `layout`) from first
//! line to last, four columns at a time, prefetching the next four runs line by line, and adds
//! into per-row accumulators that stay in L1: DRAM sees long sequential reads and skipped columns
//! cost nothing. Integer formats accumulate exactly in integers and apply (γ/127)·scale_i once per
//! row; float formats keep one FMA chain per row in column order, so SIMD and scalar agree bit
//! for bit.
//!
//! Modules: `batch` (up to 8 vectors at once), `driver` (single-vector products), `dispatch`
//! (which run kernels, with the proof that the CPU has them), the run kernels `scalar` (the
//! reference), `avx2`, `avx512` and `neon`, `norms` (column norms) and `runs` (walking column
//! runs; x86 prefetch). Each depends only on those after it in this list; none on this module.

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod batch;
mod dispatch;
mod driver;
#[cfg(target_arch = "aarch64")]
mod neon;
mod norms;
mod runs;
mod scalar;
#[cfg(test)]
mod tests;

pub use batch::{batch_limit, gather_matvec_batch, BatchInput, MAX_BATCH};
pub use driver::{gather_matvec, Input, PARALLEL_MIN_BYTES};
pub use norms::column_norms;
