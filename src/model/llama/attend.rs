//! A layer's decode attention for one token: every query head over the KV cache, split across
//! the workers for long contexts.

use half::f16;
use qsparse_kernels::attention::{self, KvHead};
use qsparse_kernels::Isa;

/// One layer's attention inputs for the current token: its rotated queries and the layer's key
/// and value cache, head-major (each key/value head's positions one after another, `keys.len() /
/// n_kv` values per head), of which positions 0..`positions` are filled. Head-major, a head's keys
/// are one sequential stream, where position-major a head read 128 of every 384 bytes in strided
/// misses (the attention phase of `qsparse bench --profile` shows it).
pub(super) struct Attention<'a> {
    pub(super) q: &'a [f32],
    pub(super) keys: &'a [f16],
    pub(super) values: &'a [f16],
    pub(super) positions: usize,
    pub(super) head_dim: usize,
    /// Query heads per key/value head.
    pub(super) group: usize,
    pub(super) scale: f32,
}

/// Below this many multiply-adds per layer (heads × positions × head_dim), attention stays on one
/// thread (SmolLM2: below 15 positions): below it a parallel region costs more than it saves
/// (`qsparse bench --profile`, attention phase).
pub(super) const PARALLEL_ATTENTION_MIN: usize = 8 * 1024;

/// Scaled dot-product attention of every query head over the cache, into `out`; `scores` holds
/// one row of ctx scores per query head. The kernel takes a key/value head with the query heads
/// that share it (reading each cached key and value once for all of them); long contexts split
/// the query heads evenly across the rayon pool, a key/value head's group split between two
/// workers where a share ends inside it (each query head's arithmetic is the same either way).
pub(super) fn attend(isa: Isa, a: Attention, scores: &mut [f32], out: &mut [f32]) {
    let (hd, group, positions) = (a.head_dim, a.group, a.positions);
    let n_q = a.q.len() / hd;
    // Cache rows per key/value head.
    let rows = a.keys.len() / (n_q / group) / hd;
    let ctx = scores.len() / n_q;
    // Query heads q0 .. q0 + out.len() / hd, by key/value head.
    let heads = |q0: usize, scores: &mut [f32], out: &mut [f32]| {
        let q1 = q0 + out.len() / hd;
        let mut q = q0;
        while q < q1 {
            let kvh = q / group;
            let end = ((kvh + 1) * group).min(q1);
            let head = kvh * rows * hd..(kvh * rows + positions) * hd;
            let h = KvHead {
                queries: &a.q[q * hd..end * hd],
                keys: &a.keys[head.clone()],
                values: &a.values[head],
                stride: hd,
                offset: 0,
                head_dim: hd,
                scale: a.scale,
            };
            let (s, o) = (
                &mut scores[(q - q0) * ctx..(end - q0) * ctx],
                &mut out[(q - q0) * hd..(end - q0) * hd],
            );
            attention::attend(isa, h, s, ctx, o);
            q = end;
        }
    };
    let threads = rayon::current_num_threads();
    if a.q.len() * positions < PARALLEL_ATTENTION_MIN || threads == 1 {
        heads(0, scores, out);
    } else {
        // Split evenly by query heads: split by key/value heads (3 on 2 workers for SmolLM2),
        // one worker did two thirds of the work.
        use rayon::prelude::*;
        let per = n_q.div_ceil(threads);
        out.par_chunks_mut(per * hd)
            .zip(scores.par_chunks_mut(per * ctx))
            .enumerate()
            .for_each(|(c, (o, s))| heads(c * per, s, o));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Splitting the query heads across workers (a key/value head's group between two of them)
    /// changes no bit: each query head is computed the same way whoever runs it.
    #[test]
    pub(super) fn parallel_attention_equals_the_serial_one() {
        let mut seed = 3u32;
        let mut rnd = || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as f32 / (1 << 23) as f32 - 1.0
        };
        // SmolLM2's heads: 9 query heads over 3 key/value heads of 64; enough positions to go
        // parallel.
        let (hd, n_q, n_kv, positions, ctx) = (64, 9, 3, 300, 320);
        let kv_dim = n_kv * hd;
        let q: Vec<f32> = (0..n_q * hd).map(|_| rnd()).collect();
        let mut half = || f16::from_f32(rnd());
        // Head-major, ctx rows per head of which `positions` are filled.
        let keys: Vec<f16> = (0..ctx * kv_dim).map(|_| half()).collect();
        let values: Vec<f16> = (0..ctx * kv_dim).map(|_| half()).collect();
        assert!(q.len() * positions >= PARALLEL_ATTENTION_MIN);
        let run = |threads: usize| {
            let (mut scores, mut out) = (vec![0f32; n_q * ctx], vec![0f32; n_q * hd]);
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let a = Attention {
                q: &q,
                keys: &keys,
                values: &values,
                positions,
                head_dim: hd,
                group: n_q / n_kv,
                scale: 0.125,
            };
            pool.install(|| attend(Isa::best(), a, &mut scores, &mut out));
            out
        };
        let serial = run(1);
        assert!(serial.iter().all(|v| v.is_finite()));
        for threads in [2, 3, 4] {
            let par = run(threads);
            assert!(
                serial
                    .iter()
                    .zip(&par)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{threads} threads"
            );
        }
    }
}
