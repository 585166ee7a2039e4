//! `--weights t2`: a float model is ternarized by BitNet b1.58's formula, tensor by tensor; a
//! model stored ternary (bitnet.cpp's I2_S) keeps its weights exactly and runs through the T2
//! kernels as the same weights do as int8, dense and sparse; a file whose rows mix ternary scales
//! is refused.

mod common;

use std::path::Path;

use qsparse::gguf::{dequantize, GgmlType, GgufFile, GgufWriter, MetaValue, TypeDialect};
use qsparse::model::{self, HeadInput, Proj, RunState, Sparsity, WeightFormat};
use qsparse_kernels::PackedMatrix;

fn is_projection(name: &str) -> bool {
    name.starts_with("blk.")
        && Proj::ALL
            .iter()
            .filter_map(|p| p.stem())
            .any(|p| name.ends_with(&format!(".{p}.weight")))
}

/// The whole tensor `name` of `file` in f32, row-major.
fn weights(file: &GgufFile, name: &str) -> Vec<f32> {
    let info = file.require_tensor(name).unwrap();
    let mut w = vec![0f32; info.dims.iter().product::<u64>() as usize];
    dequantize(info.ty, file.tensor_data(info), &mut w).unwrap();
    w
}

/// BitNet b1.58's ternarization: α = mean|W|, W_t = round(clamp(W/α, −1, 1)).
fn bitnet(w: &[f32]) -> (Vec<i8>, f32) {
    let alpha = (w.iter().map(|v| f64::from(v.abs())).sum::<f64>() / w.len() as f64) as f32;
    let codes = w
        .iter()
        .map(|&v| (v * (1.0 / alpha)).clamp(-1.0, 1.0).round() as i8)
        .collect();
    (codes, alpha)
}

/// bitnet.cpp's I2_S bytes (x86 layout): codes t + 1 in 128-element blocks of 32 bytes, byte j
/// holding elements j, j+32, j+64, j+96 from the high bits down; then the scale, padded to 32.
fn i2_s(codes: &[i8], scale: f32) -> Vec<u8> {
    let n = codes.len();
    assert!(n.is_multiple_of(128));
    let mut b = vec![0u8; n / 4 + 32];
    for (i, &c) in codes.iter().enumerate() {
        let (blk, e) = (i / 128, i % 128);
        b[32 * blk + e % 32] |= ((c + 1) as u8) << (6 - 2 * (e / 32));
    }
    b[n / 4..n / 4 + 4].copy_from_slice(&scale.to_le_bytes());
    b
}

/// SmolLM2 cut to its first `layers` blocks, every projection replaced by `bytes(name, ternary
/// codes, α)` as `ty`.
fn ternary_copy(
    out: &Path,
    layers: u32,
    ty: GgmlType,
    bytes: impl Fn(&str, &[i8], f32) -> Vec<u8>,
) {
    let src = GgufFile::open(common::smollm2()).unwrap();
    // I2_S has an id in bitnet.cpp's numbering only (the file's other types share it).
    let mut w = GgufWriter::new().with_dialect(TypeDialect::BitnetCpp);
    for (key, value) in src.metadata() {
        let value = if key == "llama.block_count" {
            MetaValue::U32(layers)
        } else {
            value.to_owned_value()
        };
        w.add_kv(key, value);
    }
    let block = |name: &str| {
        name.strip_prefix("blk.")?
            .split('.')
            .next()?
            .parse::<u32>()
            .ok()
    };
    let kept: Vec<_> = src
        .tensors()
        .iter()
        .filter(|t| block(&t.name).is_none_or(|b| b < layers))
        .collect();
    for info in &kept {
        let t = if is_projection(&info.name) {
            ty
        } else {
            info.ty
        };
        w.add_tensor(info.name.clone(), t, &info.dims);
    }
    w.write_file(out, |i, _, sink| {
        let info = kept[i];
        if is_projection(&info.name) {
            let (codes, alpha) = bitnet(&weights(&src, &info.name));
            sink.write_all(&bytes(&info.name, &codes, alpha))
        } else {
            sink.write_all(src.tensor_data(info))
        }
    })
    .unwrap();
}

#[test]
fn float_weights_are_ternarized_tensor_by_tensor_as_bitnet_does() {
    let path = common::smollm2();
    let (m, _) = model::load(&path, WeightFormat::Ternary, &|_, _| {}).unwrap();
    let file = GgufFile::open(&path).unwrap();
    for (layer, matrix, parts) in [
        (
            3,
            &m.weights.layers[3].wqkv,
            &["attn_q", "attn_k", "attn_v"][..],
        ),
        (17, &m.weights.layers[17].w_down, &["ffn_down"][..]),
    ] {
        let (mut codes, mut scales) = (Vec::new(), Vec::new());
        for p in parts {
            let w = weights(&file, &format!("blk.{layer}.{p}.weight"));
            let (c, alpha) = bitnet(&w);
            scales.extend(std::iter::repeat_n(alpha, c.len() / matrix.d_in()));
            codes.extend(c);
        }
        let want = PackedMatrix::t2_from_codes(&codes, matrix.d_out(), matrix.d_in(), scales);
        assert_eq!(matrix.matrix.format, qsparse_kernels::Format::T2);
        assert_eq!(
            matrix.matrix.row_scale, want.row_scale,
            "layer {layer} scales"
        );
        assert!(
            matrix.matrix.data.as_slice() == want.data.as_slice(),
            "layer {layer} codes"
        );
    }
    // 2 bits a weight, rows padded to whole lines of 256.
    for l in &m.weights.layers {
        for p in [&l.wqkv, &l.wo, &l.w_gate_up, &l.w_down] {
            assert_eq!(
                p.view().data().len(),
                p.d_in() * p.d_out().div_ceil(256) * 64
            );
        }
    }
}

#[test]
fn ternary_files_run_through_the_t2_kernels_as_their_exact_int8_form() {
    // Both forms hold the weights exactly: ternary codes with the tensor's scale, and int8 ±127
    // with a row scale α/127 (every row of these tensors has a nonzero weight). With plain absmax
    // activations (no outliers) both products are the same integer sums, scaled once, so two
    // blocks' logits differ by the rounding of those scales only. Through all 30 blocks of a
    // model not trained ternary, a scale rounding that flips one int8 activation grows (2% of
    // the largest logit here): there, dense, the next token must agree.
    let dir = tempfile::tempdir().unwrap();
    let both = [Sparsity::dense(), Sparsity::uniform(0.5)];
    for (layers, bound, sparsities) in [(2, 1e-5f32, &both[..]), (30, f32::INFINITY, &both[..1])] {
        let path = dir.path().join(format!("smollm2-{layers}-i2_s.gguf"));
        ternary_copy(&path, layers, GgmlType::I2_S, |_, codes, alpha| {
            i2_s(codes, alpha)
        });
        let load = |format| {
            model::load_for(&path, format, HeadInput::Dense, &|_, _| {})
                .unwrap()
                .0
        };
        let (t2, i8) = (load(WeightFormat::Ternary), load(WeightFormat::Int8));
        assert_eq!(t2.config.n_layers, layers as usize);
        assert_eq!(
            t2.weights.layers[0].wqkv.format(),
            qsparse_kernels::Format::T2
        );
        let prompt = [1u32, 504, 3458, 282, 4649, 314, 2909, 30];
        for &sparsity in sparsities {
            let mut a = RunState::new(&t2.config, WeightFormat::Ternary, 16);
            let mut b = RunState::new(&i8.config, WeightFormat::Int8, 16);
            b.set_activation_outliers(0);
            let mut diffs = Vec::new();
            for (pos, &token) in prompt.iter().enumerate() {
                t2.forward(&mut a, token, pos, sparsity).unwrap();
                i8.forward(&mut b, token, pos, sparsity).unwrap();
                let scale = b.logits().iter().fold(0f32, |m, v| m.max(v.abs()));
                let diff = a
                    .logits()
                    .iter()
                    .zip(b.logits())
                    .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
                diffs.push(diff / scale);
                let argmax =
                    |l: &[f32]| (0..l.len()).max_by(|&i, &j| l[i].total_cmp(&l[j])).unwrap();
                assert_eq!(
                    argmax(a.logits()),
                    argmax(b.logits()),
                    "{layers} blocks, {sparsity:?}, position {pos}"
                );
            }
            eprintln!(
                "{layers} blocks, {sparsity:?}: logit differences (of the largest logit) {diffs:?}"
            );
            // A sparse selection can also differ: one activation a rounding apart ties at the
            // Top-K threshold (int8 magnitudes tie often), and the two runs keep different
            // columns at that position. A wrong T2 product would differ everywhere.
            let close = diffs.iter().filter(|&&d| d <= bound).count();
            let need = if sparsity == Sparsity::dense() {
                diffs.len()
            } else {
                diffs.len() - 2
            };
            assert!(close >= need, "{layers} blocks, {sparsity:?}: {diffs:?}");
        }
    }
}

#[test]
fn a_ternary_row_mixing_scales_is_refused_for_t2_only() {
    // TQ2_0 keeps one scale per 256 weights; give the two blocks of each 512-weight row of a
    // synthetic file different scales. SmolLM2's rows (576) are not whole TQ2_0 blocks, so the
    // check runs on the dequantizer's input directly through a tiny file of one projection.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mixed.gguf");
    let mut w = GgufWriter::new();
    w.add_kv(
        "general.architecture",
        qsparse::gguf::MetaValue::String("llama".into()),
    );
    w.add_tensor("blk.0.ffn_down.weight", GgmlType::TQ2_0, &[512, 2]);
    let block = |d: f32| {
        let mut b = vec![0u8; 66];
        for (k, byte) in b[..64].iter_mut().enumerate() {
            *byte = (k % 3) as u8 * 0b0101_0101; // codes 0, 1 or 2 in every field
        }
        b[64..].copy_from_slice(&half::f16::from_f32(d).to_le_bytes());
        b
    };
    w.write_file(&path, |_, _, sink| {
        for d in [0.5, 0.25, 0.5, 0.5] {
            sink.write_all(&block(d))?;
        }
        Ok(())
    })
    .unwrap();
    let file = GgufFile::open(&path).unwrap();
    let err = model::ternary_matrix(&file, "blk.0.ffn_down.weight").unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("blk.0.ffn_down.weight")
            && msg.contains("row 0")
            && msg.contains("--weights int8"),
        "{msg}"
    );
}
