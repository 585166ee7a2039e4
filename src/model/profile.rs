//! Where a forward pass spends its time, by phase: opt-in (`RunState::enable_profile`), read by
//! `qsparse bench --profile`. A lap costs two clock reads, so profiling barely moves the total.

use std::time::{Duration, Instant};

/// The phases of one forward pass, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The token embedding and the step's RoPE angles.
    Embed,
    /// RMSNorm, residual adds, SiLU·up: the element-wise work.
    Elementwise,
    /// Quantization and Top-K selection of a projection's input.
    Select,
    /// The q/k/v product.
    Qkv,
    /// RoPE, KV-cache store, scores, softmax, weighted values.
    Attention,
    /// The o product.
    O,
    /// The gate/up product.
    GateUp,
    /// The down product.
    Down,
    /// The lm_head product.
    LmHead,
}

impl Phase {
    /// Every phase, in the order they run.
    pub const ALL: [Phase; 9] = [
        Phase::Embed,
        Phase::Elementwise,
        Phase::Select,
        Phase::Qkv,
        Phase::Attention,
        Phase::O,
        Phase::GateUp,
        Phase::Down,
        Phase::LmHead,
    ];

    /// The phase's name in `bench --profile`.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Embed => "embed",
            Phase::Elementwise => "norms/residuals/activation",
            Phase::Select => "quantize+top-k",
            Phase::Qkv => "q/k/v matvec",
            Phase::Attention => "attention",
            Phase::O => "o matvec",
            Phase::GateUp => "gate/up matvec",
            Phase::Down => "down matvec",
            Phase::LmHead => "lm_head matvec",
        }
    }
}

/// Time per phase summed over the profiled forward passes.
#[derive(Debug, Clone, Default)]
pub struct Profile {
    /// Time per phase (indexed by `Phase as usize`).
    pub time: [Duration; 9],
    /// Profiled tokens (a single-token pass is one; a batched prompt pass counts its tokens).
    pub tokens: u64,
}

impl Profile {
    /// Phases with their share of the total, largest first.
    pub fn breakdown(&self) -> Vec<(Phase, Duration, f64)> {
        let total: Duration = self.time.iter().sum();
        let mut v: Vec<_> = Phase::ALL
            .iter()
            .map(|&p| {
                let t = self.time[p as usize];
                (p, t, t.as_secs_f64() / total.as_secs_f64().max(1e-12))
            })
            .collect();
        v.sort_by_key(|e| std::cmp::Reverse(e.1));
        v
    }
}

/// A stopwatch that charges the time since its last mark to a phase of `profile` (a no-op
/// without one).
pub(crate) struct Laps<'a> {
    last: Option<Instant>,
    profile: Option<&'a mut Profile>,
}

impl<'a> Laps<'a> {
    pub(crate) fn start(profile: Option<&'a mut Profile>) -> Laps<'a> {
        Laps {
            last: profile.is_some().then(Instant::now),
            profile,
        }
    }

    #[inline]
    pub(crate) fn mark(&mut self, phase: Phase) {
        if let (Some(last), Some(p)) = (self.last, self.profile.as_mut()) {
            let now = Instant::now();
            p.time[phase as usize] += now - last;
            self.last = Some(now);
        }
    }

    /// Count the pass's `tokens` as timed.
    pub(crate) fn finish(self, tokens: usize) {
        if let Some(p) = self.profile {
            p.tokens += tokens as u64;
        }
    }
}
