//! What a forward pass read: weight bytes and active weights per projection, and how many of
//! each projection's inputs were zero before Top-K (the counters `bench` and `sweep` report).

/// Weight bytes read and weights used by one forward pass, per projection kind, and how sparse
/// the projections' inputs already were (exact zeros, e.g. after a ReLU) before any Top-K.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Traffic {
    pub bytes: [u64; 8],
    pub active_params: [u64; 8],
    /// Entries of the projection inputs that were exactly zero, and entries in all.
    pub zero_inputs: [u64; 8],
    pub inputs: [u64; 8],
}

impl Traffic {
    pub const NAMES: [&'static str; 8] = ["q", "k", "v", "o", "gate", "up", "down", "lm_head"];

    pub fn total_bytes(&self) -> u64 {
        self.bytes.iter().sum()
    }

    pub fn total_active_params(&self) -> u64 {
        self.active_params.iter().sum()
    }

    pub(super) fn count(&mut self, slot: usize, (bytes, params): (u64, u64)) {
        self.bytes[slot] += bytes;
        self.active_params[slot] += params;
    }

    /// Count the exact zeros of `x`, the input of projection kinds `slots`.
    pub(super) fn record_input(&mut self, slots: &[usize], x: &[f32]) {
        // As a sum of 0/1, which vectorizes (a filtered count did not: 169 against 69 ns for 576
        // entries, hot).
        let zeros = u64::from(x.iter().map(|&v| u32::from(v == 0.0)).sum::<u32>());
        for &s in slots {
            self.zero_inputs[s] += zeros;
            self.inputs[s] += x.len() as u64;
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

/// The part of a stacked product's traffic that belongs to `rows` of its `total` rows.
pub(super) fn share((bytes, params): (u64, u64), rows: usize, total: usize) -> (u64, u64) {
    (
        bytes * rows as u64 / total as u64,
        params * rows as u64 / total as u64,
    )
}
