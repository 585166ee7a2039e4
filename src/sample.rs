//! Choosing the next token from logits, in llama.cpp's order: repetition penalty → top-k →
//! top-p → min-p → temperature → draw. Temperature 0 is greedy (argmax after the penalty).
//! The random stream is seeded, so a seed reproduces a generation.

/// Sampling settings (the CLI's defaults match llama.cpp's).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplerConfig {
    /// Softmax temperature; 0 is greedy.
    pub temperature: f32,
    /// Keep only the K most likely tokens (0: all).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probabilities reach P.
    pub top_p: f32,
    /// Drop tokens less likely than P times the most likely one.
    pub min_p: f32,
    /// Penalty for tokens among the recent history (1: off).
    pub repeat_penalty: f32,
    /// How many recent tokens the repetition penalty looks at.
    pub repeat_last_n: usize,
    /// Random seed: the same seed gives the same tokens.
    pub seed: u64,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.1,
            repeat_last_n: 64,
            seed: 0x5eed,
        }
    }
}

impl SamplerConfig {
    /// Greedy decoding (always the most likely token).
    pub fn greedy() -> Self {
        SamplerConfig {
            temperature: 0.0,
            repeat_penalty: 1.0,
            ..Self::default()
        }
    }
}

/// A seeded sampler with reusable buffers.
#[derive(Debug, Clone)]
pub struct Sampler {
    config: SamplerConfig,
    state: u64,
    candidates: Vec<(u32, f32)>,
    penalized: Vec<f32>,
    /// Scratch of `top_k` (group maxima) and of the draw (probabilities, weights).
    maxima: Vec<f32>,
    probs: Vec<f32>,
}

impl Sampler {
    /// A sampler with `config`, seeded.
    pub fn new(config: SamplerConfig) -> Sampler {
        Sampler {
            config,
            state: config.seed,
            candidates: Vec::new(),
            penalized: Vec::new(),
            maxima: Vec::new(),
            probs: Vec::new(),
        }
    }

    /// Its configuration.
    pub fn config(&self) -> &SamplerConfig {
        &self.config
    }

    /// SplitMix64: small, fast, and good enough to draw tokens.
    fn next_f32(&mut self) -> f32 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 40) as f32 / (1u64 << 24) as f32
    }

    /// The next token given `logits` and the tokens so far (for the repetition penalty).
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        let c = self.config;
        let logits = if c.repeat_penalty != 1.0 {
            self.penalized.clear();
            self.penalized.extend_from_slice(logits);
            let start = history.len().saturating_sub(c.repeat_last_n);
            for &t in &history[start..] {
                if let Some(l) = self.penalized.get_mut(t as usize) {
                    // llama.cpp: divide positive logits, multiply negative ones.
                    *l = if *l > 0.0 {
                        *l / c.repeat_penalty
                    } else {
                        *l * c.repeat_penalty
                    };
                }
            }
            &self.penalized[..]
        } else {
            logits
        };
        if c.temperature <= 0.0 {
            return argmax(logits);
        }
        let k = if c.top_k == 0 {
            logits.len()
        } else {
            c.top_k.min(logits.len())
        };
        top_k(
            logits,
            k,
            (&mut self.maxima, &mut self.probs),
            &mut self.candidates,
        );
        if self.candidates.is_empty() {
            return 0;
        }

        let u = self.next_f32();
        // Probabilities at temperature 1 for top-p / min-p, as llama.cpp computes them.
        let max = self.candidates[0].1;
        let probs = &mut self.probs;
        probs.clear();
        probs.extend(self.candidates.iter().map(|&(_, l)| (l - max).exp()));
        let sum: f32 = probs.iter().sum();
        let mut keep = self.candidates.len();
        if c.top_p < 1.0 {
            let mut cum = 0.0;
            for (i, p) in probs.iter().enumerate() {
                cum += p / sum;
                if cum >= c.top_p {
                    keep = i + 1;
                    break;
                }
            }
        }
        if c.min_p > 0.0 {
            let threshold = c.min_p * probs[0];
            keep = keep.min(probs.iter().take_while(|&&p| p >= threshold).count().max(1));
        }
        self.candidates.truncate(keep);

        // The draw's weights at the temperature (reusing the probabilities' buffer).
        probs.clear();
        probs.extend(
            self.candidates
                .iter()
                .map(|&(_, l)| ((l - max) / c.temperature).exp()),
        );
        let total: f32 = probs.iter().sum();
        let mut r = u * total;
        for (&(id, _), w) in self.candidates.iter().zip(probs.iter()) {
            if r < *w {
                return id;
            }
            r -= w;
        }
        self.candidates.last().map_or(0, |c| c.0)
    }
}

/// The k largest (id, logit) pairs of `logits` into `out`, largest first (ties: lower id first).
///
/// Sorting all of SmolLM2's 49152 logits took 2-3% of a decode step (`cargo bench --bench
/// sampling`). Here: the maxima of groups of `GROUP` logits (a pass
/// that vectorizes), whose k-th largest is a bar no higher than the k-th largest logit (the k
/// largest maxima are k logits at or above it); only the groups whose maximum reaches the bar are
/// scanned for candidates, and only those are sorted. `scratch`: the maxima and a copy to select
/// in.
fn top_k(
    logits: &[f32],
    k: usize,
    (maxima, select): (&mut Vec<f32>, &mut Vec<f32>),
    out: &mut Vec<(u32, f32)>,
) {
    const GROUP: usize = 64;
    out.clear();
    let by_logit = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    maxima.clear();
    let mut nan = false;
    maxima.extend(logits.chunks(GROUP).map(|c| {
        let (m, has_nan) = group_max(c);
        nan |= has_nan;
        m
    }));
    if k == 0 || k >= maxima.len() || nan {
        // Few groups, or NaN (which `total_cmp` orders and the bar would not): every pair.
        out.extend(logits.iter().enumerate().map(|(i, &l)| (i as u32, l)));
        if k > 0 && k < out.len() {
            out.select_nth_unstable_by(k - 1, by_logit);
        }
        out.truncate(k);
        out.sort_by(by_logit);
        return;
    }
    select.clear();
    select.extend_from_slice(maxima);
    let (_, &mut bar, _) = select.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
    for (g, (chunk, &m)) in logits.chunks(GROUP).zip(maxima.iter()).enumerate() {
        if m >= bar {
            out.extend(
                (chunk.iter().enumerate())
                    .filter(|&(_, &l)| l >= bar)
                    .map(|(i, &l)| ((g * GROUP + i) as u32, l)),
            );
        }
    }
    out.sort_by(by_logit);
    out.truncate(k);
}

/// The largest of a group of logits (−∞ for none, NaN passed over) and whether it holds a NaN.
fn group_max(x: &[f32]) -> (f32, bool) {
    (
        max_ignoring_nan(x),
        x.iter().fold(false, |n, v| n | v.is_nan()),
    )
}

/// The largest value of `x` (−∞ for none), NaN passed over, in 16 lanes so that it vectorizes.
fn max_ignoring_nan(x: &[f32]) -> f32 {
    const LANES: usize = 16;
    let wider = |m: f32, v: f32| if v > m { v } else { m };
    let chunks = x.chunks_exact(LANES);
    let rest = chunks.remainder();
    let mut lanes = [f32::NEG_INFINITY; LANES];
    for c in chunks {
        for (m, &v) in lanes.iter_mut().zip(c) {
            *m = wider(*m, v);
        }
    }
    lanes
        .iter()
        .chain(rest)
        .fold(f32::NEG_INFINITY, |m, &v| wider(m, v))
}

/// The index of the largest value (the first one on ties; NaNs are passed over).
///
/// Two passes that vectorize: the maximum in 16 lanes, then the first chunk holding it. The plain
/// loop (a dependent compare per logit) took 61 µs over SmolLM2's 49152 logits, ~1% of a decode
/// step; this takes 11.
pub fn argmax(x: &[f32]) -> u32 {
    const LANES: usize = 16;
    let chunks = x.chunks_exact(LANES);
    let rest = chunks.remainder();
    let max = max_ignoring_nan(x);
    if max == f32::NEG_INFINITY {
        // Nothing above −∞ (all −∞ or NaN, or empty): the first value that is not NaN, else 0.
        return x.iter().position(|v| !v.is_nan()).unwrap_or(0) as u32;
    }
    let at = |c: &[f32]| c.iter().position(|&v| v == max);
    for (i, c) in chunks.enumerate() {
        if c.iter().fold(false, |hit, &v| hit | (v == max)) {
            return (i * LANES + at(c).unwrap_or(0)) as u32;
        }
    }
    (x.len() - rest.len() + at(rest).unwrap_or(0)) as u32
}

/// log-softmax of `logits` at `index`, in f64.
pub fn log_prob(logits: &[f32], index: usize) -> f64 {
    logits[index] as f64 - log_sum_exp(logits)
}

/// One of the most likely next tokens, as `--logprobs` reports it.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Candidate {
    /// The token id.
    pub id: u32,
    /// Its logit.
    pub logit: f32,
    /// Its log-probability (log-softmax of the logits, in f64).
    pub logprob: f64,
}

/// The `n` most likely next tokens, most likely first (ties by id).
pub fn top_candidates(logits: &[f32], n: usize) -> Vec<Candidate> {
    let n = n.min(logits.len());
    if n == 0 {
        return Vec::new();
    }
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    let order = |&a: &usize, &b: &usize| logits[b].total_cmp(&logits[a]).then(a.cmp(&b));
    idx.select_nth_unstable_by(n - 1, order);
    idx.truncate(n);
    idx.sort_by(order);
    let norm = log_sum_exp(logits);
    idx.iter()
        .map(|&i| Candidate {
            id: i as u32,
            logit: logits[i],
            logprob: logits[i] as f64 - norm,
        })
        .collect()
}

/// ln Σ exp(logits), in f64 after subtracting the maximum (the log-softmax normalizer).
pub fn log_sum_exp(logits: &[f32]) -> f64 {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    logits
        .iter()
        .map(|&l| (l as f64 - max).exp())
        .sum::<f64>()
        .ln()
        + max
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_is_the_first_largest_value() {
        let naive = |x: &[f32]| {
            let mut best = 0;
            for (i, &v) in x.iter().enumerate() {
                if v > x[best] {
                    best = i;
                }
            }
            best as u32
        };
        let mut seed = 5u64;
        for n in [1usize, 2, 15, 16, 17, 31, 100, 49152] {
            for levels in [3u64, 1000] {
                // Few levels: the maximum repeats, so the first occurrence must win.
                let x: Vec<f32> = (0..n)
                    .map(|_| {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        (seed % levels) as f32 - 2.0
                    })
                    .collect();
                assert_eq!(argmax(&x), naive(&x), "n={n} levels={levels}");
            }
        }
        let mut x = vec![f32::NEG_INFINITY; 40];
        assert_eq!(argmax(&x), 0);
        x[33] = f32::INFINITY;
        x[35] = f32::INFINITY;
        assert_eq!(argmax(&x), 33);
        x[1] = f32::NAN;
        assert_eq!(argmax(&x), 33);
        assert_eq!(argmax(&[]), 0);
        assert_eq!(argmax(&[f32::NAN, f32::NAN, -1.0]), 2);
    }

    #[test]
    fn greedy_is_argmax_after_penalty() {
        let logits = [1.0, 3.0, 2.9, -1.0];
        let mut s = Sampler::new(SamplerConfig::greedy());
        assert_eq!(s.sample(&logits, &[]), 1);
        let mut s = Sampler::new(SamplerConfig {
            repeat_penalty: 1.5,
            ..SamplerConfig::greedy()
        });
        assert_eq!(s.sample(&logits, &[1]), 2, "3.0 / 1.5 = 2.0 < 2.9");
    }

    #[test]
    fn seeded_sampling_reproduces_and_respects_top_k() {
        let logits: Vec<f32> = (0..100).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        let cfg = SamplerConfig {
            top_k: 5,
            temperature: 1.5,
            top_p: 1.0,
            min_p: 0.0,
            ..SamplerConfig::default()
        };
        let draw = |seed| {
            let mut s = Sampler::new(SamplerConfig { seed, ..cfg });
            (0..200).map(|_| s.sample(&logits, &[])).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
        let mut top: Vec<u32> = (0..100).collect();
        top.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
        let allowed = &top[..5];
        let drawn = draw(9);
        assert!(drawn.iter().all(|t| allowed.contains(t)));
        assert!(
            allowed.iter().filter(|t| drawn.contains(t)).count() >= 3,
            "temperature spreads the draws"
        );
    }

    /// The k largest by logit (ties: lower id first), as sorting every pair gives them: random
    /// logits with many ties (few levels), −∞, NaN (which takes the every-pair path), k from 0
    /// past the number of groups, lengths around the groups of 64.
    #[test]
    fn top_k_equals_sorting_every_pair() {
        let mut seed = 3u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let (mut maxima, mut select, mut got) = (Vec::new(), Vec::new(), Vec::new());
        for n in [1usize, 63, 64, 65, 640, 5000] {
            for levels in [4u64, 100_000] {
                for special in [None, Some(f32::NEG_INFINITY), Some(f32::NAN)] {
                    let mut x: Vec<f32> = (0..n)
                        .map(|_| (next() % levels) as f32 * 0.25 - 3.0)
                        .collect();
                    if let Some(v) = special {
                        x[n / 2] = v;
                    }
                    let mut all: Vec<(u32, f32)> =
                        x.iter().enumerate().map(|(i, &l)| (i as u32, l)).collect();
                    all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                    for k in [0, 1, 2, 40, n / 64, n / 64 + 1, n] {
                        let k = k.min(n);
                        top_k(&x, k, (&mut maxima, &mut select), &mut got);
                        let want = &all[..k];
                        assert!(
                            got.len() == k
                                && got
                                    .iter()
                                    .zip(want)
                                    .all(|(a, b)| a.0 == b.0 && a.1.to_bits() == b.1.to_bits()),
                            "n {n} levels {levels} {special:?} k {k}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn log_prob_is_normalized() {
        let logits = [0.5f32, -1.0, 2.0, 0.0];
        let total: f64 = (0..4).map(|i| log_prob(&logits, i).exp()).sum();
        assert!((total - 1.0).abs() < 1e-12);
    }
}
