//! The `bitnet` architecture (BitNet b1.58 as llama.cpp runs it: llama with RMSNorm sub-norms on
//! the attention output before the o projection and on the gated FFN activation before down,
//! ternary projections, tied embeddings) against llama.cpp, on a small model this test writes:
//! random ternary TQ2_0 projections at 256 x 512 shapes, SmolLM2's tokenizer. The fixture
//! tests/fixtures/bitnet_llamacpp.json (scripts/make_bitnet_fixture.py, which has this test
//! write the model and runs llama.cpp on it) holds llama.cpp's logits and greedy tokens, and the
//! sha256 of the file llama.cpp ran, which the file written here must match.

mod common;

use std::path::Path;

use qsparse::gguf::{GgmlType, GgufFile, GgufWriter, MetaValue};
use qsparse::model::{self, FfnActivation, RunState, Sparsity, WeightFormat};
use qsparse::sample::argmax;
use sha2::{Digest, Sha256};

/// A model's shape; head dimension d_model / heads.
#[derive(Debug, Clone, Copy)]
struct Shape {
    layers: u32,
    d_model: u64,
    d_ff: u64,
    heads: u32,
    kv_heads: u32,
}

/// The test model's: small enough to write in a blink.
const TEST: Shape = Shape {
    layers: 2,
    d_model: 256,
    d_ff: 512,
    heads: 4,
    kv_heads: 2,
};

/// xorshift64*: the same stream on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in [−1, 1).
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// TQ2_0 bytes of ternary `codes` (a whole number of 256-value blocks), every block scaled by
/// `d`: per block qs[64] then f16 d; in each 32-byte half, byte m holds elements m, m+32, m+64,
/// m+96 of that half at bits 1:0, 3:2, 5:4, 7:6, as t + 1.
fn tq2_0(codes: &[i8], d: f32) -> Vec<u8> {
    let mut out = Vec::with_capacity(codes.len() / 256 * 66);
    for block in codes.chunks_exact(256) {
        let mut qs = [0u8; 64];
        for (e, &c) in block.iter().enumerate() {
            let (j, l, m) = (e / 128, (e % 128) / 32, e % 32);
            qs[32 * j + m] |= ((c + 1) as u8) << (2 * l);
        }
        out.extend_from_slice(&qs);
        out.extend_from_slice(&half::f16::from_f32(d).to_le_bytes());
    }
    out
}

/// The test model: `bitnet`, 2 blocks, d_model 256, FFN 512, 4 heads sharing 2 kv heads of 64,
/// SmolLM2's vocabulary and tokenizer, random weights from a fixed seed, the projections ternary
/// as TQ2_0, or as F32 holding the same values (`f32_projections`). `activation` names the FFN
/// activation in the metadata (llama.cpp's default, SiLU, when None).
fn write_model(path: &Path, activation: Option<&str>, f32_projections: bool) {
    write_shaped(path, TEST, activation, f32_projections)
}

/// [`write_model`] at any shape.
fn write_shaped(path: &Path, shape: Shape, activation: Option<&str>, f32_projections: bool) {
    let Shape {
        layers,
        d_model,
        d_ff,
        heads,
        kv_heads,
    } = shape;
    let head_dim = d_model / u64::from(heads);
    let smollm2 = GgufFile::open(common::smollm2()).unwrap();
    let vocab = smollm2.get_array("tokenizer.ggml.tokens").unwrap().len();
    let mut w = GgufWriter::new();
    w.add_kv("general.architecture", MetaValue::String("bitnet".into()));
    w.add_kv(
        "general.name",
        MetaValue::String("qsparse bitnet test".into()),
    );
    let arch = |k: &str| format!("bitnet.{k}");
    w.add_kv(arch("block_count"), MetaValue::U32(layers));
    w.add_kv(arch("context_length"), MetaValue::U32(256));
    w.add_kv(arch("embedding_length"), MetaValue::U32(d_model as u32));
    w.add_kv(arch("feed_forward_length"), MetaValue::U32(d_ff as u32));
    w.add_kv(arch("attention.head_count"), MetaValue::U32(heads));
    w.add_kv(arch("attention.head_count_kv"), MetaValue::U32(kv_heads));
    w.add_kv(
        arch("attention.layer_norm_rms_epsilon"),
        MetaValue::F32(1e-5),
    );
    w.add_kv(arch("rope.freq_base"), MetaValue::F32(10_000.0));
    w.add_kv(
        arch("rope.dimension_count"),
        MetaValue::U32(head_dim as u32),
    );
    if let Some(a) = activation {
        w.add_kv(arch("hidden_activation"), MetaValue::String(a.into()));
    }
    for (key, value) in smollm2.metadata() {
        if key.starts_with("tokenizer.") {
            w.add_kv(key, value.to_owned_value());
        }
    }
    let kv = u64::from(kv_heads) * head_dim;
    let mut tensors: Vec<(String, GgmlType, Vec<u64>)> = vec![
        (
            "token_embd.weight".into(),
            GgmlType::F16,
            vec![d_model, vocab],
        ),
        ("output_norm.weight".into(), GgmlType::F32, vec![d_model]),
    ];
    for l in 0..layers {
        let t = |n: &str| format!("blk.{l}.{n}.weight");
        tensors.extend([
            (t("attn_norm"), GgmlType::F32, vec![d_model]),
            (t("attn_q"), GgmlType::TQ2_0, vec![d_model, d_model]),
            (t("attn_k"), GgmlType::TQ2_0, vec![d_model, kv]),
            (t("attn_v"), GgmlType::TQ2_0, vec![d_model, kv]),
            (t("attn_output"), GgmlType::TQ2_0, vec![d_model, d_model]),
            (t("attn_sub_norm"), GgmlType::F32, vec![d_model]),
            (t("ffn_norm"), GgmlType::F32, vec![d_model]),
            (t("ffn_gate"), GgmlType::TQ2_0, vec![d_model, d_ff]),
            (t("ffn_up"), GgmlType::TQ2_0, vec![d_model, d_ff]),
            (t("ffn_down"), GgmlType::TQ2_0, vec![d_ff, d_model]),
            (t("ffn_sub_norm"), GgmlType::F32, vec![d_ff]),
        ]);
    }
    for (name, ty, dims) in &tensors {
        let ty = match ty {
            GgmlType::TQ2_0 if f32_projections => GgmlType::F32,
            t => *t,
        };
        w.add_tensor(name.clone(), ty, dims);
    }
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let data: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, ty, dims)| {
            let n = dims.iter().product::<u64>() as usize;
            match ty {
                GgmlType::F16 => (0..n)
                    .flat_map(|_| half::f16::from_f32(rng.unit()).to_le_bytes())
                    .collect(),
                // Norm weights around 1.
                GgmlType::F32 => (0..n)
                    .flat_map(|_| (1.0 + 0.2 * rng.unit()).to_le_bytes())
                    .collect(),
                _ => {
                    let codes: Vec<i8> = (0..n).map(|_| (rng.next() % 3) as i8 - 1).collect();
                    // Scaled so each product keeps its input's magnitude (2/3 of the weights
                    // are nonzero).
                    let d = half::f16::from_f32(1.2 / (dims[0] as f32 * 2.0 / 3.0).sqrt());
                    if f32_projections {
                        codes
                            .iter()
                            .flat_map(|&c| (f32::from(c) * d.to_f32()).to_le_bytes())
                            .collect()
                    } else {
                        tq2_0(&codes, d.to_f32())
                    }
                }
            }
        })
        .collect();
    w.write_file(path, |i, _, sink| sink.write_all(&data[i]))
        .unwrap();
}

fn sha256(path: &Path) -> String {
    Sha256::digest(std::fs::read(path).unwrap())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Writes the test model where `QSPARSE_BITNET_MODEL` says, and its F32 form where
/// `QSPARSE_BITNET_MODEL_F32` says: how the fixture script gets the files it runs llama.cpp on
/// (`--ignored`, so plain test runs skip it). With `QSPARSE_BITNET_SHAPE`, one TQ2_0 model at
/// that shape instead (the speed comparison's, `scripts/bench_bitnet.py`).
#[test]
#[ignore]
fn write_test_model() {
    let env = |k| std::env::var(k).unwrap_or_else(|_| panic!("set {k}"));
    match std::env::var("QSPARSE_BITNET_SHAPE") {
        // layers,d_model,d_ff,heads,kv_heads: a model at other shapes, for speed only
        // (scripts/bench_bitnet.py), TQ2_0 only.
        Ok(spec) => {
            let v: Vec<u64> = spec.split(',').map(|x| x.trim().parse().unwrap()).collect();
            let shape = Shape {
                layers: v[0] as u32,
                d_model: v[1],
                d_ff: v[2],
                heads: v[3] as u32,
                kv_heads: v[4] as u32,
            };
            write_shaped(Path::new(&env("QSPARSE_BITNET_MODEL")), shape, None, false);
        }
        Err(_) => {
            write_model(Path::new(&env("QSPARSE_BITNET_MODEL")), None, false);
            write_model(Path::new(&env("QSPARSE_BITNET_MODEL_F32")), None, true);
        }
    }
}

/// Against llama.cpp on the TQ2_0 file, whose products take activations quantized to 8 bits per
/// 256-value block (Q8_K), where the f32 path keeps them exact (the t2 path quantizes them too,
/// per vector): logits of this model (top ones ~30-40) move by up to 1.5% of the largest. On the
/// F32 file llama.cpp computes in f32 too: rounding in another order only.
const TQ2_0_TOLERANCE: f32 = 0.03;
const F32_TOLERANCE: f32 = 1e-3;

#[test]
fn the_bitnet_architecture_matches_llama_cpp() {
    let dir = tempfile::tempdir().unwrap();
    let (path, path_f32) = (
        dir.path().join("bitnet.gguf"),
        dir.path().join("bitnet-f32.gguf"),
    );
    write_model(&path, None, false);
    write_model(&path_f32, None, true);
    let fx = common::fixture("bitnet_llamacpp.json");
    for (p, key) in [(&path, "model_sha256"), (&path_f32, "model_f32_sha256")] {
        assert_eq!(
            sha256(p),
            fx[key].as_str().unwrap(),
            "the test model is not the one llama.cpp ran: rerun scripts/make_bitnet_fixture.py"
        );
    }
    // The f32 path on the ternary file: the same values as the F32 file.
    let (m, tokenizer) = model::load(&path, WeightFormat::F32, &|_, _| {}).unwrap();
    assert_eq!(m.config.architecture, "bitnet");
    assert!(m.config.sub_norms && m.config.rope_neox);
    assert_eq!(m.config.ffn_activation, FfnActivation::Silu);
    let (t2, _) = model::load(&path, WeightFormat::Ternary, &|_, _| {}).unwrap();
    let mut worst = [0f32; 3];
    for (key, tolerance) in [("prompts", TQ2_0_TOLERANCE), ("prompts_f32", F32_TOLERANCE)] {
        for case in fx[key].as_array().unwrap() {
            let prompt = common::ids(&case["prompt_ids"]);
            assert_eq!(
                tokenizer.encode(case["prompt"].as_str().unwrap()).unwrap(),
                prompt
            );
            let mut a = RunState::new(&m.config, WeightFormat::F32, 64);
            let mut b = RunState::new(&t2.config, WeightFormat::Ternary, 64);
            for (pos, &t) in prompt.iter().enumerate() {
                m.forward(&mut a, t, pos, Sparsity::dense()).unwrap();
                t2.forward(&mut b, t, pos, Sparsity::dense()).unwrap();
            }
            let top10 = case["top10"].as_array().unwrap();
            let size = top10
                .iter()
                .map(|e| e[1].as_f64().unwrap().abs() as f32)
                .fold(0f32, f32::max);
            let tol = tolerance * size;
            for entry in top10 {
                let (id, logit) = (
                    entry[0].as_u64().unwrap() as usize,
                    entry[1].as_f64().unwrap() as f32,
                );
                let ours = (a.logits[id] - logit).abs();
                assert!(
                    ours <= tol,
                    "{key} {:?} token {id}: f32 {} llama.cpp {logit}",
                    case["prompt"],
                    a.logits[id]
                );
                if key == "prompts" {
                    // The t2 path (int8 activations) against llama.cpp's quantized products.
                    let t2_diff = (b.logits[id] - logit).abs();
                    assert!(
                        t2_diff <= tol,
                        "t2 {:?} token {id}: {}",
                        case["prompt"],
                        b.logits[id]
                    );
                    worst[0] = worst[0].max(ours / size);
                    worst[1] = worst[1].max(t2_diff / size);
                } else {
                    worst[2] = worst[2].max(ours / size);
                }
            }
            // Greedy continuation of the f32 path: where it departs from llama.cpp's, the two
            // tokens must have been within the tolerance of each other.
            for (pos, &want) in (prompt.len()..).zip(&common::ids(&case["greedy8"])) {
                let ours = argmax(&a.logits);
                if ours != want {
                    let gap = a.logits[ours as usize] - a.logits[want as usize];
                    assert!(
                        gap <= tol,
                        "{key} {:?}: departure at {pos}, gap {gap}",
                        case["prompt"]
                    );
                    break;
                }
                m.forward(&mut a, want, pos, Sparsity::dense()).unwrap();
            }
        }
    }
    eprintln!(
        "largest |logit - llama.cpp's| over the top-10s, of the largest: TQ2_0 file f32 {:.2e}, \
         t2 {:.2e}; F32 file {:.2e}",
        worst[0], worst[1], worst[2]
    );
}

#[test]
fn squared_relu_is_read_from_the_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let (silu, relu2, bad) = (
        dir.path().join("silu.gguf"),
        dir.path().join("relu2.gguf"),
        dir.path().join("bad.gguf"),
    );
    write_model(&silu, None, false);
    write_model(&relu2, Some("relu2"), false);
    write_model(&bad, Some("gelu"), false);
    let (a, _) = model::load(&silu, WeightFormat::F32, &|_, _| {}).unwrap();
    let (b, _) = model::load(&relu2, WeightFormat::F32, &|_, _| {}).unwrap();
    assert_eq!(b.config.ffn_activation, FfnActivation::Relu2);
    let mut sa = RunState::new(&a.config, WeightFormat::F32, 8);
    let mut sb = RunState::new(&b.config, WeightFormat::F32, 8);
    a.forward(&mut sa, 504, 0, Sparsity::dense()).unwrap();
    b.forward(&mut sb, 504, 0, Sparsity::dense()).unwrap();
    assert_ne!(
        sa.logits, sb.logits,
        "the activation must change the result"
    );
    let err = match model::load(&bad, WeightFormat::F32, &|_, _| {}) {
        Ok(_) => panic!("gelu loaded"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("bitnet.hidden_activation") && err.contains("gelu"),
        "{err}"
    );
}

/// Prompts run in batches (`forward_batch`: sub-norms and squared ReLU per token there too) give
/// bit for bit the logits and traffic of token-by-token steps, in every weight format, dense and
/// sparse.
#[test]
fn batched_bitnet_steps_equal_single_ones() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relu2.gguf");
    write_model(&path, Some("relu2"), false);
    let tokens: Vec<u32> = (0..19).map(|i| 100 + 37 * i).collect();
    for format in [
        WeightFormat::F32,
        WeightFormat::F16,
        WeightFormat::Int8,
        WeightFormat::Ternary,
    ] {
        let (m, _) = model::load(&path, format, &|_, _| {}).unwrap();
        for sparsity in [Sparsity::dense(), Sparsity::uniform(0.5)] {
            let mut a = RunState::new(&m.config, format, 64);
            let mut b = RunState::new(&m.config, format, 64);
            for (c, chunk) in tokens.chunks(model::PROMPT_BATCH).enumerate() {
                let pos0 = c * model::PROMPT_BATCH;
                m.forward_batch(&mut b, chunk, pos0, sparsity).unwrap();
                for (t, &token) in chunk.iter().enumerate() {
                    m.forward(&mut a, token, pos0 + t, sparsity).unwrap();
                    b.use_batch_token(t);
                    let what = format!("{} {sparsity:?}, position {}", format.name(), pos0 + t);
                    assert!(
                        a.logits
                            .iter()
                            .zip(&b.logits)
                            .all(|(x, y)| x.to_bits() == y.to_bits()),
                        "logits differ: {what}"
                    );
                    assert_eq!(a.traffic, b.traffic, "traffic differs: {what}");
                }
            }
        }
    }
}

/// A file whose projections are stored ternary runs as t2 unless `--weights` says otherwise.
#[test]
fn ternary_files_run_as_t2_unless_told() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bitnet.gguf");
    write_model(&path, None, false);
    let weights = |extra: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_qsparse"))
            .args(["bench", "-m", path.to_str().unwrap(), "--json"])
            .args(["--prompt-tokens", "1", "--gen-tokens", "2", "--runs", "1"])
            .args(extra)
            .output()
            .unwrap();
        common::assert_success(&out);
        let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        j["weights"].as_str().unwrap().to_string()
    };
    assert_eq!(weights(&[]), "t2");
    assert_eq!(weights(&["--weights", "int8"]), "int8");
}
