//! Packed model files (`qsparse pack`): a GGUF file whose linear layers are stored exactly as the
//! kernels read them (column tiles, or the row-major Q8 head), so that a run maps them in place
//! instead of converting them: no conversion at load and no second copy of the weights in memory
//! (the file's pages are the weights, shared with the page cache) where the OS maps the file with
//! huge pages; elsewhere they are copied once, still without conversion (`read_in_place`).
//!
//! Still a valid GGUF file that standard tools list: 64-byte alignment, every packed matrix one
//! `I8` byte tensor (named after the layers it replaces, `blk.N.attn_qkv.packed`, ...) with its
//! per-row scales as an `F32` tensor (`....packed_scale`), and every other tensor and metadata
//! entry of the source as it was (the tokenizer, the chat template, the token embedding, the
//! norms). llama.cpp cannot run it: its linear layers are no longer in ggml's layout.
//!
//! The layout is described by `qsparse.pack.*` keys, checked at load against this build's
//! kernels: a file packed by a build with another layout is refused with a clear error, never
//! misread.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use qsparse_kernels::dense_q8::{CodeBits, RowsQ8};
use qsparse_kernels::memory::AlignedBytes;
use qsparse_kernels::{Format, PackedMatrix, LINES_PER_TILE, LINE_BYTES};

use super::config::ModelConfig;
use super::proj::{Proj, Stack};
use super::weights::{HeadInput, Linear, LmHead, WeightFormat, Weights};
use crate::gguf::{dequantize, GgmlType, GgufError, GgufFile, GgufWriter, TensorInfo};

/// The packed layout's version; a file with another one is refused.
pub const VERSION: u32 = 1;

const KEY_VERSION: &str = "qsparse.pack.version";
const KEY_WEIGHTS: &str = "qsparse.pack.weights";
const KEY_HEAD: &str = "qsparse.pack.head";
const KEY_LINE_BYTES: &str = "qsparse.pack.line_bytes";
const KEY_LINES_PER_TILE: &str = "qsparse.pack.lines_per_tile";
/// Whether the packed head is a copy of the token embedding (the source tied them): then it adds
/// no parameters to the model.
const KEY_TIED_HEAD: &str = "qsparse.pack.tied_head";
/// A calibrated sparsity profile (`qsparse calibrate`'s JSON) the packed file runs with unless
/// told otherwise (`pack --sparsity-profile`).
pub const KEY_SPARSITY_PROFILE: &str = "qsparse.sparsity_profile";

/// `qsparse.pack.head` for a row-major Q8 head (int8 weights, dense head input).
const HEAD_ROWS_Q8: &str = "rows_q8";
/// `qsparse.pack.head` for a row-major head of 4-bit codes (`--lm-head-bits 4`).
const HEAD_ROWS_Q4: &str = "rows_q4";
/// `qsparse.pack.head` for a head in column tiles like every projection.
const HEAD_COLUMNS: &str = "columns";

/// Tensor-data alignment of packed files: the kernels' line size.
const ALIGNMENT: u64 = 64;

/// Why a packed file cannot be read (or a model cannot be packed).
// Each variant's `#[error]` message is its documentation.
#[allow(missing_docs)]
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("packed with layout version {found}; this build reads version {VERSION} (pack the model again)")]
    Version { found: u64 },
    #[error("packed with {packed} weights; run it with `--weights {packed}` or without `--weights` (or pack again with `--weights {asked}`)")]
    Weights { packed: String, asked: &'static str },
    #[error("packed for a dense lm_head input; pack it with `--sparse-head` to sparsify the head")]
    DenseHead,
    #[error("its lm_head is packed as {packed}; run it without `--lm-head-bits` or pack it again with the width asked for")]
    HeadBits { packed: &'static str },
    #[error("packed with a different tile geometry ({key} = {found}, this build uses {expected}); pack the model again")]
    Geometry {
        key: &'static str,
        found: u64,
        expected: u64,
    },
    #[error("`{value}` is not a packed lm_head layout")]
    HeadLayout { value: String },
    #[error("packed tensor `{tensor}`: {what}")]
    Tensor { tensor: String, what: String },
    #[error("{0} is already a packed model")]
    AlreadyPacked(String),
}

/// Whether `file` is a packed model.
pub fn is_packed(file: &GgufFile) -> bool {
    file.get(KEY_VERSION).is_some()
}

/// The weight format a packed file holds (None for a plain GGUF file, or an unknown format,
/// which loading then reports).
pub fn weight_format(file: &GgufFile) -> Option<WeightFormat> {
    let name = file.get(KEY_WEIGHTS)?.as_str()?.to_string();
    [
        WeightFormat::Int8,
        WeightFormat::Ternary,
        WeightFormat::F16,
        WeightFormat::F32,
    ]
    .into_iter()
    .find(|f| f.name() == name)
    .filter(|_| is_packed(file))
}

/// The file bytes holding a packed file's matrices and their scales (they follow the source's
/// other tensors, to the end of the file).
pub(super) fn matrix_bytes(file: &GgufFile) -> std::ops::Range<usize> {
    let start = file
        .tensors()
        .iter()
        .filter(|t| t.name.ends_with(".packed") || t.name.ends_with(".packed_scale"))
        .map(|t| t.file_offset as usize)
        .min()
        .unwrap_or(0);
    start..file.file_size() as usize
}

/// Whether a packed file's matrices (`matrix_bytes`) should be read in place: mapped now (as
/// the first token would fault them), at least 3/4 of them got 2 MB pages. The page cache holds
/// a file in 2 MB folios only on some systems (ext4 with large folios, Linux 6.16+) and only
/// when it read the file that way; on small pages a sparse gather is slower (`qsparse bench`
/// against `QSPARSE_NO_HUGE_PAGES=1`), so there the matrices are better copied into the
/// process's huge-page memory (still no conversion). Where the OS does not say, in place.
pub(super) fn read_in_place(file: &GgufFile, matrices: std::ops::Range<usize>) -> bool {
    let Some(map) = file.mapping() else {
        return false;
    };
    file.populate(matrices);
    super::residency::huge_page_coverage(map).is_none_or(|c| c >= 0.75)
}

/// What a packed file says of itself (`inspect` shows it); None for a plain GGUF file.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PackInfo {
    /// The packed layout's version.
    pub version: Option<u64>,
    /// The linear layers' weight format (`int8`, `f16`, `f32`).
    pub weights: Option<String>,
    /// The lm_head's layout: `rows_q8` (dense input) or `columns`.
    pub lm_head: Option<String>,
}

/// What `file` says of itself as a packed model (None for a plain GGUF file).
pub fn info(file: &GgufFile) -> Option<PackInfo> {
    let text = |k: &str| file.get(k).and_then(|v| v.as_str().map(str::to_string));
    is_packed(file).then(|| PackInfo {
        version: file.get(KEY_VERSION).and_then(|v| v.as_u64()),
        weights: text(KEY_WEIGHTS),
        lm_head: text(KEY_HEAD),
    })
}

/// The name of the packed matrix of layer `l`'s `stack` (`blk.N.attn_qkv.packed`,
/// `attn_output`, `ffn_gate_up`, `ffn_down`), or the head's (`output.packed`).
fn matrix_name(l: usize, stack: Stack) -> String {
    match packed_stem(stack) {
        Some(what) => format!("blk.{l}.{what}.packed"),
        None => HEAD_MATRIX.to_string(),
    }
}

/// The packed head's tensor name.
const HEAD_MATRIX: &str = "output.packed";

/// The stem of a block's packed matrix; None for the head.
fn packed_stem(stack: Stack) -> Option<&'static str> {
    match stack {
        Stack::Qkv => Some("attn_qkv"),
        Stack::O => Some("attn_output"),
        Stack::GateUp => Some("ffn_gate_up"),
        Stack::Down => Some("ffn_down"),
        Stack::LmHead => None,
    }
}

/// The model's parameters in `file`: a packed matrix counts its weights (not its bytes), its
/// scales none, a head tied to the token embedding none; every other tensor its elements.
pub fn parameters(file: &GgufFile, config: &ModelConfig) -> u64 {
    let tied = file.get(KEY_TIED_HEAD).and_then(|v| v.as_bool()) == Some(true);
    let weights = |stack: Stack| {
        let (d_in, d_out) = stack.shape(config);
        (d_in * d_out) as u64
    };
    let packed = |name: &str| {
        if name == HEAD_MATRIX {
            return Some(Stack::LmHead);
        }
        let rest = name.strip_prefix("blk.")?.strip_suffix(".packed")?;
        let (_, what) = rest.split_once('.')?;
        Stack::LAYER
            .into_iter()
            .find(|&s| packed_stem(s) == Some(what))
    };
    file.tensors()
        .iter()
        .map(|t| match packed(&t.name) {
            _ if t.name.ends_with(".packed_scale") => 0,
            Some(Stack::LmHead) if tied => 0,
            Some(stack) => weights(stack),
            None => t.n_elements(),
        })
        .sum()
}

fn scale_name(matrix: &str) -> String {
    format!("{matrix}_scale")
}

/// The source tensors a packed file replaces (layer projections and a separate lm_head).
fn is_replaced(name: &str) -> bool {
    if name == "output.weight" {
        return true;
    }
    let Some(rest) = name.strip_prefix("blk.") else {
        return false;
    };
    let Some((layer, tail)) = rest.split_once('.') else {
        return false;
    };
    // Phi-3's fused q/k/v is replaced too (its fused gate/up is `ffn_up`).
    layer.parse::<usize>().is_ok()
        && tail.strip_suffix(".weight").is_some_and(|stem| {
            stem == "attn_qkv" || Proj::ALL.iter().any(|p| p.stem() == Some(stem))
        })
}

/// The bytes one tensor of the packed file is written from.
enum Blob<'a> {
    Bytes(&'a [u8]),
    Floats(&'a [f32]),
}

/// Write `weights` (converted from `source`) as a packed model to `out`: atomically (a temp file
/// renamed into place), streamed tensor by tensor; `progress(done, total)` counts tensor bytes.
/// Returns the bytes written.
pub fn write(
    source: &GgufFile,
    weights: &Weights,
    out: &Path,
    progress: &dyn Fn(u64, u64),
) -> Result<u64, PackError> {
    write_with_profile(source, weights, out, None, progress)
}

/// [`write`], storing `profile` (a sparsity profile's JSON) under [`KEY_SPARSITY_PROFILE`].
pub fn write_with_profile(
    source: &GgufFile,
    weights: &Weights,
    out: &Path,
    profile: Option<&str>,
    progress: &dyn Fn(u64, u64),
) -> Result<u64, PackError> {
    if is_packed(source) {
        let name = source
            .path()
            .map_or("the input".to_string(), |p| p.display().to_string());
        return Err(PackError::AlreadyPacked(name));
    }
    let mut w = GgufWriter::new()
        .with_alignment(ALIGNMENT)?
        .with_dialect(source.dialect());
    for (key, value) in source.metadata() {
        if key != "general.alignment" {
            w.add_kv(key, value.to_owned_value());
        }
    }
    w.add_kv(KEY_VERSION, VERSION);
    w.add_kv(KEY_WEIGHTS, weights.format.name());
    w.add_kv(KEY_LINE_BYTES, LINE_BYTES as u32);
    w.add_kv(KEY_LINES_PER_TILE, LINES_PER_TILE as u32);
    let head_layout = match &weights.lm_head {
        LmHead::Rows(r) if r.bits() == CodeBits::Four => HEAD_ROWS_Q4,
        LmHead::Rows(_) => HEAD_ROWS_Q8,
        LmHead::Columns(_) => HEAD_COLUMNS,
    };
    w.add_kv(KEY_HEAD, head_layout);
    w.add_kv(KEY_TIED_HEAD, source.tensor("output.weight").is_none());
    if let Some(json) = profile {
        w.add_kv(KEY_SPARSITY_PROFILE, json);
    }

    let mut blobs: Vec<Blob> = Vec::new();
    // The source's other tensors as they are (token embedding, norms, ...).
    for info in source.tensors().iter().filter(|i| !is_replaced(&i.name)) {
        w.add_tensor(info.name.clone(), info.ty, &info.dims);
        blobs.push(Blob::Bytes(source.tensor_data(info)));
    }
    for (l, layer) in weights.layers.iter().enumerate() {
        for (stack, m) in Stack::LAYER.into_iter().zip(layer.matrices()) {
            add_matrix(&mut w, &mut blobs, matrix_name(l, stack), &m.matrix);
        }
    }
    let head = HEAD_MATRIX.to_string();
    match &weights.lm_head {
        LmHead::Columns(l) => add_matrix(&mut w, &mut blobs, head, &l.matrix),
        LmHead::Rows(r) => {
            w.add_tensor(head.clone(), GgmlType::I8, &[r.code_bytes().len() as u64]);
            blobs.push(Blob::Bytes(r.code_bytes()));
            w.add_tensor(scale_name(&head), GgmlType::F32, &[r.scales().len() as u64]);
            blobs.push(Blob::Floats(r.scales()));
        }
    }
    let size = |b: &Blob| match b {
        Blob::Bytes(b) => b.len() as u64,
        Blob::Floats(v) => 4 * v.len() as u64,
    };
    let total: u64 = blobs.iter().map(size).sum();
    let mut done = 0;
    let written = w.write_file(out, |i, _, sink: &mut dyn Write| {
        match blobs[i] {
            Blob::Bytes(b) => sink.write_all(b)?,
            Blob::Floats(v) => {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                sink.write_all(&bytes)?
            }
        }
        done += size(&blobs[i]);
        progress(done, total);
        Ok(())
    })?;
    Ok(written)
}

/// A packed matrix's tensors: its tiles as bytes, and its row scales when integer.
fn add_matrix<'a>(
    w: &mut GgufWriter,
    blobs: &mut Vec<Blob<'a>>,
    name: String,
    m: &'a PackedMatrix,
) {
    w.add_tensor(name.clone(), GgmlType::I8, &[m.data.len() as u64]);
    blobs.push(Blob::Bytes(m.data.as_slice()));
    if m.format.is_integer() {
        w.add_tensor(
            scale_name(&name),
            GgmlType::F32,
            &[m.row_scale.len() as u64],
        );
        blobs.push(Blob::Floats(&m.row_scale));
    }
}

/// The packed matrices of `file`, read in place: each layer's four (q/k/v, o, gate/up, down)
/// and the lm_head. `format` and `head_input` are what the run asks for; a file packed otherwise
/// is refused with the flag that would run it.
pub(super) fn matrices(
    file: &GgufFile,
    config: &ModelConfig,
    format: WeightFormat,
    head_input: HeadInput,
    head_bits: Option<CodeBits>,
) -> Result<(Vec<[Linear; 4]>, LmHead), PackError> {
    let version = file.get_u64(KEY_VERSION)?;
    if version != u64::from(VERSION) {
        return Err(PackError::Version { found: version });
    }
    let packed = file.get_str(KEY_WEIGHTS)?;
    if packed != format.name() {
        return Err(PackError::Weights {
            packed: packed.to_string(),
            asked: format.name(),
        });
    }
    for (key, expected) in [
        (KEY_LINE_BYTES, LINE_BYTES),
        (KEY_LINES_PER_TILE, LINES_PER_TILE),
    ] {
        let found = file.get_u64(key)?;
        if found != expected as u64 {
            return Err(PackError::Geometry {
                key,
                found,
                expected: expected as u64,
            });
        }
    }
    let rows_head = match file.get_str(KEY_HEAD)? {
        HEAD_ROWS_Q8 => Some(CodeBits::Eight),
        HEAD_ROWS_Q4 => Some(CodeBits::Four),
        HEAD_COLUMNS => None,
        other => {
            return Err(PackError::HeadLayout {
                value: other.to_string(),
            })
        }
    };
    if rows_head.is_some() && head_input == HeadInput::Sparse {
        return Err(PackError::DenseHead);
    }
    let packed_as = match rows_head {
        Some(CodeBits::Four) => "4-bit codes",
        Some(CodeBits::Eight) => "8-bit codes",
        None => "columns",
    };
    let mismatch = match (head_bits, rows_head) {
        (Some(asked), Some(packed)) => asked != packed,
        (Some(asked), None) => asked == CodeBits::Four,
        (None, _) => false,
    };
    if mismatch {
        return Err(PackError::HeadBits { packed: packed_as });
    }

    let reader = Reader { file };
    let kernel = format.kernel_format();
    let mut layers = Vec::with_capacity(config.n_layers);
    for l in 0..config.n_layers {
        let mats = Stack::LAYER
            .iter()
            .map(|&stack| {
                let (d_in, d_out) = stack.shape(config);
                reader.matrix(&matrix_name(l, stack), kernel, d_out, d_in)
            })
            .collect::<Result<Vec<Linear>, PackError>>()?;
        layers.push(mats.try_into().expect("four shapes"));
    }
    let head = HEAD_MATRIX.to_string();
    let lm_head = if let Some(bits) = rows_head {
        let codes = reader.bytes(&head)?;
        let scales = reader.floats(&scale_name(&head))?;
        let (vocab, d) = (config.vocab_size, config.d_model);
        let width = if bits == CodeBits::Four { 4 } else { 8 };
        LmHead::Rows(
            RowsQ8::from_parts(codes, scales, vocab, d, bits).ok_or_else(|| PackError::Tensor {
                tensor: head.clone(),
                what: format!(
                    "its codes or scales do not fit a {vocab} x {d} head of {width}-bit codes"
                ),
            })?,
        )
    } else {
        LmHead::Columns(reader.matrix(&head, kernel, config.vocab_size, config.d_model)?)
    };
    Ok((layers, lm_head))
}

/// Reads packed tensors of one file, in place when it is mapped.
struct Reader<'a> {
    file: &'a GgufFile,
}

impl Reader<'_> {
    fn info(&self, name: &str, ty: GgmlType) -> Result<&TensorInfo, PackError> {
        let info = self.file.require_tensor(name)?;
        if info.ty != ty || info.dims.len() != 1 {
            return Err(PackError::Tensor {
                tensor: name.to_string(),
                what: format!(
                    "is {} {:?}, expected one-dimensional {}",
                    info.ty.name(),
                    info.dims,
                    ty.name()
                ),
            });
        }
        Ok(info)
    }

    /// An `I8` byte tensor: a view of the mapping (a copy for a file held in memory).
    fn bytes(&self, name: &str) -> Result<AlignedBytes, PackError> {
        let info = self.info(name, GgmlType::I8)?;
        let len = info.n_bytes as usize;
        match self.file.mapping() {
            Some(map) => AlignedBytes::from_file(Arc::clone(map), info.file_offset as usize, len)
                .ok_or_else(|| PackError::Tensor {
                    tensor: name.to_string(),
                    what: format!(
                        "its data at byte {} is not 64-byte aligned",
                        info.file_offset
                    ),
                }),
            None => {
                let mut copy = AlignedBytes::zeroed(len);
                copy.as_mut_slice()
                    .copy_from_slice(self.file.tensor_data(info));
                Ok(copy)
            }
        }
    }

    /// An `F32` tensor's values.
    fn floats(&self, name: &str) -> Result<Vec<f32>, PackError> {
        let info = self.info(name, GgmlType::F32)?;
        let mut v = vec![0f32; info.dims[0] as usize];
        dequantize(info.ty, self.file.tensor_data(info), &mut v).map_err(|e| {
            PackError::Tensor {
                tensor: name.to_string(),
                what: e.to_string(),
            }
        })?;
        Ok(v)
    }

    /// A [d_out, d_in] matrix in column tiles of `format`, with its row scales when integer.
    fn matrix(
        &self,
        name: &str,
        format: Format,
        d_out: usize,
        d_in: usize,
    ) -> Result<Linear, PackError> {
        let data = self.bytes(name)?;
        let scales = if format.is_integer() {
            self.floats(&scale_name(name))?
        } else {
            Vec::new()
        };
        let matrix = PackedMatrix::from_parts(format, d_out, d_in, data, scales).map_err(|e| {
            PackError::Tensor {
                tensor: name.to_string(),
                what: e.to_string(),
            }
        })?;
        Ok(Linear::new(name.to_string(), matrix))
    }
}
