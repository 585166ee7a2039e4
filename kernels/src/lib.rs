//! qsparse-kernels: the SIMD kernels of the Q-Sparse decode step (no I/O, no model knowledge).
