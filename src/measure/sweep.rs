//! A sparsity sweep: for each ratio S, what a decoded token reads, how fast decoding is (next to
//! the speed the bytes alone would predict and the machine's read bandwidth), and what the
//! sparsity costs in quality against the dense model on the same tokens.
//!
//! Everything is measured in one run so the ratios are side by side: the speed runs are
//! interleaved across the ratios (warm-up round first), and quality is scored on exactly the
//! windows `perplexity` scores with the same `--ctx`, so both tools report the same perplexity.

use std::sync::Arc;

use serde::Serialize;

use crate::measure::eval::{for_each_prediction, window_count, Windows};
use crate::measure::speed::{median, time_decode, DecodeRun};
use crate::model::{ForwardError, Model, Proj, RunState, Select, Sparsity, Traffic};
use crate::sample::{argmax, log_sum_exp};
use qsparse_kernels::{bandwidth, Isa};

/// How a row chooses each projection's kept inputs.
#[derive(Debug, Clone, PartialEq)]
pub enum Method {
    /// The same ratio S for every projection input, Top-K by this score.
    Uniform(Select),
    /// A calibrated profile: ratios per layer and projection input, at the bytes of uniform S.
    Calibrated {
        /// Where the profile came from (its file, or `calibrated here`).
        source: String,
        /// The score it was calibrated with.
        select: Select,
        /// Each layer's [qkv, o, gate_up, down] ratios.
        layers: Arc<[[f32; 4]]>,
    },
}

impl Method {
    /// The method's name on a row: `magnitude`, `weighted` or `calibrated`.
    pub fn name(&self) -> &'static str {
        match self {
            Method::Uniform(select) => select.name(),
            Method::Calibrated { .. } => "calibrated",
        }
    }

    fn select(&self) -> Select {
        match self {
            Method::Uniform(select) | Method::Calibrated { select, .. } => *select,
        }
    }

    /// Set a run state up to select as this method does.
    fn configure(&self, state: &mut RunState) {
        state.set_select(self.select());
        state.set_layer_ratios(match self {
            Method::Uniform(_) => None,
            Method::Calibrated { layers, .. } => Some(layers.clone()),
        });
    }
}

/// One row to measure: a method at the bytes of uniform sparsity S.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// The sparsity S (a calibrated profile's: the uniform ratio whose bytes it reads).
    pub sparsity: f32,
    /// How inputs are chosen.
    pub method: Method,
}

/// What to measure.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Rows to measure; the dense model (S = 0) is always measured first as the reference.
    pub points: Vec<Point>,
    /// Sparsity of the lm_head input at every S other than the dense reference.
    pub lm_head_sparsity: f32,
    /// Quality: windows of `ctx` tokens, the first `windows` of the text.
    pub ctx: usize,
    /// How many windows to score.
    pub windows: usize,
    /// Speed: a prompt of this many tokens, then `gen_tokens` greedy tokens, `runs` times.
    pub prompt_tokens: usize,
    /// Greedy tokens decoded after the prompt.
    pub gen_tokens: usize,
    /// Timed rounds (after a warm-up round).
    pub runs: usize,
}

/// The machine's streaming read rate, measured in the same run.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// Its read rate in GB/s.
    pub read_gb_s: f64,
    /// Worker threads.
    pub threads: usize,
    /// The kernels' instruction-set level.
    pub isa: String,
}

/// Weight traffic and input sparsity of one projection kind, per decoded token.
#[derive(Debug, Clone, Serialize)]
pub struct Projection {
    /// The projection (`q`, ..., `lm_head`).
    pub name: &'static str,
    /// Weight bytes it reads per decoded token.
    pub weight_bytes_per_token: u64,
    /// Weights it uses per decoded token.
    pub active_params: u64,
    /// Fraction of this projection's inputs that were exactly zero before Top-K.
    pub natural_sparsity: f64,
}

/// One sparsity ratio's measurements.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// How inputs were selected: `dense` (the reference), `magnitude`, `weighted` or
    /// `calibrated`.
    pub method: &'static str,
    /// A calibrated row's profile (its file, or `calibrated here`).
    pub profile: Option<String>,
    /// The sparsity S (0: the dense reference); a calibrated row's is the uniform ratio whose
    /// bytes it reads.
    pub sparsity: f32,
    /// Weight bytes one decoded token reads.
    pub weight_bytes_per_token: u64,
    /// Those bytes over dense's.
    pub fraction_of_dense: f64,
    /// Weights used per decoded token.
    pub active_params: u64,
    /// Median decode speed, tok/s.
    pub decode_tok_s: f64,
    /// Median prompt speed, tok/s.
    pub prefill_tok_s: f64,
    /// Measured decode speed over the dense reference's: the median of the rounds' ratios (each
    /// round times every ratio within seconds, so the machine's drifting speed cancels better
    /// than in a ratio of medians).
    pub speedup: f64,
    /// The ratio of the two median speeds.
    pub speedup_of_medians: f64,
    /// Dense bytes over these bytes: the speedup if decoding were only weight reads.
    pub ideal_speedup: f64,
    /// Weight bytes read per second while decoding, GB/s.
    pub effective_gb_s: f64,
    /// effective_gb_s over the machine's read bandwidth.
    pub roofline_fraction: f64,
    /// Perplexity on the scored windows.
    pub ppl: f64,
    /// Mean negative log-likelihood (ln ppl).
    pub mean_nll: f64,
    /// Fraction of positions whose most likely next token equals the dense model's.
    pub top1_agreement: f64,
    /// Mean KL(dense ‖ sparse) of the next-token distributions, in nats.
    pub kl: f64,
    /// Fraction of the projections' inputs exactly zero before Top-K.
    pub natural_sparsity: f64,
    /// Per projection, summed over layers.
    pub projections: Vec<Projection>,
}

/// A finished sweep.
#[derive(Debug, Clone, Serialize)]
pub struct Sweep {
    /// The machine, measured in the same run.
    pub machine: Machine,
    /// Next-token predictions scored per ratio.
    pub n_predictions: usize,
    /// One row per ratio, dense first.
    pub rows: Vec<Row>,
    /// The perplexity of the reference model (dense) when the rows were compared with another
    /// model's predictions than their own dense row's.
    pub reference_ppl: Option<f64>,
}

/// Another model whose dense predictions every row is compared with (top-1 agreement, KL): a
/// fine-tuned model's rows against the model it was tuned from. Same vocabulary.
pub struct ReferenceModel<'a> {
    /// The model.
    pub model: &'a Model,
    /// Its run state with room for `ctx` positions.
    pub new_state: &'a dyn Fn(usize) -> RunState,
}

/// Where a sweep is: `done` of `total` forward passes, and what is running.
pub type Progress<'a> = &'a mut dyn FnMut(u64, u64, &str);

/// Bytes of the buffer the read bandwidth is measured on: far beyond any last-level cache.
const BANDWIDTH_BUFFER: usize = 256 << 20;

/// Memory the stored dense next-token distributions may take.
const MAX_REFERENCE_BYTES: usize = 2 << 30;

/// Why a sweep could not run.
// Each variant's `#[error]` message is its documentation.
#[allow(missing_docs)]
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error(transparent)]
    Forward(#[from] ForwardError),
    #[error(
        "scoring {predictions} predictions against dense needs {gib:.1} GiB for the dense \
         distributions (limit 2 GiB): use fewer tokens"
    )]
    TooManyTokens { predictions: usize, gib: f64 },
    #[error("{0}")]
    Settings(String),
}

/// The rows in measuring order: the dense reference first, then each method's points in the
/// order the methods first appear, S ascending, without repeats (S = 0 of any method is the
/// dense row).
pub fn measuring_order(requested: &[Point]) -> Vec<Point> {
    let mut methods: Vec<&Method> = Vec::new();
    for p in requested.iter().filter(|p| p.sparsity != 0.0) {
        if !methods.contains(&&p.method) {
            methods.push(&p.method);
        }
    }
    let mut order = vec![Point {
        sparsity: 0.0,
        method: Method::Uniform(Select::Magnitude),
    }];
    for method in methods {
        let mut ratios: Vec<f32> = requested
            .iter()
            .filter(|p| p.sparsity != 0.0 && &p.method == method)
            .map(|p| p.sparsity)
            .collect();
        ratios.sort_by(f32::total_cmp);
        ratios.dedup();
        order.extend(ratios.into_iter().map(|sparsity| Point {
            sparsity,
            method: method.clone(),
        }));
    }
    order
}

/// Run the sweep over `tokens` (the text, already tokenized). `new_state(ctx)` makes a run state
/// with room for `ctx` positions.
pub fn run(
    model: &Model,
    new_state: &dyn Fn(usize) -> RunState,
    tokens: &[u32],
    settings: &Settings,
    against: Option<ReferenceModel>,
    progress: Progress,
) -> Result<Sweep, SweepError> {
    let s = settings;
    let predictions = check(model, tokens, s)?;
    if let Some(r) = &against {
        if r.model.config.vocab_size != model.config.vocab_size {
            return Err(SweepError::Settings(format!(
                "the reference model's vocabulary ({}) is not this model's ({})",
                r.model.config.vocab_size, model.config.vocab_size
            )));
        }
    }
    let points = measuring_order(&s.points);
    let passes = points.len() + usize::from(against.is_some());
    let quality_steps = (passes * s.windows * s.ctx) as u64;
    let speed_steps = (points.len() * (s.runs + 1) * (s.prompt_tokens + s.gen_tokens)) as u64;
    let mut steps = Steps {
        done: 0,
        total: quality_steps + speed_steps + 1,
        progress,
    };

    steps.report("measuring the machine's read bandwidth");
    let mut state = new_state(s.ctx);
    let machine = measure_machine(state.isa());
    steps.done = 1;
    let vocab = model.config.vocab_size;
    let mut scoring = Scoring {
        tokens,
        s,
        reference: Reference::new(s.windows * (s.ctx - 1), vocab),
        steps: &mut steps,
    };
    let reference_ppl = match &against {
        Some(r) => {
            let q = scoring.score(r.model, &mut (r.new_state)(s.ctx), &points[0], true)?;
            Some(q.mean_nll().exp())
        }
        None => None,
    };
    let mut quality = Vec::with_capacity(points.len());
    for (i, p) in points.iter().enumerate() {
        // Without another model, the dense pass (first) is the reference.
        let store = i == 0 && against.is_none();
        quality.push(scoring.score(model, &mut state, p, store)?);
    }
    let mut state = new_state(s.prompt_tokens + s.gen_tokens);
    let speed = measure_speed(model, &mut state, tokens, s, &points, &mut steps)?;
    steps.done = steps.total;
    steps.report("done");

    let dense = &speed[0];
    let rows = points
        .iter()
        .zip(&quality)
        .zip(&speed)
        .enumerate()
        .map(|(i, ((p, q), sp))| row(p, i == 0, q, sp, dense, &machine))
        .collect();
    Ok(Sweep {
        machine,
        n_predictions: predictions,
        rows,
        reference_ppl,
    })
}

/// Whether the settings fit the text and memory; the number of predictions scored per ratio.
fn check(model: &Model, tokens: &[u32], s: &Settings) -> Result<usize, SweepError> {
    if s.windows == 0 || window_count(tokens.len(), s.ctx, Some(s.windows)) < s.windows {
        return Err(SweepError::Settings(format!(
            "the text has {} tokens, fewer than {} windows of {}",
            tokens.len(),
            s.windows,
            s.ctx
        )));
    }
    if s.prompt_tokens == 0 || s.gen_tokens == 0 || s.runs == 0 {
        return Err(SweepError::Settings(
            "prompt tokens, generated tokens and runs must each be at least 1".into(),
        ));
    }
    let predictions = s.windows * (s.ctx - 1);
    let reference_bytes = predictions * model.config.vocab_size * 4;
    if reference_bytes > MAX_REFERENCE_BYTES {
        return Err(SweepError::TooManyTokens {
            predictions,
            gib: reference_bytes as f64 / (1u64 << 30) as f64,
        });
    }
    Ok(predictions)
}

/// The sparsity of point p, with its run state set up for p's method: uniform (a calibrated
/// method's layers replace it), the lm_head at the settings' ratio (dense for S = 0).
fn sparsity_at(p: &Point, s: &Settings, state: &mut RunState) -> Sparsity {
    p.method.configure(state);
    let r = p.sparsity;
    if r == 0.0 {
        Sparsity::dense()
    } else {
        Sparsity {
            lm_head: s.lm_head_sparsity,
            ..Sparsity::uniform(r)
        }
    }
}

/// The sweep's progress: forward passes done of all it will run.
struct Steps<'a> {
    done: u64,
    total: u64,
    progress: Progress<'a>,
}

impl Steps<'_> {
    fn report(&mut self, what: &str) {
        (self.progress)(self.done, self.total, what);
    }
}

/// The quality passes of a sweep: the text, the settings, the reference distributions every
/// pass is compared with, and the progress.
struct Scoring<'a, 'p> {
    tokens: &'a [u32],
    s: &'a Settings,
    reference: Reference,
    steps: &'a mut Steps<'p>,
}

impl Scoring<'_, '_> {
    /// One point's quality against the reference; with `store`, this pass is the reference (the
    /// dense pass, which runs first, stores the log-distributions the others are compared with).
    fn score(
        &mut self,
        model: &Model,
        state: &mut RunState,
        p: &Point,
        store: bool,
    ) -> Result<Quality, SweepError> {
        let (s, reference, steps) = (self.s, &mut self.reference, &mut *self.steps);
        let label = format!("quality at S={} ({})", p.sparsity, p.method.name());
        let sparsity = sparsity_at(p, s, state);
        let mut q = Quality::default();
        let mut i = 0;
        let windows = Windows {
            tokens: self.tokens,
            ctx: s.ctx,
            chunks: Some(s.windows),
        };
        for_each_prediction(
            model,
            state,
            windows,
            sparsity,
            &mut |_, _| {},
            &mut |st, next| {
                if store {
                    reference.store(i, st.logits());
                }
                q.add(reference, i, st.logits(), next, st.traffic());
                i += 1;
                steps.done += 1;
                if i % 16 == 0 {
                    steps.report(&label);
                }
            },
        )?;
        // The last token of each window makes no prediction but was still a forward pass.
        steps.done += s.windows as u64;
        Ok(q)
    }
}

/// One point's timed runs, and what one of its decoded tokens read.
struct Speed {
    runs: Vec<DecodeRun>,
    traffic: Traffic,
}

impl Speed {
    fn decode(&self) -> Vec<f64> {
        self.runs.iter().map(|r| r.decode_tok_s).collect()
    }
}

/// Each point's decode speed: interleaved rounds, the first a warm-up.
fn measure_speed(
    model: &Model,
    state: &mut RunState,
    tokens: &[u32],
    s: &Settings,
    points: &[Point],
    steps: &mut Steps,
) -> Result<Vec<Speed>, SweepError> {
    let prompt: Vec<u32> = tokens
        .iter()
        .copied()
        .cycle()
        .take(s.prompt_tokens)
        .collect();
    let mut speed: Vec<Speed> = points
        .iter()
        .map(|_| Speed {
            runs: Vec::new(),
            traffic: Traffic::default(),
        })
        .collect();
    for round in 0..=s.runs {
        for (sp, p) in speed.iter_mut().zip(points) {
            steps.report(&format!(
                "speed at S={} ({}), round {round}/{}",
                p.sparsity,
                p.method.name(),
                s.runs
            ));
            let sparsity = sparsity_at(p, s, state);
            let run = time_decode(model, state, &prompt, s.gen_tokens, sparsity)?;
            steps.done += (s.prompt_tokens + s.gen_tokens) as u64;
            if round > 0 {
                sp.runs.push(run);
            }
            sp.traffic = run.traffic;
        }
    }
    Ok(speed)
}

/// The row of point p (the dense reference: `is_dense`), next to the dense reference's speed.
fn row(
    p: &Point,
    is_dense: bool,
    q: &Quality,
    sp: &Speed,
    dense: &Speed,
    machine: &Machine,
) -> Row {
    let (traffic, dense_bytes) = (&sp.traffic, dense.traffic.total_bytes());
    let bytes = traffic.total_bytes();
    let decode = median(sp.decode());
    let effective_gb_s = bytes as f64 * decode / 1e9;
    Row {
        method: if is_dense { "dense" } else { p.method.name() },
        profile: match &p.method {
            Method::Calibrated { source, .. } if !is_dense => Some(source.clone()),
            _ => None,
        },
        sparsity: p.sparsity,
        weight_bytes_per_token: bytes,
        fraction_of_dense: bytes as f64 / dense_bytes as f64,
        active_params: traffic.total_active_params(),
        decode_tok_s: decode,
        prefill_tok_s: median(sp.runs.iter().map(|r| r.prefill_tok_s).collect()),
        speedup: paired_speedup(&sp.decode(), &dense.decode()),
        speedup_of_medians: decode / median(dense.decode()),
        ideal_speedup: dense_bytes as f64 / bytes as f64,
        effective_gb_s,
        roofline_fraction: effective_gb_s / machine.read_gb_s,
        ppl: q.mean_nll().exp(),
        mean_nll: q.mean_nll(),
        top1_agreement: q.agree as f64 / q.n as f64,
        kl: q.kl / q.n as f64,
        natural_sparsity: q.traffic.natural_sparsity(),
        projections: Proj::ALL
            .iter()
            .map(|&proj| {
                let p = proj as usize;
                Projection {
                    name: proj.name(),
                    weight_bytes_per_token: traffic.bytes[p],
                    active_params: traffic.active_params[p],
                    natural_sparsity: q.traffic.zero_inputs[p] as f64
                        / q.traffic.inputs[p].max(1) as f64,
                }
            })
            .collect(),
    }
}

fn measure_machine(isa: Isa) -> Machine {
    let buf = bandwidth::buffer(BANDWIDTH_BUFFER);
    let read = bandwidth::read_bandwidth(isa, buf.as_slice(), 5);
    Machine {
        read_gb_s: read / 1e9,
        threads: rayon::current_num_threads(),
        isa: isa.name().to_string(),
    }
}

/// The dense model's next-token log-probabilities at every scored position, and its top token.
pub(crate) struct Reference {
    vocab: usize,
    log_probs: Vec<f32>,
    top1: Vec<u32>,
}

impl Reference {
    pub(crate) fn new(predictions: usize, vocab: usize) -> Reference {
        Reference {
            vocab,
            log_probs: vec![0.0; predictions * vocab],
            top1: vec![0; predictions],
        }
    }

    pub(crate) fn store(&mut self, i: usize, logits: &[f32]) {
        let lse = log_sum_exp(logits);
        for (o, &l) in self.log_probs[i * self.vocab..][..self.vocab]
            .iter_mut()
            .zip(logits)
        {
            *o = (l as f64 - lse) as f32;
        }
        self.top1[i] = argmax(logits);
    }

    /// KL(reference ‖ logits) at prediction i, `lse` the logits' log-sum-exp.
    pub(crate) fn kl(&self, i: usize, logits: &[f32], lse: f64) -> f64 {
        let p = &self.log_probs[i * self.vocab..][..self.vocab];
        p.iter()
            .zip(logits)
            .map(|(&lp, &l)| {
                // Both sides rounded to f32 as the reference was, so identical logits give 0.
                let lq = (l as f64 - lse) as f32 as f64;
                let lp = lp as f64;
                lp.exp() * (lp - lq)
            })
            .sum::<f64>()
    }
}

/// Running sums for one ratio's quality figures.
#[derive(Debug, Default)]
struct Quality {
    nll: f64,
    kl: f64,
    agree: usize,
    n: usize,
    /// Input counts summed over every scored forward pass (for the natural sparsity).
    traffic: Traffic,
}

impl Quality {
    fn add(&mut self, reference: &Reference, i: usize, logits: &[f32], next: u32, t: &Traffic) {
        let lse = log_sum_exp(logits);
        self.nll -= logits[next as usize] as f64 - lse;
        self.kl += reference.kl(i, logits, lse);
        self.agree += usize::from(argmax(logits) == reference.top1[i]);
        self.n += 1;
        self.traffic.add_inputs(t);
    }

    fn mean_nll(&self) -> f64 {
        self.nll / self.n.max(1) as f64
    }
}

/// The median over rounds of each round's speed over the same round's dense speed.
fn paired_speedup(speeds: &[f64], dense: &[f64]) -> f64 {
    median(speeds.iter().zip(dense).map(|(s, d)| s / d).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_speedup_pairs_each_round_with_its_own_dense_run() {
        // A machine at half speed for the last two rounds: three of five rounds run sparse at
        // 1.6x their dense partner, while the two medians (140 and 100) say 1.4x.
        let dense = [100.0, 100.0, 100.0, 50.0, 50.0];
        let sparse = [140.0, 140.0, 160.0, 80.0, 80.0];
        assert!((paired_speedup(&sparse, &dense) - 1.6).abs() < 1e-12);
        assert!((median(sparse.to_vec()) / median(dense.to_vec()) - 1.4).abs() < 1e-12);
        assert_eq!(paired_speedup(&dense, &dense), 1.0);
    }

    fn uniform(select: Select, ratios: &[f32]) -> Vec<Point> {
        ratios
            .iter()
            .map(|&sparsity| Point {
                sparsity,
                method: Method::Uniform(select),
            })
            .collect()
    }

    #[test]
    fn the_measuring_order_puts_dense_first_then_each_method_ascending_without_repeats() {
        let ratios = |points: Vec<Point>| -> Vec<(f32, &'static str)> {
            points
                .iter()
                .map(|p| (p.sparsity, p.method.name()))
                .collect()
        };
        let mut asked = uniform(Select::Weighted, &[0.5, 0.0, 0.25, 0.5]);
        asked.extend(uniform(Select::Magnitude, &[0.6, 0.25]));
        assert_eq!(
            ratios(measuring_order(&asked)),
            [
                (0.0, "magnitude"),
                (0.25, "weighted"),
                (0.5, "weighted"),
                (0.25, "magnitude"),
                (0.6, "magnitude")
            ]
        );
        assert_eq!(ratios(measuring_order(&[])), [(0.0, "magnitude")]);
    }
}
