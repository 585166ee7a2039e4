//! What a forward pass read: weight bytes and active weights per projection, and how many of
//! each projection's inputs were zero before Top-K (the counters `bench` and `sweep` report).

use crate::model::config::ModelConfig;
use crate::model::proj::{Proj, Stack};

/// Weight bytes read and weights used by one token's forward pass, per projection (indexed by
/// `Proj as usize`), and how sparse the projections' inputs already were (exact zeros, e.g.
/// after a ReLU) before any Top-K.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Traffic {
    /// Weight bytes read.
    pub bytes: [u64; 8],
    /// Weights used.
    pub active_params: [u64; 8],
    /// Entries of the projection inputs that were exactly zero, and entries in all.
    pub zero_inputs: [u64; 8],
    /// Entries of the projections' inputs.
    pub inputs: [u64; 8],
}

impl Traffic {
    /// Weight bytes read by every projection.
    pub fn total_bytes(&self) -> u64 {
        self.bytes.iter().sum()
    }

    /// Weights used by every projection.
    pub fn total_active_params(&self) -> u64 {
        self.active_params.iter().sum()
    }

    /// Weight bytes read by projection `p`.
    pub fn bytes_of(&self, p: Proj) -> u64 {
        self.bytes[p as usize]
    }

    /// Count a product of `stack` that read `(bytes, params)`, shared among its projections by
    /// their rows.
    pub(super) fn count(&mut self, c: &ModelConfig, stack: Stack, (bytes, params): (u64, u64)) {
        let total = stack.shape(c).1 as u64;
        for &p in stack.projections() {
            let rows = p.shape(c).1 as u64;
            self.bytes[p as usize] += bytes * rows / total;
            self.active_params[p as usize] += params * rows / total;
        }
    }

    /// Count the exact zeros of `x`, the input of `stack`.
    pub(super) fn record_input(&mut self, stack: Stack, x: &[f32]) {
        // As a sum of 0/1, which vectorizes (a filtered count did not: 169 against 69 ns for 576
        // entries, hot).
        let zeros = u64::from(x.iter().map(|&v| u32::from(v == 0.0)).sum::<u32>());
        for &p in stack.projections() {
            self.zero_inputs[p as usize] += zeros;
            self.inputs[p as usize] += x.len() as u64;
        }
    }

    /// Add `other`'s input counts (zeros and entries) to these, summing over forward passes.
    pub fn add_inputs(&mut self, other: &Traffic) {
        for k in 0..self.inputs.len() {
            self.zero_inputs[k] += other.zero_inputs[k];
            self.inputs[k] += other.inputs[k];
        }
    }

    /// Fraction of all projection inputs that were exactly zero before Top-K.
    pub fn natural_sparsity(&self) -> f64 {
        let n: u64 = self.inputs.iter().sum();
        self.zero_inputs.iter().sum::<u64>() as f64 / n.max(1) as f64
    }
}
