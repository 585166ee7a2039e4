//! The Q-Sparse paper's inference-optimal scaling law, to choose a sparsity and a model size.
//!
//! The paper (arXiv 2407.10969, §3) fits the loss of sparsely-activated models as
//! L(N, S) = E + A(S) / N^α with A(S) = B + C·exp(β / (1 − S)). A decoded token costs the
//! *active* parameters N_a = (1 − S)·N, so at a fixed N_a the reducible loss is
//! A(S)·((1 − S) / N_a)^α, which is smallest at one S* independent of N_a: the paper reports
//! S* = 45.58% for full-precision weights and 61.25% for 1.58-bit weights.
//!
//! From the paper we take the form of the law and the two S* values. The paper's fitted α, β, B, C
//! are not reproduced here; the curve shapes use estimates: α = 0.34 (Chinchilla's exponent for N,
//! Hoffmann et al. 2022), β = 1, and B/C solved so that the optimum lands exactly at the paper's
//! S*. The trade-off figures that depend on them are labelled as estimates wherever shown.

use serde::Serialize;

/// Which of the paper's two fits applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Precision {
    /// Full-precision (and, lacking a fit of their own, 8- and 4-bit) weights.
    FullPrecision,
    /// Ternary BitNet b1.58 weights.
    Ternary,
}

impl Precision {
    /// The paper's inference-optimal sparsity.
    pub fn optimal_sparsity(self) -> f64 {
        match self {
            Precision::FullPrecision => 0.4558,
            Precision::Ternary => 0.6125,
        }
    }

    /// The weight type's name as the paper's fit names it.
    pub fn name(self) -> &'static str {
        match self {
            Precision::FullPrecision => "full precision",
            Precision::Ternary => "1.58-bit (ternary)",
        }
    }
}

/// Estimated exponent of N (Chinchilla's), not the paper's fit.
pub const ALPHA_ESTIMATE: f64 = 0.34;
/// Estimated β, not the paper's fit.
pub const BETA_ESTIMATE: f64 = 1.0;

/// A(S) up to the constant factor C, with B/C chosen so that A(S)·(1−S)^α is smallest at S*.
#[derive(Debug, Clone, Copy)]
pub struct Law {
    /// The fit's α.
    pub alpha: f64,
    /// The fit's β.
    pub beta: f64,
    /// B / C.
    pub b_over_c: f64,
}

impl Law {
    /// The law for `precision` with the estimated α and β.
    pub fn for_precision(precision: Precision) -> Law {
        Law::with_optimum(precision.optimal_sparsity(), ALPHA_ESTIMATE, BETA_ESTIMATE)
    }

    /// d/dS [A(S)(1−S)^α] = 0 at S* gives C·e^{βu}·β·u = α·(B + C·e^{βu}) with u = 1/(1−S*),
    /// so B/C = e^{βu}·(βu/α − 1) (positive when βu > α, true for the paper's S*).
    pub fn with_optimum(s_opt: f64, alpha: f64, beta: f64) -> Law {
        let u = 1.0 / (1.0 - s_opt);
        Law {
            alpha,
            beta,
            b_over_c: (beta * u).exp() * (beta * u / alpha - 1.0),
        }
    }

    /// A(S) / C.
    pub fn a(&self, s: f64) -> f64 {
        self.b_over_c + (self.beta / (1.0 - s)).exp()
    }

    /// Reducible loss at a fixed active-parameter budget, relative to the dense model with the
    /// same budget: A(S)(1−S)^α / A(0).
    pub fn relative_loss_at_budget(&self, s: f64) -> f64 {
        self.a(s) * (1.0 - s).powf(self.alpha) / self.a(0.0)
    }

    /// The S in [0, 0.99] minimizing [`Law::relative_loss_at_budget`] (golden-section search; the
    /// function is unimodal there).
    pub fn optimum(&self) -> f64 {
        let (mut lo, mut hi) = (0.0f64, 0.99f64);
        let g = (5f64.sqrt() - 1.0) / 2.0;
        for _ in 0..200 {
            let a = hi - g * (hi - lo);
            let b = lo + g * (hi - lo);
            if self.relative_loss_at_budget(a) < self.relative_loss_at_budget(b) {
                hi = b;
            } else {
                lo = a;
            }
        }
        (lo + hi) / 2.0
    }
}

/// One option for a budget of active parameters: train a model of `total_params` and run it at
/// `sparsity`.
#[derive(Debug, Clone, Serialize)]
pub struct SizeOption {
    /// The sparsity S.
    pub sparsity: f64,
    /// Total parameters a model may have at this S.
    pub total_params: f64,
    /// Its active parameters per token.
    pub active_params: f64,
    /// Estimated reducible loss relative to the dense model of the same active parameters.
    pub relative_loss_estimate: f64,
}

/// The model size / sparsity trade-off for `budget` active parameters per token.
pub fn trade_off(precision: Precision, budget: f64, sparsities: &[f64]) -> Vec<SizeOption> {
    let law = Law::for_precision(precision);
    sparsities
        .iter()
        .map(|&s| SizeOption {
            sparsity: s,
            total_params: budget / (1.0 - s),
            active_params: budget,
            relative_loss_estimate: law.relative_loss_at_budget(s),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_solved_law_has_its_optimum_at_the_papers_sparsity() {
        for p in [Precision::FullPrecision, Precision::Ternary] {
            let law = Law::for_precision(p);
            assert!(law.b_over_c > 0.0);
            let s = law.optimum();
            assert!((s - p.optimal_sparsity()).abs() < 1e-6, "{p:?}: {s}");
            // Dense is worse than the optimum at the same budget; near-total sparsity is worse
            // still (A(S) blows up as S → 1).
            assert!(law.relative_loss_at_budget(s) < 1.0);
            assert!(law.relative_loss_at_budget(0.98) > 1.0);
        }
    }

    #[test]
    fn trade_off_keeps_the_active_budget() {
        let t = trade_off(Precision::Ternary, 3e9, &[0.0, 0.5, 0.75]);
        assert_eq!(t[0].total_params, 3e9);
        assert_eq!(t[1].total_params, 6e9);
        assert_eq!(t[2].total_params, 12e9);
        assert_eq!(t[0].relative_loss_estimate, 1.0);
    }
}
