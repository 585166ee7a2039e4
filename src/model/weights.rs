//! A llama-family model's weights, converted once at load from the GGUF file's types into the
//! kernels' tiled column-major formats (`--weights f32|f16|int8|t2`). Norm vectors stay f32; the token
//! embedding stays in the file (mapped) and one row is dequantized per token. With int8 or ternary
//! weights the lm_head is row-major Q8 (int8 blocks of 32 with a scale each) unless its input is to be
//! sparsified: see [`LmHead`].

use qsparse_kernels::dense_q8::{CodeBits, RowsQ8};
use qsparse_kernels::memory::{share_huge_pages, AlignedBytes};
use std::sync::OnceLock;

use qsparse_kernels::{column_norms, ColumnTiles, Format, PackedMatrix};
use rayon::prelude::*;

use super::config::ModelConfig;
use super::proj::{Proj, Stack};
use crate::gguf::{self, dequantize, DequantError, GgufError, GgufFile, TensorInfo};

/// Why a model's weights could not be converted.
// Each variant's `#[error]` message is its documentation.
#[allow(missing_docs)]
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("tensor `{tensor}`: {source}")]
    Dequant {
        tensor: String,
        #[source]
        source: DequantError,
    },
    #[error("tensor `{tensor}` has shape {got:?}, expected {expected:?}")]
    Shape {
        tensor: String,
        got: Vec<u64>,
        expected: Vec<u64>,
    },
    #[error(
        "tensor `{tensor}` is stored ternary, but row {row} mixes blocks of different scales, \
         which ternary weights with one scale per row cannot hold: use --weights int8"
    )]
    MixedTernaryScales { tensor: String, row: usize },
    #[error("tensor `{tensor}`: {what}")]
    Unsupported { tensor: String, what: String },
}

/// The kernels' weight format to convert linear layers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightFormat {
    /// f32: exact dequantized values, the reference.
    F32,
    /// Half precision.
    F16,
    /// int8 with a per-output-row scale (absmax per row).
    Int8,
    /// Ternary {−1, 0, +1} with a per-output-row scale (2 bits a weight): a tensor stored ternary
    /// (TQ1_0, TQ2_0, I2_S) keeps its codes and scale exactly, any other is ternarized as BitNet
    /// b1.58 does. Activations take the int8 path, as with int8 weights.
    Ternary,
}

impl WeightFormat {
    /// The kernels' format for these weights.
    pub fn kernel_format(self) -> Format {
        match self {
            WeightFormat::F32 => Format::F32,
            WeightFormat::F16 => Format::F16,
            WeightFormat::Int8 => Format::I8,
            WeightFormat::Ternary => Format::T2,
        }
    }

    /// Whether activations are int8-quantized before the products (int8 and ternary weights).
    pub fn is_integer(self) -> bool {
        matches!(self, WeightFormat::Int8 | WeightFormat::Ternary)
    }

    /// The name `--weights` takes (`f32`, `f16`, `int8`, `t2`).
    pub fn name(self) -> &'static str {
        match self {
            WeightFormat::F32 => "f32",
            WeightFormat::F16 => "f16",
            WeightFormat::Int8 => "int8",
            WeightFormat::Ternary => "t2",
        }
    }
}

/// One linear layer y = W·x, W of shape [d_out, d_in].
#[derive(Debug)]
pub struct Linear {
    /// The GGUF tensors it holds, joined by `+`.
    pub name: String,
    /// The weights in the kernels' layout.
    pub matrix: PackedMatrix,
    /// ‖W[:, j]‖₂ of every input column, computed the first time weighted selection asks.
    norms: OnceLock<Vec<f32>>,
    /// Added to every output (Qwen2's q/k/v biases, ...), one per row.
    pub bias: Option<Vec<f32>>,
}

impl Linear {
    /// The layer `name` with weights `matrix`.
    pub fn new(name: String, matrix: PackedMatrix) -> Linear {
        Linear {
            name,
            matrix,
            norms: OnceLock::new(),
            bias: None,
        }
    }

    /// ‖W[:, j]‖₂ of every input column j (over every row of the stacked matrix: projections
    /// that share an input share the norm), decoded once from the packed weights.
    pub fn column_norms(&self) -> &[f32] {
        self.norms.get_or_init(|| column_norms(&self.view()))
    }

    /// A view of the tiles the kernels read.
    pub fn view(&self) -> ColumnTiles<'_> {
        self.matrix.view()
    }

    /// Its input width.
    pub fn d_in(&self) -> usize {
        self.matrix.d_in
    }

    /// Its output width.
    pub fn d_out(&self) -> usize {
        self.matrix.d_out
    }

    /// The kernels' format of its weights.
    pub fn format(&self) -> Format {
        self.matrix.format
    }
}

/// One transformer block. Projections that read the same input are stacked by rows into one
/// matrix (q/k/v; gate/up), so each takes one selection and one parallel product per token.
#[derive(Debug)]
pub struct Layer {
    /// RMSNorm weights of the attention block's input.
    pub attn_norm: Vec<f32>,
    /// Rows: q (n_heads·head_dim), then k, then v (n_kv_heads·head_dim each).
    pub wqkv: Linear,
    /// The attention output projection.
    pub wo: Linear,
    /// RMSNorm weights of the feed-forward block's input.
    pub ffn_norm: Vec<f32>,
    /// Rows: gate (d_ff), then up (d_ff).
    pub w_gate_up: Linear,
    /// The down projection.
    pub w_down: Linear,
    /// BitNet: RMSNorm weights of the attention output (before o) and of the gated FFN
    /// activation (before down).
    pub attn_sub_norm: Option<Vec<f32>>,
    /// BitNet: RMSNorm weights of the gated activation (before down).
    pub ffn_sub_norm: Option<Vec<f32>>,
    /// Qwen3: RMSNorm weights of each query head and of each key head (head_dim), before RoPE.
    pub q_norm: Option<Vec<f32>>,
    /// See `q_norm`.
    pub k_norm: Option<Vec<f32>>,
}

impl Layer {
    /// The block's matrices in the order a layer reads them ([`Stack::LAYER`]).
    pub fn matrices(&self) -> [&Linear; 4] {
        [&self.wqkv, &self.wo, &self.w_gate_up, &self.w_down]
    }

    /// The block's matrices in the order a layer reads them ([`Stack::LAYER`]).
    pub fn matrices_mut(&mut self) -> [&mut Linear; 4] {
        [
            &mut self.wqkv,
            &mut self.wo,
            &mut self.w_gate_up,
            &mut self.w_down,
        ]
    }
}

/// The token embedding table, read from the mapped file one row at a time.
#[derive(Debug, Clone)]
pub struct Embedding {
    /// The table's tensor.
    pub info: TensorInfo,
    row_bytes: usize,
}

impl Embedding {
    /// The table `info` ([d_model, vocab]), read a row at a time.
    pub fn new(info: TensorInfo) -> Result<Embedding, GgufError> {
        let d = info.dims[0];
        let row_bytes = info
            .ty
            .tensor_bytes(&[d])
            .map_err(|what| GgufError::BadTensor {
                tensor: info.name.clone(),
                what,
            })? as usize;
        Ok(Embedding { info, row_bytes })
    }

    /// Dequantize the row of `token` into `out` (d_model values).
    pub fn row(&self, file: &GgufFile, token: u32, out: &mut [f32]) -> Result<(), DequantError> {
        let data = file.tensor_data(&self.info);
        let at = token as usize * self.row_bytes;
        dequantize(self.info.ty, &data[at..at + self.row_bytes], out)
    }
}

/// Whether the lm_head's input may be sparsified (`--lm-head-sparsity`), which decides its layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HeadInput {
    /// Always dense, as Q-Sparse leaves it.
    #[default]
    Dense,
    /// Possibly sparse: the head keeps the column layout a sparse product needs.
    Sparse,
}

/// The lm_head in the layout its product reads.
#[derive(Debug)]
pub enum LmHead {
    /// Column tiles like every projection, so a sparse input skips columns: f32/f16 weights, and
    /// int8 when a sparse head input was asked for at load.
    Columns(Linear),
    /// int8 weights with a dense input: row-major Q8, which holds a Q8_0 head (SmolLM2's) exactly
    /// where a per-row int8 scale re-rounds it (+0.44% perplexity from the head alone), and reads
    /// a little faster (`qsparse_kernels::dense_q8`); or, asked for (`--lm-head-bits 4`),
    /// row-major 4-bit codes with the same block scales, for any weight format.
    Rows(RowsQ8),
}

impl LmHead {
    /// Bytes its product reads.
    pub fn bytes(&self) -> usize {
        match self {
            LmHead::Columns(l) => l.view().data().len(),
            LmHead::Rows(r) => r.bytes(),
        }
    }
}

/// A model's weights, in the kernels' formats.
#[derive(Debug)]
pub struct Weights {
    /// The format of the projections.
    pub format: WeightFormat,
    /// The token embedding.
    pub embedding: Embedding,
    /// The transformer blocks.
    pub layers: Vec<Layer>,
    /// RMSNorm weights before the lm_head.
    pub output_norm: Vec<f32>,
    /// The lm_head ([vocab, d_model]); the token embedding when the file ties them.
    pub lm_head: LmHead,
    /// Added to the logits (`output.bias`), if the file has it.
    pub output_bias: Option<Vec<f32>>,
    /// RoPE frequency factors (rope_dim/2 each): pair i turns at θ_i / factor_i. Llama 3's
    /// (`rope_freqs.weight`) for every context; else LongRoPE's short ones
    /// (`rope_factors_short.weight`) for contexts up to the original length.
    pub rope_factors: Option<Vec<f32>>,
    /// LongRoPE's long factors (`rope_factors_long.weight`), for contexts past the original
    /// length (see [`ModelConfig::rope_original_context`]).
    pub rope_factors_long: Option<Vec<f32>>,
}

impl Weights {
    /// All matrices into one huge-page mapping of this process, in the order a forward pass
    /// reads them (see `qsparse_kernels::memory`: SmolLM2 decodes 5% faster dense and 13% at S =
    /// 0.5), copied out of a packed file if read from one; with `huge_pages` false, on ordinary pages
    /// (to measure the difference). Loading does this (see [`LoadOptions`](super::LoadOptions)).
    pub fn place_in_memory(&mut self, huge_pages: bool) {
        let head = match &mut self.lm_head {
            LmHead::Columns(l) => &mut l.matrix.data,
            LmHead::Rows(r) => r.storage_mut(),
        };
        let mut data: Vec<&mut AlignedBytes> = self
            .layers
            .iter_mut()
            .flat_map(|l| l.matrices_mut())
            .map(|m| &mut m.matrix.data)
            .chain([head])
            .collect();
        if !huge_pages {
            data.iter_mut().for_each(|d| d.move_to_small_pages());
        } else {
            // Declined (no such mapping on this OS): the buffers stay on small pages, equally
            // correct.
            let _ = share_huge_pages(&mut data);
        }
    }

    /// Bytes of all linear layers and the lm_head in their converted format.
    pub fn linear_bytes(&self) -> usize {
        let layer: usize = self
            .layers
            .iter()
            .flat_map(|l| l.matrices().map(|m| m.view().data().len()))
            .sum();
        layer + self.lm_head.bytes()
    }
}

/// Every linear layer of `file` converted to `format` (parallel over matrices; the lm_head, the
/// largest, beside the others): each layer's q/k/v, o, gate/up and down, and the head.
pub(super) fn convert_all(
    file: &GgufFile,
    config: &ModelConfig,
    format: WeightFormat,
    head_input: HeadInput,
    head_bits: Option<CodeBits>,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<(Vec<[Linear; 4]>, LmHead), WeightsError> {
    if head_bits == Some(CodeBits::Four) && head_input == HeadInput::Sparse {
        return Err(WeightsError::Unsupported {
            tensor: "output.weight".to_string(),
            what: "a 4-bit lm_head takes a dense input (no --lm-head-sparsity)".to_string(),
        });
    }
    // Every matrix to convert: its tensors (stacked by rows), each (name, d_in, d_out).
    let mut linears: Vec<Vec<(String, u64, u64)>> = Vec::new();
    let part = |name: String, (d_in, d_out): (usize, usize)| (name, d_in as u64, d_out as u64);
    for l in 0..config.n_layers {
        for stack in Stack::LAYER {
            let parts = stack.tensors(file, config, l).into_iter();
            linears.push(
                parts
                    .map(|(n, d_in, d_out)| part(n, (d_in, d_out)))
                    .collect(),
            );
        }
    }
    let head_name = if file.tensor("output.weight").is_some() {
        "output.weight"
    } else {
        "token_embd.weight"
    };
    linears.push(vec![part(
        head_name.to_string(),
        Proj::LmHead.shape(config),
    )]);
    // Per-tensor scales beside ternary weights (`blk.N.attn_q.scale`, as llama.cpp's `bitnet`
    // may load them) would multiply each product: not read yet, so such a file is refused
    // rather than run without them.
    if let Some(t) = file
        .tensors()
        .iter()
        .find(|t| t.name.starts_with("blk.") && t.name.ends_with(".scale"))
    {
        return Err(WeightsError::Unsupported {
            tensor: t.name.clone(),
            what: "per-tensor projection scales are not supported yet".to_string(),
        });
    }
    let infos: Vec<Vec<TensorInfo>> = linears
        .iter()
        .map(|parts| {
            parts
                .iter()
                .map(|(n, d_in, d_out)| shape(file, n, &[*d_in, *d_out]))
                .collect()
        })
        .collect::<Result<_, _>>()?;

    let done = std::sync::atomic::AtomicUsize::new(0);
    let total = infos.len();
    let tick = || {
        progress(
            done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1,
            total,
        )
    };
    let (head_parts, layer_parts) = infos.split_last().expect("the lm_head was queued");
    // The head (the largest matrix) converts beside the blocks' matrices.
    let (lm_head, converted) = rayon::join(
        || -> Result<LmHead, WeightsError> {
            let rows = head_input == HeadInput::Dense
                && (format.is_integer() || head_bits == Some(CodeBits::Four));
            let head = if rows {
                let (d_out, d_in) = stacked_shape(head_parts);
                let bits = head_bits.unwrap_or(CodeBits::Eight);
                LmHead::Rows(RowsQ8::from_rows_bits(d_out, d_in, bits, |r, out| {
                    dequantize_row(file, head_parts, r, out)
                })?)
            } else {
                // The head is not ternarized (BitNet keeps it in higher precision): with ternary
                // weights and a sparse head input, int8 columns.
                let head_format = match format {
                    WeightFormat::Ternary => WeightFormat::Int8,
                    f => f,
                };
                LmHead::Columns(convert(file, head_parts, head_format)?)
            };
            tick();
            Ok(head)
        },
        || {
            layer_parts
                .par_iter()
                .map(|parts| {
                    let m = convert(file, parts, format)?;
                    tick();
                    Ok(m)
                })
                .collect::<Result<Vec<Linear>, WeightsError>>()
        },
    );
    let (lm_head, converted) = (lm_head?, converted?);
    let mut it = converted.into_iter();
    let layers = (0..config.n_layers)
        .map(|_| [0; 4].map(|_| it.next().expect("4 matrices per layer were queued")))
        .collect();
    Ok((layers, lm_head))
}

/// The tensor `name` of `file`, checked to have the shape `expected`.
pub(super) fn shape(
    file: &GgufFile,
    name: &str,
    expected: &[u64],
) -> Result<TensorInfo, WeightsError> {
    let info = file.require_tensor(name)?.clone();
    if info.dims != expected {
        return Err(WeightsError::Shape {
            tensor: name.to_string(),
            got: info.dims.clone(),
            expected: expected.to_vec(),
        });
    }
    Ok(info)
}

/// Pack [d_out, d_in] tensors (sharing d_in), stacked by rows, in `format`: dequantized row by
/// row straight from the file.
fn convert(
    file: &GgufFile,
    parts: &[TensorInfo],
    format: WeightFormat,
) -> Result<Linear, WeightsError> {
    let (d_out, d_in) = stacked_shape(parts);
    let matrix = match format {
        WeightFormat::Ternary => ternarize(file, parts)?,
        _ => PackedMatrix::from_rows(format.kernel_format(), d_out, d_in, |r, out| {
            dequantize_row(file, parts, r, out)
        })?,
    };
    let name = parts.iter().map(|p| p.name.as_str()).collect::<Vec<_>>();
    Ok(Linear::new(name.join("+"), matrix))
}

/// The format a run converts `file` to unless told: t2 when its projections are stored ternary
/// (TQ1_0, TQ2_0, I2_S: t2 holds them exactly in a quarter of int8's bytes), int8 otherwise.
pub fn default_format(file: &GgufFile) -> WeightFormat {
    use crate::gguf::GgmlType;
    let ternary = file.tensors().iter().any(|t| {
        t.name.starts_with("blk.")
            && matches!(t.ty, GgmlType::TQ1_0 | GgmlType::TQ2_0 | GgmlType::I2_S)
    });
    if ternary {
        WeightFormat::Ternary
    } else {
        WeightFormat::Int8
    }
}

/// The tensor `name` of `file` ([d_out, d_in]) as ternary weights, as `--weights t2` converts a
/// projection (see [`WeightFormat::Ternary`]).
pub fn ternary_matrix(file: &GgufFile, name: &str) -> Result<PackedMatrix, WeightsError> {
    let info = file.require_tensor(name)?.clone();
    if info.dims.len() != 2 {
        return Err(WeightsError::Shape {
            tensor: name.to_string(),
            expected: vec![info.dims.first().copied().unwrap_or(0), 0],
            got: info.dims,
        });
    }
    ternarize(file, &[info])
}

/// Ternary codes and per-row scales of [d_out, d_in] tensors sharing d_in, stacked by rows. A
/// tensor stored ternary keeps its own: each row's values are 0 or ±s (one scale per row; a
/// row mixing blocks of different scales is refused). Any other is ternarized as BitNet b1.58
/// does, each tensor on its own: α = mean|W| over the tensor, W_t = round(clamp(W/α, −1, 1)),
/// every row scaled by α.
fn ternarize(file: &GgufFile, parts: &[TensorInfo]) -> Result<PackedMatrix, WeightsError> {
    use crate::gguf::GgmlType;
    let (d_out, d_in) = stacked_shape(parts);
    let mut codes = vec![0i8; d_out * d_in];
    let mut scales = Vec::with_capacity(d_out);
    let mut row = vec![0f32; d_in];
    let mut r0 = 0;
    for (k, info) in parts.iter().enumerate() {
        let rows = info.dims[1] as usize;
        // This part alone, its rows numbered from 0.
        let read = |r: usize, out: &mut [f32]| dequantize_row(file, &parts[k..=k], r, out);
        let part_codes = &mut codes[r0 * d_in..(r0 + rows) * d_in];
        if matches!(info.ty, GgmlType::TQ1_0 | GgmlType::TQ2_0 | GgmlType::I2_S) {
            for (r, out) in part_codes.chunks_exact_mut(d_in).enumerate() {
                read(r, &mut row)?;
                let s = row.iter().fold(0f32, |m, v| m.max(v.abs()));
                if row.iter().any(|v| v.abs() != 0.0 && v.abs() != s) {
                    return Err(WeightsError::MixedTernaryScales {
                        tensor: info.name.clone(),
                        row: r,
                    });
                }
                for (c, &v) in out.iter_mut().zip(&row) {
                    *c = if v == 0.0 { 0 } else { v.signum() as i8 };
                }
                scales.push(s);
            }
        } else {
            let mut sum = 0f64;
            for r in 0..rows {
                read(r, &mut row)?;
                sum += row.iter().map(|v| f64::from(v.abs())).sum::<f64>();
            }
            let alpha = (sum / (rows * d_in).max(1) as f64) as f32;
            let inv = if alpha > 0.0 { 1.0 / alpha } else { 0.0 };
            for (r, out) in part_codes.chunks_exact_mut(d_in).enumerate() {
                read(r, &mut row)?;
                for (c, &v) in out.iter_mut().zip(&row) {
                    *c = (v * inv).clamp(-1.0, 1.0).round() as i8;
                }
            }
            scales.extend(std::iter::repeat_n(alpha, rows));
        }
        r0 += rows;
    }
    Ok(PackedMatrix::t2_from_codes(&codes, d_out, d_in, scales))
}

/// (d_out, d_in) of [d_out, d_in] tensors sharing d_in, stacked by rows.
fn stacked_shape(parts: &[TensorInfo]) -> (usize, usize) {
    let d_in = parts[0].dims[0] as usize;
    (parts.iter().map(|i| i.dims[1] as usize).sum(), d_in)
}

/// Row r of [d_out, d_in] tensors sharing d_in, stacked by rows, into `out` (d_in values).
fn dequantize_row(
    file: &GgufFile,
    parts: &[TensorInfo],
    mut r: usize,
    out: &mut [f32],
) -> Result<(), WeightsError> {
    for info in parts {
        let n = info.dims[1] as usize;
        if r < n {
            return gguf::dequantize_row(info.ty, file.tensor_data(info), n, r, out).map_err(
                |source| WeightsError::Dequant {
                    tensor: info.name.clone(),
                    source,
                },
            );
        }
        r -= n;
    }
    unreachable!("row beyond the stacked tensors")
}
