//! `qsparse scaling`: the Q-Sparse paper's inference-optimal sparsity for a model's weights, and
//! the model size / sparsity trade-off at a budget of active parameters per token.

use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::gguf::{GgmlType, GgufFile};
use crate::hub;
use crate::measure::scaling::{self, Law, Precision, ALPHA_ESTIMATE, BETA_ESTIMATE};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A GGUF file or manifest name: its weight type picks the paper's fit, its size the default
    /// budget. Without it, both fits are shown.
    #[arg(short, long)]
    model: Option<String>,
    /// Active parameters per token to spend, e.g. 700M, 2.9B or 3e9. Default: the model's
    /// linear-layer parameters (what its dense form reads per token), else 1B.
    #[arg(long, value_parser = parse_count)]
    budget: Option<f64>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// "700M", "2.9B", "3e9", "1500000".
fn parse_count(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let (num, mult) = match t.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&t[..t.len() - 1], 1e3),
        Some('M') => (&t[..t.len() - 1], 1e6),
        Some('B') | Some('G') => (&t[..t.len() - 1], 1e9),
        Some('T') => (&t[..t.len() - 1], 1e12),
        _ => (t, 1.0),
    };
    match num.parse::<f64>() {
        Ok(v) if v.is_finite() && v * mult >= 1.0 => Ok(v * mult),
        _ => Err(format!(
            "`{s}` is not a parameter count (examples: 700M, 2.9B, 3e9)"
        )),
    }
}

/// What the file says about the scaling question.
struct ModelFacts {
    name: String,
    precision: Precision,
    /// Parameters of the sparsifiable projections (q, k, v, o, gate, up, down of every block).
    block_linear: u64,
    /// The lm_head (output.weight, or the tied token embedding), which stays dense.
    lm_head: u64,
}

const TERNARY: [GgmlType; 5] = [
    GgmlType::TQ1_0,
    GgmlType::TQ2_0,
    GgmlType::I2_S,
    GgmlType::TL1,
    GgmlType::TL2,
];

fn facts(model: &str) -> Result<ModelFacts> {
    let path = hub::resolve(model, &super::common::models_dir())?;
    let file = GgufFile::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut facts = ModelFacts {
        name: model.to_owned(),
        precision: Precision::FullPrecision,
        block_linear: 0,
        lm_head: 0,
    };
    for t in file.tensors() {
        if t.dims.len() != 2 {
            continue;
        }
        if t.name.starts_with("blk.") {
            facts.block_linear += t.n_elements();
            if TERNARY.contains(&t.ty) {
                facts.precision = Precision::Ternary;
            }
        } else if t.name == "output.weight"
            || (t.name == "token_embd.weight" && file.tensor("output.weight").is_none())
        {
            facts.lm_head = t.n_elements();
        }
    }
    if file
        .get_str("general.architecture")
        .is_ok_and(|a| a.starts_with("bitnet"))
    {
        facts.precision = Precision::Ternary;
    }
    if facts.block_linear == 0 {
        bail!("{} has no 2-D tensors in blk.* layers", path.display());
    }
    Ok(facts)
}

const SPARSITIES: [f64; 8] = [0.0, 0.25, 0.4, 0.4558, 0.5, 0.6125, 0.7, 0.8];

pub fn run(args: Args) -> Result<()> {
    let model = args.model.as_deref().map(facts).transpose()?;
    let budget = args
        .budget
        .or(model.as_ref().map(|m| (m.block_linear + m.lm_head) as f64))
        .unwrap_or(1e9);
    let precisions = match &model {
        Some(m) => vec![m.precision],
        None => vec![Precision::FullPrecision, Precision::Ternary],
    };

    let mut fits = Vec::new();
    for &p in &precisions {
        let s = p.optimal_sparsity();
        let for_model = model.as_ref().map(|m| {
            let active = (1.0 - s) * m.block_linear as f64 + m.lm_head as f64;
            json!({
                "block_linear_params": m.block_linear,
                "lm_head_params": m.lm_head,
                "active_params_at_optimum": active,
                "fraction_of_dense": active / (m.block_linear + m.lm_head) as f64,
            })
        });
        fits.push(json!({
            "precision": p,
            "optimal_sparsity": s,
            "model": for_model,
            "trade_off": scaling::trade_off(p, budget, &SPARSITIES),
        }));
    }
    let constants = json!({
        "from_paper": ["L(N,S) = E + A(S)/N^alpha", "A(S) = B + C*exp(beta/(1-S))",
                       "S* = 0.4558 (full precision)", "S* = 0.6125 (1.58-bit)"],
        "estimated": {"alpha": ALPHA_ESTIMATE, "beta": BETA_ESTIMATE,
                      "b_over_c": "solved so that the optimum is the paper's S*"},
    });
    if args.json {
        let out = json!({
            "model": model.as_ref().map(|m| m.name.clone()),
            "budget_active_params": budget,
            "fits": fits,
            "constants": constants,
        });
        outln!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }

    outln!("Q-Sparse inference-optimal sparsity (arXiv 2407.10969): at a fixed number of active");
    outln!(
        "parameters per token, the loss is lowest at S* = 45.58% for full-precision weights and"
    );
    outln!("61.25% for 1.58-bit weights (the paper has no fit for 8- or 4-bit: the full-precision");
    outln!("value is used for them).\n");
    if let Some(m) = &model {
        let s = m.precision.optimal_sparsity();
        let active = (1.0 - s) * m.block_linear as f64 + m.lm_head as f64;
        outln!(
            "{}: {} weights -> recommended --sparsity {:.4}",
            m.name,
            m.precision.name(),
            s
        );
        outln!(
            "  {} in the blocks' projections + {} in the dense lm_head; at S* a token uses {} \
             ({:.0}% of dense).\n",
            count(m.block_linear as f64),
            count(m.lm_head as f64),
            count(active),
            100.0 * active / (m.block_linear + m.lm_head) as f64
        );
        outln!("  Note: S* is for models trained with Q-Sparse; a model trained dense loses more");
        outln!("  (measure it with `qsparse sweep`).\n");
    }
    for &p in &precisions {
        let law = Law::for_precision(p);
        outln!(
            "{} weights, budget {} active parameters per token:",
            p.name(),
            count(budget)
        );
        outln!(
            "  {:>8} {:>12} {:>28}",
            "S",
            "model size",
            "reducible loss vs dense (est.)"
        );
        for o in scaling::trade_off(p, budget, &SPARSITIES) {
            let mark = if (o.sparsity - p.optimal_sparsity()).abs() < 1e-9 {
                "  <- S*"
            } else {
                ""
            };
            outln!(
                "  {:>7.2}% {:>12} {:>27.1}%{mark}",
                100.0 * o.sparsity,
                count(o.total_params),
                100.0 * o.relative_loss_estimate
            );
        }
        outln!(
            "  (optimum of the estimated curve: {:.2}%)\n",
            100.0 * law.optimum()
        );
    }
    outln!(
        "From the paper: the law's form and S*. Estimated: alpha = {ALPHA_ESTIMATE} (Chinchilla's \
         exponent for N), beta = {BETA_ESTIMATE}, B/C solved to put the optimum at S*; the loss \
         column depends on these estimates, the model sizes do not."
    );
    Ok(())
}

fn count(n: f64) -> String {
    match n {
        n if n >= 1e9 => format!("{:.2}B", n / 1e9),
        n if n >= 1e6 => format!("{:.1}M", n / 1e6),
        n if n >= 1e3 => format!("{:.1}K", n / 1e3),
        n => format!("{n:.0}"),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_count;

    #[test]
    fn counts_with_suffixes() {
        assert_eq!(parse_count("700M"), Ok(7e8));
        assert_eq!(parse_count("2.9B"), Ok(2.9e9));
        assert_eq!(parse_count("3e9"), Ok(3e9));
        assert!(parse_count("lots").is_err());
        assert!(parse_count("-1B").is_err());
        assert!(parse_count("NaN").is_err());
    }
}
