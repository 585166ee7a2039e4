//! The KV cache: every layer's keys and values of the positions evaluated so far, in half
//! precision, head-major ([layer][kv head][position][head_dim]) so that a head's keys are one
//! sequential stream for attention (see `attend`).

use half::f16;
use half::slice::HalfBitsSliceExt;
use qsparse_kernels::attention::store_f16;
use qsparse_kernels::Isa;

use crate::model::config::ModelConfig;

#[derive(Debug)]
pub(super) struct KvCache {
    /// Held as their bits: a zeroed `Vec<u16>` comes from the OS untouched, its pages made
    /// resident as positions are written, where `vec![f16::ZERO; n]` wrote every entry at once
    /// (94 MB for SmolLM2's 4096 positions before the first token).
    keys: Vec<u16>,
    values: Vec<u16>,
    /// Positions per layer and head.
    pub(super) ctx: usize,
    head_dim: usize,
    kv_dim: usize,
}

impl KvCache {
    pub(super) fn new(c: &ModelConfig, ctx: usize) -> KvCache {
        let kv_dim = c.n_kv_heads * c.head_dim;
        KvCache {
            keys: vec![0; c.n_layers * ctx * kv_dim],
            values: vec![0; c.n_layers * ctx * kv_dim],
            ctx,
            head_dim: c.head_dim,
            kv_dim,
        }
    }

    /// Store one token's keys `k` and values `v` (every kv head) at `pos` of layer l.
    pub(super) fn store(&mut self, isa: Isa, l: usize, pos: usize, k: &[f32], v: &[f32]) {
        let (hd, base) = (self.head_dim, l * self.kv_dim * self.ctx);
        let keys: &mut [f16] = self.keys.reinterpret_cast_mut();
        let values: &mut [f16] = self.values.reinterpret_cast_mut();
        for (h, (k, v)) in k.chunks_exact(hd).zip(v.chunks_exact(hd)).enumerate() {
            let at = base + (h * self.ctx + pos) * hd;
            store_f16(isa, k, &mut keys[at..at + hd]);
            store_f16(isa, v, &mut values[at..at + hd]);
        }
    }

    /// Layer l's keys and values, every kv head's ctx positions one after another.
    pub(super) fn layer(&self, l: usize) -> (&[f16], &[f16]) {
        let span = l * self.kv_dim * self.ctx..(l + 1) * self.kv_dim * self.ctx;
        let keys: &[f16] = self.keys.reinterpret_cast();
        let values: &[f16] = self.values.reinterpret_cast();
        (&keys[span.clone()], &values[span])
    }
}
