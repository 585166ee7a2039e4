//! The fine-tuned model file: the input model's metadata and untrained tensors as they were, the
//! trained projections in f16 or q8_0, other trained tensors in f32 (norms) or f16
//! (embeddings), and `qsparse.finetune.*` keys saying how it was made. Written atomically.

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::gguf::{dequantize, GgmlType, GgufFile, GgufWriter, MetaValue};
use crate::model::pack::KEY_SPARSITY_PROFILE;

/// How the trained projections are stored.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum ProjectionType {
    /// Half precision: 2 bytes a weight.
    F16,
    /// ggml's Q8_0: blocks of 32 int8 weights with an f16 scale (8.5 bits a weight).
    Q8_0,
}

/// What the output file records of its training (`qsparse.finetune.*`).
#[derive(Debug, Clone)]
pub struct Provenance {
    /// The sparsity trained at (the profile's mean when trained with one).
    pub sparsity: f32,
    /// The recipe: "topk-ste" (cross-entropy) or "topk-ste-distill".
    pub method: String,
    /// Training tokens seen.
    pub tokens: u64,
    /// Where the text came from.
    pub data: String,
    /// The sparsity profile trained at (its JSON), stored for runs to use by default.
    pub profile: Option<String>,
}

/// Whether `name` is a block projection's weight (q, k, v, o, gate, up, down).
pub fn is_projection(name: &str) -> bool {
    let mut parts = name.split('.');
    parts.next() == Some("blk")
        && parts.next().is_some()
        && matches!(
            parts.next(),
            Some(
                "attn_q" | "attn_k" | "attn_v" | "attn_output" | "ffn_gate" | "ffn_up" | "ffn_down"
            )
        )
}

/// Write `out` from the input model `source` and the trained tensors `trained` (f32).
pub fn write(
    source: &GgufFile,
    trained: &GgufFile,
    projections: ProjectionType,
    provenance: &Provenance,
    out: &Path,
) -> Result<u64> {
    let mut w = GgufWriter::new().with_dialect(source.dialect());
    for (key, value) in source.metadata() {
        // A profile the input held was calibrated for the weights before training.
        if !key.starts_with("qsparse.finetune.")
            && key != "general.alignment"
            && key != KEY_SPARSITY_PROFILE
        {
            w.add_kv(key, value.to_owned_value());
        }
    }
    w.add_kv(
        "qsparse.finetune.sparsity",
        MetaValue::F32(provenance.sparsity),
    );
    w.add_kv(
        "qsparse.finetune.method",
        MetaValue::String(provenance.method.clone()),
    );
    w.add_kv("qsparse.finetune.tokens", MetaValue::U64(provenance.tokens));
    w.add_kv(
        "qsparse.finetune.data",
        MetaValue::String(provenance.data.clone()),
    );
    if let Some(profile) = &provenance.profile {
        w.add_kv(KEY_SPARSITY_PROFILE, MetaValue::String(profile.clone()));
    }
    enum Blob<'a> {
        Source(&'a [u8]),
        Trained(&'a [u8], GgmlType),
    }
    let mut blobs = Vec::new();
    for info in source.tensors() {
        match trained.tensor(&info.name) {
            None => {
                w.add_tensor(info.name.clone(), info.ty, &info.dims);
                blobs.push(Blob::Source(source.tensor_data(info)));
            }
            Some(t) => {
                if t.dims != info.dims || t.ty != GgmlType::F32 {
                    bail!(
                        "the trainer's {} is {:?} {:?}, expected f32 {:?}",
                        info.name,
                        t.ty,
                        t.dims,
                        info.dims
                    );
                }
                let ty = if is_projection(&info.name) {
                    match projections {
                        ProjectionType::Q8_0 if info.dims[0] % 32 == 0 => GgmlType::Q8_0,
                        _ => GgmlType::F16,
                    }
                } else if info.dims.len() == 1 {
                    GgmlType::F32
                } else {
                    GgmlType::F16
                };
                w.add_tensor(info.name.clone(), ty, &info.dims);
                blobs.push(Blob::Trained(trained.tensor_data(t), ty));
            }
        }
    }
    let written = w
        .write_file(out, |i, _, sink| match &blobs[i] {
            Blob::Source(bytes) => sink.write_all(bytes),
            Blob::Trained(bytes, ty) => write_as(bytes, *ty, sink),
        })
        .with_context(|| format!("cannot write {}", out.display()))?;
    Ok(written)
}

/// f32 little-endian `bytes` written as `ty` (F32, F16 or Q8_0).
fn write_as(bytes: &[u8], ty: GgmlType, sink: &mut dyn Write) -> std::io::Result<()> {
    let mut values = vec![0f32; bytes.len() / 4];
    dequantize(GgmlType::F32, bytes, &mut values).map_err(std::io::Error::other)?;
    match ty {
        GgmlType::F32 => sink.write_all(bytes),
        GgmlType::F16 => {
            let out: Vec<u8> = values
                .iter()
                .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                .collect();
            sink.write_all(&out)
        }
        _ => sink.write_all(&quantize_q8_0(&values)),
    }
}

/// ggml's Q8_0 of `values` (a whole number of 32-value blocks): per block an f16 scale d =
/// absmax/127, then round(v/d) as int8.
pub fn quantize_q8_0(values: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() / 32 * 34);
    for block in values.chunks_exact(32) {
        let amax = block.iter().fold(0f32, |a, v| a.max(v.abs()));
        let d = amax / 127.0;
        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&half::f16::from_f32(d).to_le_bytes());
        out.extend(block.iter().map(|v| (v * id).round() as i8 as u8));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_0_round_trips_within_half_a_step() {
        let values: Vec<f32> = (0..64)
            .map(|i| ((i * 37 % 29) as f32 - 14.0) / 7.0)
            .collect();
        let q = quantize_q8_0(&values);
        assert_eq!(q.len(), 68);
        let mut back = vec![0f32; 64];
        dequantize(GgmlType::Q8_0, &q, &mut back).unwrap();
        for (block, back) in values.chunks(32).zip(back.chunks(32)) {
            let step = block.iter().fold(0f32, |a, v| a.max(v.abs())) / 127.0;
            for (a, b) in block.iter().zip(back) {
                assert!((a - b).abs() <= step * 0.51 + 1e-3 * step, "{a} vs {b}");
            }
        }
    }

    #[test]
    fn projections_are_named_by_their_stem() {
        assert!(is_projection("blk.3.attn_q.weight"));
        assert!(is_projection("blk.0.ffn_down.weight"));
        assert!(!is_projection("blk.0.attn_norm.weight"));
        assert!(!is_projection("token_embd.weight"));
    }
}
