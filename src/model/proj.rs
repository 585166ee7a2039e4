//! The projections of a transformer block, named once: loading, packing, the forward pass, its
//! traffic counters, its profile and its sparsity ratios all speak of them through [`Proj`] (one
//! linear layer) and [`Stack`] (the projections that read one input, stacked by rows into one
//! matrix, so that they take one selection and one product per token).

use super::config::ModelConfig;
use super::profile::Phase;
use crate::gguf::GgufFile;

/// One linear layer of a block, or the lm_head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proj {
    /// The query projection.
    Q,
    /// The key projection.
    K,
    /// The value projection.
    V,
    /// The attention output projection.
    O,
    /// The feed-forward gate.
    Gate,
    /// The feed-forward up projection.
    Up,
    /// The feed-forward down projection.
    Down,
    /// The vocabulary head.
    LmHead,
}

impl Proj {
    /// Every projection, in the order a forward pass runs them.
    pub const ALL: [Proj; 8] = [
        Proj::Q,
        Proj::K,
        Proj::V,
        Proj::O,
        Proj::Gate,
        Proj::Up,
        Proj::Down,
        Proj::LmHead,
    ];

    /// The name reports use: `q`, `k`, `v`, `o`, `gate`, `up`, `down`, `lm_head`.
    pub fn name(self) -> &'static str {
        match self {
            Proj::Q => "q",
            Proj::K => "k",
            Proj::V => "v",
            Proj::O => "o",
            Proj::Gate => "gate",
            Proj::Up => "up",
            Proj::Down => "down",
            Proj::LmHead => "lm_head",
        }
    }

    /// The GGUF tensor of this projection in layer `l` (`blk.N.attn_q.weight`, ...); the head's
    /// is `output.weight` (or the token embedding, when the file ties them).
    pub fn tensor(self, l: usize) -> String {
        match self.stem() {
            Some(stem) => format!("blk.{l}.{stem}.weight"),
            None => "output.weight".to_string(),
        }
    }

    /// The stem of a block's projection tensor (`blk.N.<stem>.weight`); None for the head.
    pub fn stem(self) -> Option<&'static str> {
        Some(match self {
            Proj::Q => "attn_q",
            Proj::K => "attn_k",
            Proj::V => "attn_v",
            Proj::O => "attn_output",
            Proj::Gate => "ffn_gate",
            Proj::Up => "ffn_up",
            Proj::Down => "ffn_down",
            Proj::LmHead => return None,
        })
    }

    /// (d_in, d_out) of this projection in a model of `config`.
    pub fn shape(self, c: &ModelConfig) -> (usize, usize) {
        let (q, kv) = (c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim);
        match self {
            Proj::Q => (c.d_model, q),
            Proj::K | Proj::V => (c.d_model, kv),
            Proj::O => (q, c.d_model),
            Proj::Gate | Proj::Up => (c.d_model, c.d_ff),
            Proj::Down => (c.d_ff, c.d_model),
            Proj::LmHead => (c.d_model, c.vocab_size),
        }
    }
}

/// The projections that read one input, stacked by rows into one matrix: each is one selection
/// (Top-K) and one product per token, with its own sparsity ratio.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stack {
    /// q, k, v: the attention block's normed input.
    Qkv,
    /// o: the attention output.
    O,
    /// gate, up: the feed-forward block's normed input.
    GateUp,
    /// down: the gated activation.
    Down,
    /// The lm_head: the final normed state (dense unless asked otherwise).
    LmHead,
}

impl Stack {
    /// A block's matrices, in the order a layer reads them.
    pub const LAYER: [Stack; 4] = [Stack::Qkv, Stack::O, Stack::GateUp, Stack::Down];

    /// Its projections, in row order.
    pub fn projections(self) -> &'static [Proj] {
        match self {
            Stack::Qkv => &[Proj::Q, Proj::K, Proj::V],
            Stack::O => &[Proj::O],
            Stack::GateUp => &[Proj::Gate, Proj::Up],
            Stack::Down => &[Proj::Down],
            Stack::LmHead => &[Proj::LmHead],
        }
    }

    /// The profile phase its products are timed in.
    pub fn phase(self) -> Phase {
        match self {
            Stack::Qkv => Phase::Qkv,
            Stack::O => Phase::O,
            Stack::GateUp => Phase::GateUp,
            Stack::Down => Phase::Down,
            Stack::LmHead => Phase::LmHead,
        }
    }

    /// (d_in, d_out) of the stacked matrix in a model of `config`.
    pub fn shape(self, c: &ModelConfig) -> (usize, usize) {
        let parts = self.projections().iter().map(|p| p.shape(c));
        parts.fold((0, 0), |(_, rows), (d_in, d_out)| (d_in, rows + d_out))
    }

    /// The tensors of `file` that hold this block stack in layer `l`, each (name, d_in, d_out),
    /// in row order: one per projection, or one fused tensor where the file has it (Phi-3's
    /// `attn_qkv`; its `ffn_up` holding gate then up, with no `ffn_gate`).
    pub fn tensors(
        self,
        file: &GgufFile,
        c: &ModelConfig,
        l: usize,
    ) -> Vec<(String, usize, usize)> {
        let (d_in, d_out) = self.shape(c);
        let fused = match self {
            Stack::Qkv => Some(format!("blk.{l}.attn_qkv.weight")),
            Stack::GateUp if file.tensor(&Proj::Gate.tensor(l)).is_none() => {
                Some(Proj::Up.tensor(l))
            }
            _ => None,
        };
        match fused {
            Some(name) if file.tensor(&name).is_some() => vec![(name, d_in, d_out)],
            _ => self
                .projections()
                .iter()
                .map(|p| {
                    let (d_in, d_out) = p.shape(c);
                    (p.tensor(l), d_in, d_out)
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_projection_is_in_exactly_one_stack() {
        let mut seen: Vec<Proj> = Stack::LAYER
            .iter()
            .chain(&[Stack::LmHead])
            .flat_map(|s| s.projections().iter().copied())
            .collect();
        assert_eq!(seen, Proj::ALL, "stacks in forward order");
        seen.dedup();
        assert_eq!(seen.len(), Proj::ALL.len());
    }
}
