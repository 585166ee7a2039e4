//! Q-Sparse before a projection: which inputs a product keeps (Top-K by magnitude, per
//! projection ratio), quantized to int8 by absmax for int8 weights with the few largest kept out
//! of the quantization (see the module doc of `llama`), and the product over them.

use qsparse_kernels::outliers;
use qsparse_kernels::{
    check_finite, gather_matvec, keep_count, largest_f32, quantize_absmax, quantize_with, topk_f32,
    topk_i8, Format, Input, Isa, NonFinite, Sparse,
};

use crate::model::proj::Stack;
use crate::model::weights::{Linear, WeightFormat};

/// Sparsity ratio S per projection input (K = round((1−S)·d) entries kept).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sparsity {
    /// The q/k/v projections' input.
    pub qkv: f32,
    /// The o projection's input.
    pub o: f32,
    /// The gate/up projections' input.
    pub gate_up: f32,
    /// The down projection's input.
    pub down: f32,
    /// The lm_head input; 0 (dense) unless asked for.
    pub lm_head: f32,
}

impl Sparsity {
    /// The same ratio for every projection (the lm_head stays dense).
    pub fn uniform(s: f32) -> Sparsity {
        Sparsity {
            qkv: s,
            o: s,
            gate_up: s,
            down: s,
            lm_head: 0.0,
        }
    }

    /// Every input kept.
    pub fn dense() -> Sparsity {
        Sparsity::uniform(0.0)
    }

    /// Whether every block projection keeps all its inputs.
    pub fn is_dense(&self) -> bool {
        [self.qkv, self.o, self.gate_up, self.down] == [0.0; 4]
    }

    /// These ratios with the block projections' replaced by `layer` ([qkv, o, gate_up, down]).
    pub fn with_layer(&self, layer: [f32; 4]) -> Sparsity {
        let [qkv, o, gate_up, down] = layer;
        Sparsity {
            qkv,
            o,
            gate_up,
            down,
            lm_head: self.lm_head,
        }
    }

    /// The ratio of the input that `stack` reads.
    pub fn of(&self, stack: Stack) -> f32 {
        match stack {
            Stack::Qkv => self.qkv,
            Stack::O => self.o,
            Stack::GateUp => self.gate_up,
            Stack::Down => self.down,
            Stack::LmHead => self.lm_head,
        }
    }
}

/// How a projection's K kept inputs are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Select {
    /// The K largest |x_j| (Q-Sparse's Top-K).
    #[default]
    Magnitude,
    /// The K largest |x_j|·‖W[:, j]‖₂, the norm over every output that reads input j (WINA's
    /// score, without its orthogonalizing transform): an input that meets large weights counts
    /// for more. With int8 activations, |x_j| is the quantized magnitude.
    Weighted,
}

impl Select {
    /// The name `--select` takes.
    pub fn name(self) -> &'static str {
        match self {
            Select::Magnitude => "magnitude",
            Select::Weighted => "weighted",
        }
    }

    /// The selection of this name (see [`Select::name`]).
    pub fn from_name(name: &str) -> Option<Select> {
        [Select::Magnitude, Select::Weighted]
            .into_iter()
            .find(|s| s.name() == name)
    }
}

/// The selected (and for int8 weights, quantized) input of a projection.
#[derive(Debug, Default)]
pub(super) struct Selection {
    pub(super) int: Sparse<i8>,
    pub(super) float: Sparse<f32>,
    pub(super) scale: f32,
    pub(super) quantized: Vec<i8>,
    pub(super) scratch: Vec<f32>,
    /// Int8 path: the largest activations, kept out of the quantization (index, value).
    pub(super) outliers: Sparse<f32>,
    /// `largest_f32`'s working lists.
    pub(super) outlier_scratch: outliers::Scratch,
    /// Int8 path with outliers against I8 weights: the kept int8 entries and the outliers in one
    /// int16 input (`int` then is not filled).
    pub(super) wide: Sparse<i16>,
    /// Whether the last selection filled `wide`.
    pub(super) is_wide: bool,
    /// Weighted selection: each input's score, and the kept ones (index, score).
    pub(super) scores: Vec<f32>,
    pub(super) picked: Sparse<f32>,
}

/// The outliers of an int16 input at the int8 scale γ/127: round(127·v/γ), within the range
/// `select` chose γ for (at most ±32767). A dense input (all d slots) holds the outliers' slots
/// as zeros: they take the values there. A sparse one does not hold them: they follow its
/// entries (the product does not need ascending indices; merging them into order made SmolLM2's
/// S = 0.5 products ~3% faster and the selection about as much slower, one profile).
pub(super) fn add_outliers(out: &mut Sparse<i16>, d: usize, outliers: &Sparse<f32>, gamma: f32) {
    let inv = if gamma > 0.0 { 127.0 / gamma } else { 0.0 };
    // Round half to even by adding and subtracting 1.5·2^23 (exact within ±2^22): the same as
    // `round_ties_even`, which is a libm call on baseline x86-64.
    let wide = |v: f32| {
        let r = (v * inv).clamp(-32767.0, 32767.0);
        ((r + 12_582_912.0) - 12_582_912.0) as i16
    };
    let dense = out.len() == d;
    for (&i, &v) in outliers.indices.iter().zip(&outliers.values) {
        if dense {
            out.values[i as usize] = wide(v);
        } else {
            out.indices.push(i);
            out.values.push(wide(v));
        }
    }
}

/// Default number of activation outliers kept out of int8 quantization with int8 weights.
pub const DEFAULT_ACTIVATION_OUTLIERS: usize = 32;

/// The activation outliers a run keeps out of int8 quantization unless told: 32 with int8 weights
/// (SmolLM2 was not trained for int8 activations: +9.2% perplexity with plain absmax); none with
/// ternary ones, which follow BitNet b1.58's recipe (plain absmax per token, the activations its
/// models were trained with) and whose kernel takes int8 only (outliers would go through a slow
/// f32 pass, `qsparse bench --weights t2 --act-outliers 32`); none with float weights.
pub fn default_activation_outliers(format: WeightFormat) -> usize {
    match format {
        WeightFormat::Int8 => DEFAULT_ACTIVATION_OUTLIERS,
        WeightFormat::Ternary | WeightFormat::F16 | WeightFormat::F32 => 0,
    }
}

/// How a run chooses and multiplies K inputs per projection: the kernels' ISA, the weights'
/// format, and how many activation outliers skip int8 quantization. The chosen inputs live in a
/// [`Selection`] per token, reused so that no step allocates.
#[derive(Debug, Clone, Copy)]
pub(super) struct Sparsifier {
    pub(super) isa: Isa,
    pub(super) format: WeightFormat,
    pub(super) outliers: usize,
    pub(super) select: Select,
}

impl Sparsifier {
    /// Select the inputs of `x` to keep at sparsity `s`, for a product with `target` weights
    /// (int8 activations take their outliers as int16 against int8 weights, in f32 against
    /// others); `norms` are the weights' column norms, read by weighted selection only.
    pub(super) fn select(
        &self,
        sel: &mut Selection,
        x: &[f32],
        s: f32,
        target: Format,
        norms: &[f32],
    ) -> Result<(), NonFinite> {
        let k = keep_count(x.len(), s);
        let weighted = self.select == Select::Weighted && k < x.len();
        match self.format {
            WeightFormat::Int8 | WeightFormat::Ternary => {
                // The m largest magnitudes are kept out of the int8 quantization; they are part
                // of the K kept. The rest is quantized by its own absmax γ (raised only if an
                // outlier would pass the int16 range below), the outliers' own slots become 0.
                let m = self.outliers.min(k);
                sel.quantized.resize(x.len(), 0);
                let gamma = if m == 0 {
                    // Plain absmax (BitNet's recipe, the ternary default): one pass finds γ and
                    // any non-finite entry, one quantizes, where the outlier path takes four
                    // (`examples/select_cost.rs`; the quantize+top-k phase of `bench --profile`).
                    sel.outliers.indices.clear();
                    sel.outliers.values.clear();
                    quantize_absmax(self.isa, x, &mut sel.quantized)?
                } else {
                    let rest =
                        largest_f32(self.isa, x, m, &mut sel.outlier_scratch, &mut sel.outliers);
                    // NaN and ±inf order above every finite magnitude, so a non-finite input
                    // puts one among the outliers: no separate pass over x is needed.
                    if sel.outliers.values.iter().any(|v| !v.is_finite()) {
                        check_finite(x)?;
                    }
                    let top = sel
                        .outliers
                        .values
                        .iter()
                        .fold(0.0f32, |a, v| a.max(v.abs()));
                    // Outliers reach at most ±range at this scale, so that a row's int32 sum
                    // holds: m·127·range + (k − m)·127·127 <= i32::MAX.
                    let range = ((i32::MAX as usize / 127).saturating_sub((k - m) * 127) / m)
                        .clamp(127, 32767) as f32;
                    let gamma = rest.max(top * (127.0 / range));
                    quantize_with(self.isa, x, gamma, &mut sel.quantized);
                    for &i in &sel.outliers.indices {
                        sel.quantized[i as usize] = 0;
                    }
                    gamma
                };
                sel.scale = gamma / 127.0;
                sel.is_wide = m > 0 && target == Format::I8;
                // Dense: every slot, the outliers' zeros too (they add nothing; `topk_i8` keeps
                // all d without a threshold pass). Int16 inputs are written straight from the
                // int8 ones (no int8 list in between).
                let kept = if k == x.len() { k } else { k - m };
                if weighted {
                    let magnitudes = sel.quantized.iter().map(|&q| f32::from(q).abs());
                    let buffers = (&mut sel.scores, &mut sel.scratch);
                    pick_weighted(self.isa, magnitudes, norms, kept, buffers, &mut sel.picked);
                    let quantized = &sel.quantized;
                    if sel.is_wide {
                        gather_into(&sel.picked.indices, |j| quantized[j].into(), &mut sel.wide);
                    } else {
                        gather_into(&sel.picked.indices, |j| quantized[j], &mut sel.int);
                    }
                } else if sel.is_wide {
                    topk_i8(self.isa, &sel.quantized, kept, &mut sel.wide);
                } else {
                    topk_i8(self.isa, &sel.quantized, kept, &mut sel.int);
                }
                if sel.is_wide {
                    add_outliers(&mut sel.wide, x.len(), &sel.outliers, gamma);
                }
            }
            WeightFormat::F32 | WeightFormat::F16 => {
                check_finite(x)?;
                if weighted {
                    let buffers = (&mut sel.scores, &mut sel.scratch);
                    let magnitudes = x.iter().map(|v| v.abs());
                    pick_weighted(self.isa, magnitudes, norms, k, buffers, &mut sel.picked);
                    gather_into(&sel.picked.indices, |j| x[j], &mut sel.float);
                } else {
                    topk_f32(self.isa, x, k, &mut sel.scratch, &mut sel.float);
                }
            }
        }
        Ok(())
    }

    /// y = W·x for the selected inputs `sel`; returns the bytes of weights read and the weights
    /// used.
    pub(super) fn matvec(&self, sel: &Selection, w: &Linear, y: &mut [f32]) -> (u64, u64) {
        let view = w.view();
        let o = &sel.outliers;
        match self.format {
            WeightFormat::Int8 | WeightFormat::Ternary => {
                debug_assert_eq!(sel.is_wide, !o.is_empty() && view.format() == Format::I8);
                let input = if sel.is_wide {
                    // One integer pass, the outliers as int16 at the same scale.
                    Input::I16 {
                        x: &sel.wide,
                        scale: sel.scale,
                    }
                } else if o.is_empty() {
                    Input::I8 {
                        x: &sel.int,
                        scale: sel.scale,
                    }
                } else {
                    Input::Mixed {
                        x: &sel.int,
                        scale: sel.scale,
                        exact: o,
                    }
                };
                gather_matvec(self.isa, &view, input, y);
            }
            _ => gather_matvec(self.isa, &view, Input::F32(&sel.float), y),
        }
        sel.read(self.format, w)
    }
}

/// `picked` = the `k` inputs with the largest magnitude·norm (ties: the lowest index), in
/// ascending order, their scores as values.
fn pick_weighted(
    isa: Isa,
    magnitudes: impl Iterator<Item = f32>,
    norms: &[f32],
    k: usize,
    (scores, scratch): (&mut Vec<f32>, &mut Vec<f32>),
    picked: &mut Sparse<f32>,
) {
    scores.clear();
    scores.extend(magnitudes.zip(norms).map(|(m, &c)| m * c));
    topk_f32(isa, scores, k, scratch, picked);
}

/// `out` = the entries at `indices` (ascending), their values from `value(j)`.
fn gather_into<T>(indices: &[u32], value: impl Fn(usize) -> T, out: &mut Sparse<T>) {
    out.indices.clear();
    out.indices.extend_from_slice(indices);
    out.values.clear();
    out.values
        .extend(indices.iter().map(|&j| value(j as usize)));
}

impl Selection {
    /// The weight bytes and weights a product with `w` reads for this selection.
    pub(super) fn read(&self, format: WeightFormat, w: &Linear) -> (u64, u64) {
        let kept = match format {
            WeightFormat::Int8 | WeightFormat::Ternary if self.is_wide => self.wide.len(),
            // Dense passes hold the outliers' (zero) int8 slots as well: count them once.
            WeightFormat::Int8 | WeightFormat::Ternary => {
                (self.int.len() + self.outliers.len()).min(w.d_in())
            }
            _ => self.float.len(),
        };
        (w.view().bytes_read(kept) as u64, (kept * w.d_out()) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn a_non_finite_activation_is_named_by_its_first_position() {
        for (format, outliers) in [
            (WeightFormat::Int8, 32),
            (WeightFormat::Int8, 0),
            (WeightFormat::F32, 0),
        ] {
            for isa in qsparse_kernels::Isa::available() {
                let sp = Sparsifier {
                    isa,
                    format,
                    outliers,
                    select: Select::Magnitude,
                };
                let mut sel = Selection::default();
                let mut x: Vec<f32> = (0..576).map(|i| (i as f32 * 0.37).sin()).collect();
                for s in [0.0, 0.5] {
                    for target in [Format::I8, Format::T2] {
                        assert!(sp.select(&mut sel, &x, s, target, &[]).is_ok());
                    }
                }
                x[500] = f32::NEG_INFINITY;
                x[501] = f32::NAN;
                for s in [0.0, 0.5] {
                    let e = sp.select(&mut sel, &x, s, Format::I8, &[]).unwrap_err();
                    assert_eq!(e.index, 500, "{format:?} outliers {outliers} {isa:?} S={s}");
                }
                x[7] = f32::NAN;
                let e = sp.select(&mut sel, &x, 0.5, Format::T2, &[]).unwrap_err();
                assert_eq!((e.index, e.value.is_nan()), (7, true));
            }
        }
    }

    #[test]
    pub(super) fn a_reused_selection_equals_a_fresh_one_whatever_came_before() {
        let sp = Sparsifier {
            isa: Isa::best(),
            format: WeightFormat::Int8,
            outliers: 4,
            select: Select::Magnitude,
        };
        let x = |d: usize, seed: f32| -> Vec<f32> {
            (0..d)
                .map(|i| (i as f32 * 0.37 + seed).sin() * (1.0 + (i % 7) as f32))
                .collect()
        };
        let mut reused = Selection::default();
        // Dense and sparse passes of two widths, into the int16 input (I8 weights) and the int8
        // one (T2 weights), in an order where each buffer holds something else before.
        for (d, s, target, seed) in [
            (40, 0.5, Format::I8, 0.1),
            (40, 0.0, Format::I8, 0.2),
            (17, 0.0, Format::I8, 0.3),
            (40, 0.0, Format::T2, 0.4),
            (17, 0.5, Format::I8, 0.5),
            (40, 0.5, Format::T2, 0.6),
            (40, 0.0, Format::I8, 0.7),
            (17, 0.5, Format::T2, 0.8),
        ] {
            let x = x(d, seed);
            let mut new = Selection::default();
            sp.select(&mut new, &x, s, target, &[]).unwrap();
            sp.select(&mut reused, &x, s, target, &[]).unwrap();
            let what = format!("d={d} S={s} {target:?}");
            assert_eq!(reused.is_wide, new.is_wide, "{what}");
            assert_eq!(reused.is_wide, target == Format::I8, "{what}");
            assert_eq!(reused.scale.to_bits(), new.scale.to_bits(), "{what}");
            assert_eq!(reused.outliers, new.outliers, "{what}");
            if new.is_wide {
                assert_eq!(reused.wide, new.wide, "{what}");
                let want = if s == 0.0 { d } else { keep_count(d, s) };
                assert_eq!(new.wide.len(), want, "{what}");
            } else {
                assert_eq!(reused.int, new.int, "{what}");
            }
        }
    }

    #[test]
    pub(super) fn outliers_take_int16_values_rounded_half_to_even() {
        let wide = Sparse {
            indices: (0..40u32).collect(),
            values: (0..40).map(|i| (i as i8) - 20).collect::<Vec<i8>>(),
        };
        let outliers = Sparse {
            indices: vec![7, 16],
            values: vec![1000.0f32, -2000.5],
        };
        // Rounding: 1000·127/8 = 15875 exactly, −2000.5·127/8 = −31757.9375 -> −31758.
        let mut out = Sparse::default();
        widen(&wide, 40, &outliers, 8.0, &mut out);
        assert_eq!((out.values[7], out.values[16]), (15875, -31758));
        // Ties to even, as `round_ties_even` (γ = 127: the values themselves).
        let ties = Sparse {
            indices: vec![2, 3],
            values: vec![2.5f32, -3.5],
        };
        widen(&wide, 40, &ties, 127.0, &mut out);
        assert_eq!((out.values[2], out.values[3]), (2, -4));
    }

    /// The executor's int16 input from an int8 selection: its entries as `topk_i8` writes them
    /// (all d slots when dense), then the outliers.
    pub(super) fn widen(
        int: &Sparse<i8>,
        d: usize,
        outliers: &Sparse<f32>,
        gamma: f32,
        out: &mut Sparse<i16>,
    ) {
        out.indices.clone_from(&int.indices);
        out.values.clear();
        out.values.extend(int.values.iter().map(|&v| i16::from(v)));
        add_outliers(out, d, outliers, gamma);
    }

    #[test]
    pub(super) fn outliers_merge_into_the_int16_input_once_each() {
        // A dense selection holds the outliers' slots as zeros; a sparse one does not hold them.
        let outliers = Sparse {
            indices: vec![1, 4],
            values: vec![-30.0f32, 12.5],
        };
        let gamma = 2.0; // scale 127/2
        for (int, want_idx, want_val) in [
            (
                Sparse {
                    indices: vec![0, 1, 2, 3, 4, 5],
                    values: vec![5i8, 0, -7, 127, 0, 1],
                },
                vec![0u32, 1, 2, 3, 4, 5],
                vec![5i16, -1905, -7, 127, 794, 1],
            ),
            (
                Sparse {
                    indices: vec![2, 5],
                    values: vec![-7i8, 1],
                },
                vec![2, 5, 1, 4],
                vec![-7, 1, -1905, 794],
            ),
        ] {
            let mut out = Sparse::default();
            widen(&int, 6, &outliers, gamma, &mut out);
            assert_eq!(out.indices, want_idx);
            assert_eq!(out.values, want_val);
        }
    }

    /// Weighted selection keeps the K inputs a plain sort of |x|·norm keeps (ties to the lowest
    /// index), at every ISA, for float and int8 activations (with and without outliers, into
    /// int8 and int16 inputs); non-finite input is refused as with magnitude selection.
    #[test]
    pub(super) fn weighted_selection_equals_a_sort_by_score() {
        let d = 200;
        // Repeated magnitudes and norms, so that scores tie.
        let x: Vec<f32> = (0..d)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.25)
            .collect();
        let norms: Vec<f32> = (0..d).map(|i| 0.5 + (i % 3) as f32 * 0.25).collect();
        let reference = |mags: &[f32], k: usize| -> Vec<u32> {
            let mut order: Vec<u32> = (0..mags.len() as u32).collect();
            let score = |j: u32| mags[j as usize] * norms[j as usize];
            order.sort_by(|&a, &b| score(b).total_cmp(&score(a)).then(a.cmp(&b)));
            let mut kept = order[..k].to_vec();
            kept.sort_unstable();
            kept
        };
        for isa in Isa::available() {
            for (format, outliers, target) in [
                (WeightFormat::F32, 0, Format::F32),
                (WeightFormat::Int8, 0, Format::I8),
                (WeightFormat::Int8, 6, Format::I8),
                (WeightFormat::Ternary, 0, Format::T2),
            ] {
                let sp = Sparsifier {
                    isa,
                    format,
                    outliers,
                    select: Select::Weighted,
                };
                for s in [0.3f32, 0.5, 0.9] {
                    let what = format!("{isa:?} {format:?} outliers {outliers} S={s}");
                    let mut sel = Selection::default();
                    sp.select(&mut sel, &x, s, target, &norms).unwrap();
                    let k = keep_count(d, s);
                    match format {
                        WeightFormat::F32 => {
                            let mags: Vec<f32> = x.iter().map(|v| v.abs()).collect();
                            assert_eq!(sel.float.indices, reference(&mags, k), "{what}");
                            let want: Vec<f32> =
                                sel.float.indices.iter().map(|&j| x[j as usize]).collect();
                            assert_eq!(sel.float.values, want, "{what}");
                        }
                        _ => {
                            // The non-outlier inputs are scored by their quantized magnitudes.
                            let mags: Vec<f32> =
                                sel.quantized.iter().map(|&q| f32::from(q).abs()).collect();
                            let want = reference(&mags, k - outliers);
                            let got = if sel.is_wide {
                                &sel.wide.indices[..k - outliers]
                            } else {
                                &sel.int.indices[..]
                            };
                            assert_eq!(got, &want[..], "{what}");
                            if sel.is_wide {
                                assert_eq!(
                                    &sel.wide.indices[k - outliers..],
                                    &sel.outliers.indices[..]
                                );
                            }
                        }
                    }
                }
                let mut bad = x.clone();
                bad[150] = f32::NAN;
                let mut sel = Selection::default();
                let e = sp.select(&mut sel, &bad, 0.5, target, &norms).unwrap_err();
                assert_eq!(e.index, 150, "{isa:?} {format:?}");
            }
        }
    }
}
