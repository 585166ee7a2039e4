//! A layer's attention for a pass's tokens: every query head of every token over the KV cache
//! up to its own position (causal), split across the workers in one parallel region.

use half::f16;
use qsparse_kernels::attention::{self, CacheValue, KvHead};
use qsparse_kernels::Isa;

/// One layer's attention inputs for a pass's tokens: their rotated queries and the layer's key
/// and value cache, head-major (each key/value head's positions one after another, `keys.len() /
/// n_kv` values per head). Head-major, a head's keys are one sequential stream, where
/// position-major a head read 128 of every 384 bytes in strided misses (the attention phase of
/// `qsparse bench --profile` shows it).
pub(super) struct Attention<'a> {
    /// Token t's query heads start at `t * q_stride` (its row of the stacked q/k/v product).
    pub(super) q: &'a [f32],
    pub(super) q_stride: usize,
    pub(super) keys: &'a [f16],
    pub(super) values: &'a [f16],
    /// The first token sees positions 0..positions, the next one more, and so on.
    pub(super) positions: usize,
    pub(super) tokens: usize,
    pub(super) n_heads: usize,
    pub(super) head_dim: usize,
    /// Query heads per key/value head.
    pub(super) group: usize,
    pub(super) scale: f32,
}

/// Below this many multiply-adds per layer (heads × positions × head_dim over the pass's
/// tokens), attention stays on one thread (SmolLM2 decoding: below 15 positions): below it a
/// parallel region costs more than it saves (`qsparse bench --profile`, attention phase).
pub(super) const PARALLEL_ATTENTION_MIN: usize = 8 * 1024;

/// The largest widened copy of a layer's cache a batched pass makes (see [`attend`]): it stays
/// in cache while the batch's tokens read it, and the scratch stays small at long contexts (a
/// larger one takes the half-precision cache as it is).
const MAX_WIDENED_BYTES: usize = 4 << 20;

/// Scaled dot-product attention of every token's query heads over the cache, into `out` (token
/// t's heads at t · n_heads · head_dim). The kernel takes a key/value head with the query heads
/// that share it (reading each cached key and value once for all of them). The (token, query
/// head) pairs, in order, are split into one contiguous share per worker of about equal work
/// (a pair's work is its token's positions), so a pass of many tokens costs one parallel region
/// a layer, not one a token (the attention phase of `bench --profile`, prompt passes); a share
/// may begin or end inside a key/value head's group, whose query heads are computed the same
/// way whoever runs them. A pass of several tokens first widens the cached keys and values it
/// reads to f32 (exact; up to [`MAX_WIDENED_BYTES`]), which the kernel then reads without a
/// conversion per key: 1.5x faster (`examples/attention_speed.rs`), and each one is read by
/// every token of the pass.
pub(super) fn attend(isa: Isa, a: Attention, ctx: usize, scratch: &mut Scratch, out: &mut [f32]) {
    let (hd, n_q) = (a.head_dim, a.n_heads);
    assert!(out.len() == a.tokens * n_q * hd && a.positions + a.tokens - 1 <= ctx);
    let pairs = a.tokens * n_q;
    let work = |pair: usize| a.positions + pair / n_q;
    let total: usize = (0..a.tokens).map(|t| (a.positions + t) * n_q).sum();
    let threads = rayon::current_num_threads();
    let shares = if total * hd < PARALLEL_ATTENTION_MIN {
        1
    } else {
        threads.min(pairs)
    };
    let per_share = a.group * ctx;
    let Scratch { scores, wide } = scratch;
    if scores.len() < shares * per_share {
        scores.resize(shares * per_share, 0.0);
    }
    // Share s covers pairs bounds[s]..bounds[s + 1].
    let mut bounds = vec![0];
    let mut done = 0;
    for pair in 0..pairs {
        done += work(pair);
        if bounds.len() < shares && done * shares >= total * bounds.len() {
            bounds.push(pair + 1);
        }
    }
    bounds.push(pairs);
    let mut parts = Vec::with_capacity(shares);
    let (mut rest, mut scratches) = (out, scores.chunks_exact_mut(per_share));
    for w in bounds.windows(2) {
        let (share, tail) = rest.split_at_mut((w[1] - w[0]) * hd);
        rest = tail;
        parts.push((
            w[0],
            share,
            scratches.next().expect("one scratch per share"),
        ));
    }
    // Cache rows per key/value head.
    let n_kv = n_q / a.group;
    let rows = a.keys.len() / n_kv / hd;
    let last = a.positions + a.tokens - 1;
    if a.tokens == 1 || 2 * n_kv * last * hd * 4 > MAX_WIDENED_BYTES {
        let cache = (a.keys, a.values, rows);
        run_shares(isa, &a, cache, parts, ctx);
    } else {
        // Positions 0..last of each head, widened into rows of `last`.
        wide.resize(2 * n_kv * last * hd, 0.0);
        let (keys, values) = wide.split_at_mut(n_kv * last * hd);
        for h in 0..n_kv {
            let (from, to) = (
                h * rows * hd..(h * rows + last) * hd,
                h * last * hd..(h + 1) * last * hd,
            );
            f16::widen(&a.keys[from.clone()], &mut keys[to.clone()]);
            f16::widen(&a.values[from], &mut values[to]);
        }
        run_shares(isa, &a, (keys, values, last), parts, ctx);
    }
}

/// Scratch of [`attend`]: one group's score rows per worker, and a pass's widened cache.
#[derive(Debug, Default)]
pub(super) struct Scratch {
    scores: Vec<f32>,
    wide: Vec<f32>,
}

/// The shares (first pair, their output, their score rows), on the pool when more than one, over
/// `cache`: keys, values and rows per key/value head.
fn run_shares<E: CacheValue + Sync>(
    isa: Isa,
    a: &Attention,
    cache: (&[E], &[E], usize),
    parts: Vec<(usize, &mut [f32], &mut [f32])>,
    ctx: usize,
) {
    let run = |(first, share, scratch): (usize, &mut [f32], &mut [f32])| {
        pairs_of(isa, a, cache, first, share, scratch, ctx)
    };
    if parts.len() == 1 {
        parts.into_iter().for_each(run);
    } else {
        use rayon::prelude::*;
        parts.into_par_iter().for_each(run);
    }
}

/// The pairs first.. of `out.len() / head_dim` (token, query head) pairs, into `out`.
fn pairs_of<E: CacheValue>(
    isa: Isa,
    a: &Attention,
    (keys, values, rows): (&[E], &[E], usize),
    first: usize,
    out: &mut [f32],
    scores: &mut [f32],
    ctx: usize,
) {
    let (hd, n_q, group) = (a.head_dim, a.n_heads, a.group);
    let end = first + out.len() / hd;
    let mut pair = first;
    while pair < end {
        let (t, q) = (pair / n_q, pair % n_q);
        let kvh = q / group;
        // Up to the end of this key/value head's group, of this token, of the share.
        let q_end = ((kvh + 1) * group).min(q + end - pair);
        let positions = a.positions + t;
        let head = kvh * rows * hd..(kvh * rows + positions) * hd;
        let row = &a.q[t * a.q_stride..];
        let h = KvHead {
            queries: &row[q * hd..q_end * hd],
            keys: &keys[head.clone()],
            values: &values[head],
            stride: hd,
            offset: 0,
            head_dim: hd,
            scale: a.scale,
        };
        let o = (pair - first) * hd..(pair - first + q_end - q) * hd;
        attention::attend(isa, h, &mut scores[..(q_end - q) * ctx], ctx, &mut out[o]);
        pair += q_end - q;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Splitting the (token, query head) pairs across workers (a key/value head's group between
    /// two of them) and taking many tokens at once change no bit: each token's query head is
    /// computed the same way whoever runs it, alone or in a batch, over a widened copy of the
    /// cache or (past [`MAX_WIDENED_BYTES`]) the cache itself.
    #[test]
    pub(super) fn parallel_and_batched_attention_equal_the_serial_one() {
        batches_equal_one_token_at_a_time(290, 320);
        let long = MAX_WIDENED_BYTES / (2 * 3 * 64 * 4) + 10;
        batches_equal_one_token_at_a_time(long, long + 10);
    }

    fn batches_equal_one_token_at_a_time(first: usize, ctx: usize) {
        let mut seed = 3u32;
        let mut rnd = || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as f32 / (1 << 23) as f32 - 1.0
        };
        // SmolLM2's heads: 9 query heads over 3 key/value heads of 64; enough positions to go
        // parallel. Each token's row holds q then (here unused) k and v, as the pass lays it out.
        let (hd, n_q, n_kv, tokens) = (64, 9, 3, 7);
        let (kv_dim, q_stride) = (n_kv * hd, (n_q + 2 * n_kv) * hd);
        let q: Vec<f32> = (0..tokens * q_stride).map(|_| rnd()).collect();
        let mut half = || f16::from_f32(rnd());
        // Head-major, ctx rows per head of which `first + tokens - 1` are filled.
        let keys: Vec<f16> = (0..ctx * kv_dim).map(|_| half()).collect();
        let values: Vec<f16> = (0..ctx * kv_dim).map(|_| half()).collect();
        let run = |threads: usize, t0: usize, count: usize| {
            let mut scratch = Scratch::default();
            let mut out = vec![0f32; count * n_q * hd];
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let a = Attention {
                q: &q[t0 * q_stride..],
                q_stride,
                keys: &keys,
                values: &values,
                positions: first + t0,
                tokens: count,
                n_heads: n_q,
                head_dim: hd,
                group: n_q / n_kv,
                scale: 0.125,
            };
            assert!(n_q * hd * (first + t0) >= PARALLEL_ATTENTION_MIN);
            pool.install(|| attend(Isa::best(), a, ctx, &mut scratch, &mut out));
            out
        };
        // One token at a time on one thread: the reference.
        let serial: Vec<f32> = (0..tokens).flat_map(|t| run(1, t, 1)).collect();
        assert!(serial.iter().all(|v| v.is_finite()));
        let same = |other: &[f32]| {
            serial
                .iter()
                .zip(other)
                .all(|(a, b)| a.to_bits() == b.to_bits())
        };
        for threads in [1, 2, 3, 4] {
            let each: Vec<f32> = (0..tokens).flat_map(|t| run(threads, t, 1)).collect();
            assert!(same(&each), "one token a call, {threads} threads");
            assert!(
                same(&run(threads, 0, tokens)),
                "{tokens} tokens a call, {threads} threads"
            );
        }
        // A different token changes the output: the comparison sees the queries.
        assert!(!same(
            &(0..tokens)
                .flat_map(|t| run(1, (t + 1) % tokens, 1))
                .collect::<Vec<_>>()
        ));
    }
}
