//! Calibrated sparsity (`qsparse calibrate`): how much of each projection's input to drop so
//! that a decoded token reads the bytes uniform S reads while the model's predictions move as
//! little as possible.
//!
//! The search measures what matters end to end: KL(dense ‖ sparse) of the next-token
//! distributions on a calibration text. Starting from uniform S, it first moves bytes between the
//! four projection inputs (q/k/v, o, gate/up, down), more sparsity on one and less on another at
//! the same bytes, in every layer alike, keeps a move that lowers the divergence, and halves the
//! step when none does; then it moves sparsity between layers (the least sensitive take it from
//! the most sensitive), again keeping only moves that lower the divergence. Allocating per layer
//! from each projection's own output error (TEAL's greedy on local errors) was tried first and
//! measured worse than uniform on SmolLM2 (`data/english.txt`, S = 0.5: perplexity 77.9 against
//! 58.8), so local errors are not used.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::measure::eval::{for_each_prediction, Windows};
use crate::measure::sweep::Reference;
use crate::model::{ForwardError, Model, RunState, Select, Sparsity};
use crate::sample::log_sum_exp;
use qsparse_kernels::keep_count;

/// A calibrated sparsity profile, as `calibrate` writes it and `--sparsity-profile` reads it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SparsityProfile {
    /// The format's version: 1.
    pub version: u32,
    /// The model file's name and sha256: a profile runs only with its model.
    pub model: String,
    /// See `model`.
    pub model_sha256: String,
    /// The uniform sparsity whose bytes a token reads with this profile.
    pub sparsity: f32,
    /// How inputs were selected while calibrating (`magnitude` or `weighted`).
    pub select: String,
    /// The calibration text (a path, or `generated`) and its tokens.
    pub calibration_text: String,
    /// See `calibration_text`.
    pub calibration_tokens: usize,
    /// Each layer's ratios: [qkv, o, gate_up, down].
    pub layers: Vec<[f32; 4]>,
}

/// The profile format's version.
pub const PROFILE_VERSION: u32 = 1;

impl SparsityProfile {
    /// Check the profile against the model it is to run with (`sha256` of its file, `n_layers`
    /// layers); an error names what does not fit.
    pub fn check(&self, n_layers: usize, sha256: &str) -> Result<(), String> {
        if self.model_sha256 != sha256 {
            return Err(format!(
                "it was calibrated for {} (sha256 {}), not this model file",
                self.model, self.model_sha256
            ));
        }
        self.check_layers(n_layers)
    }

    /// Check everything but the model file's sha256 (a packed file carries the profile its
    /// source was checked against).
    pub fn check_shape(&self, model: &Model) -> Result<(), String> {
        self.check_layers(model.config.n_layers)
    }

    /// Check everything but the model file: the version, the selection, one entry of ratios in
    /// [0, 1) for each of `n` layers.
    pub fn check_layers(&self, n: usize) -> Result<(), String> {
        if self.version != PROFILE_VERSION {
            return Err(format!(
                "version {} (this build reads {PROFILE_VERSION})",
                self.version
            ));
        }
        if Select::from_name(&self.select).is_none() {
            return Err(format!(
                "select: `{}` is neither `magnitude` nor `weighted`",
                self.select
            ));
        }
        if self.layers.len() != n {
            return Err(format!(
                "layers: {} entries for {n} layers",
                self.layers.len()
            ));
        }
        if !(0.0..1.0).contains(&self.sparsity) {
            return Err(format!("sparsity {} is outside [0, 1)", self.sparsity));
        }
        for (l, ratios) in self.layers.iter().enumerate() {
            if let Some(r) = ratios.iter().find(|r| !(0.0..1.0).contains(*r)) {
                return Err(format!("layers[{l}]: ratio {r} is outside [0, 1)"));
            }
        }
        Ok(())
    }

    /// The selection it was calibrated with (magnitude if the name is unknown; `check` refuses
    /// one).
    pub fn select(&self) -> Select {
        Select::from_name(&self.select).unwrap_or_default()
    }

    /// The ratios as the run state takes them.
    pub fn ratios(&self) -> Arc<[[f32; 4]]> {
        self.layers.clone().into()
    }
}

/// The weight bytes one token's block projections read with ratios `layers` (uniform S: every
/// entry S).
pub fn block_bytes(model: &Model, layers: &[[f32; 4]]) -> u64 {
    model
        .weights
        .layers
        .iter()
        .zip(layers)
        .map(|(layer, ratios)| {
            layer
                .matrices()
                .iter()
                .zip(ratios)
                .map(|(w, &r)| w.view().bytes_read(keep_count(w.d_in(), r)) as u64)
                .sum::<u64>()
        })
        .sum()
}

/// Ratios per layer and projection input reading the bytes uniform `sparsity` reads, chosen to
/// minimize KL(dense ‖ sparse) over `tokens` (windows of `window` tokens, each from an empty
/// cache). `progress(what)` reports the uniform start and each accepted move, with its KL.
pub fn calibrate(
    model: &Model,
    state: &mut RunState,
    tokens: &[u32],
    window: usize,
    sparsity: f32,
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<[f32; 4]>, ForwardError> {
    let n_layers = model.config.n_layers;
    let windows = Windows {
        tokens,
        ctx: window,
        chunks: None,
    };
    let predictions = windows.count() * (window - 1);
    let mut reference = Reference::new(predictions, model.config.vocab_size);
    let mut i = 0;
    for_each_prediction(
        model,
        state,
        windows,
        Sparsity::dense(),
        &mut |_, _| {},
        &mut |st, _| {
            reference.store(i, st.logits());
            i += 1;
        },
    )?;
    // KL over the calibration text with per-layer ratios `layers`.
    let divergence = |layers: &[[f32; 4]], state: &mut RunState| -> Result<f64, ForwardError> {
        let (mut kl, mut i) = (0f64, 0);
        state.set_layer_ratios(Some(layers.to_vec().into()));
        let s = Sparsity::uniform(sparsity);
        let run = for_each_prediction(model, state, windows, s, &mut |_, _| {}, &mut |st, _| {
            kl += reference.kl(i, st.logits(), log_sum_exp(st.logits()));
            i += 1;
        });
        state.set_layer_ratios(None);
        run?;
        Ok(kl / i.max(1) as f64)
    };
    // Each type's bytes a token at ratio 0: moving ratio d on type a frees d·bytes[a].
    let all = block_bytes(model, &vec![[0.0; 4]; n_layers]);
    let type_bytes: Vec<f64> = (0..4)
        .map(|t| {
            let mut r = [0.0f32; 4];
            r[t] = 1.0;
            (all - block_bytes(model, &vec![r; n_layers])) as f64
        })
        .collect();
    let mut best = [sparsity; 4];
    let mut best_kl = divergence(&vec![best; n_layers], state)?;
    progress(&format!("uniform S={sparsity}: KL {best_kl:.4}"));
    let mut step = 0.1f32;
    while step >= 0.0125 {
        let mut moved = false;
        for a in 0..4 {
            for b in 0..4 {
                if a == b {
                    continue;
                }
                // More sparsity on a, less on b, the same bytes.
                let mut r = best;
                r[a] += step;
                r[b] -= step * (type_bytes[a] / type_bytes[b]) as f32;
                if !(0.0..MAX_RATIO).contains(&r[a]) || !(0.0..MAX_RATIO).contains(&r[b]) {
                    continue;
                }
                let kl = divergence(&vec![r; n_layers], state)?;
                if kl < best_kl {
                    (best, best_kl, moved) = (r, kl, true);
                    progress(&format!(
                        "qkv {:.3} o {:.3} gate_up {:.3} down {:.3}: KL {kl:.4}",
                        r[0], r[1], r[2], r[3]
                    ));
                }
            }
        }
        if !moved {
            step /= 2.0;
        }
    }
    let mut layers = vec![best; n_layers];
    shift_between_layers(&mut layers, &mut best_kl, state, &divergence, progress)?;
    Ok(layers)
}

/// The second stage of the search: sparsity moved from layer to layer at the same bytes (every
/// layer has the same shapes, so raising one layer's four ratios by d and lowering another's by
/// d keeps the bytes). A round measures each layer's sensitivity (the KL with its ratios raised
/// by [`LAYER_STEP`]); then the least sensitive layers take sparsity from the most sensitive, a
/// pair at a time, each move kept only if the KL falls.
fn shift_between_layers(
    layers: &mut [[f32; 4]],
    best_kl: &mut f64,
    state: &mut RunState,
    divergence: &Divergence,
    progress: &mut dyn FnMut(&str),
) -> Result<(), ForwardError> {
    let n = layers.len();
    let shifted = |layers: &[[f32; 4]], l: usize, d: f32| -> Option<Vec<[f32; 4]>> {
        let mut out = layers.to_vec();
        for r in &mut out[l] {
            *r += d;
            if !(0.0..MAX_RATIO).contains(r) {
                return None;
            }
        }
        Some(out)
    };
    for round in 0..LAYER_ROUNDS {
        let mut sensitivity = Vec::with_capacity(n);
        for l in 0..n {
            let kl = match shifted(layers, l, LAYER_STEP) {
                Some(trial) => divergence(&trial, state)?,
                None => f64::INFINITY,
            };
            sensitivity.push((kl, l));
        }
        sensitivity.sort_by(|a, b| a.0.total_cmp(&b.0));
        let order: Vec<usize> = sensitivity.iter().map(|&(_, l)| l).collect();
        progress(&format!(
            "round {}: layers by sensitivity, least first: {order:?}",
            round + 1
        ));
        let mut moved = false;
        let m = LAYER_PAIRS.min(n / 2);
        for step in [LAYER_STEP, LAYER_STEP / 2.0] {
            // The m most sensitive layers each try giving to the m least sensitive.
            for (give, take) in order[n - m..]
                .iter()
                .rev()
                .flat_map(|&g| order[..m].iter().map(move |&t| (g, t)))
            {
                let Some(trial) =
                    shifted(layers, take, step).and_then(|t| shifted(&t, give, -step))
                else {
                    continue;
                };
                let kl = divergence(&trial, state)?;
                if kl < *best_kl {
                    layers.copy_from_slice(&trial);
                    (*best_kl, moved) = (kl, true);
                    progress(&format!(
                        "layer {take} +{step}, layer {give} -{step}: KL {kl:.4}"
                    ));
                }
            }
        }
        if !moved {
            break;
        }
    }
    Ok(())
}

/// KL(dense ‖ sparse) on the calibration text with the given per-layer ratios.
type Divergence<'a> = dyn Fn(&[[f32; 4]], &mut RunState) -> Result<f64, ForwardError> + 'a;

/// How far the layer stage moves a layer's ratios at first (then half of it).
const LAYER_STEP: f32 = 0.1;

/// The layer stage pairs each of this many most sensitive layers with each of this many least
/// sensitive ones at each step.
const LAYER_PAIRS: usize = 4;

/// Rounds of the layer stage at most (each measures the sensitivities anew; it stops early when
/// a round moves nothing).
const LAYER_ROUNDS: usize = 2;

/// The most a calibrated ratio may drop.
const MAX_RATIO: f32 = 0.95;
