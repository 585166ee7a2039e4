//! The `bitnet` architecture (BitNet b1.58 as llama.cpp runs it: llama with RMSNorm sub-norms on
//! the attention output before the o projection and on the gated FFN activation before down,
//! ternary projections, tied embeddings) against llama.cpp, on a small model this test writes:
//! random ternary TQ2_0 projections at 256 x 512 shapes, SmolLM2's tokenizer. The fixture
//! tests/fixtures/bitnet_llamacpp.json (scripts/make_bitnet_fixture.py, which writes the same
//! model with `--example bitnet_model` and runs llama.cpp on it) holds llama.cpp's logits and greedy tokens, and the
//! sha256 of the file llama.cpp ran, which the file written here must match.

mod common;

use std::path::Path;

use qsparse::gguf::GgufFile;
use qsparse::model::{self, FfnActivation, RunState, Sparsity, WeightFormat};
use qsparse::sample::argmax;
use qsparse::synthetic::{write_bitnet, BitnetOptions, BitnetShape};
use sha2::{Digest, Sha256};

/// The test model (`qsparse::synthetic`): `bitnet`, 2 blocks, d_model 256, FFN 512, 4 heads
/// sharing 2 kv heads, random ternary projections (TQ2_0, or F32 holding the same values),
/// SmolLM2's tokenizer; `activation` names the FFN activation in the metadata.
fn write_model(path: &Path, activation: Option<&str>, f32_projections: bool) {
    let tokenizer = GgufFile::open(common::smollm2()).unwrap();
    let options = BitnetOptions {
        activation: activation.map(str::to_string),
        f32_projections,
        i2_s_projections: false,
    };
    write_bitnet(path, BitnetShape::SMALL, &tokenizer, &options).unwrap();
}

fn sha256(path: &Path) -> String {
    Sha256::digest(std::fs::read(path).unwrap())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
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
                let ours = (a.logits()[id] - logit).abs();
                assert!(
                    ours <= tol,
                    "{key} {:?} token {id}: f32 {} llama.cpp {logit}",
                    case["prompt"],
                    a.logits()[id]
                );
                if key == "prompts" {
                    // The t2 path (int8 activations) against llama.cpp's quantized products.
                    let t2_diff = (b.logits()[id] - logit).abs();
                    assert!(
                        t2_diff <= tol,
                        "t2 {:?} token {id}: {}",
                        case["prompt"],
                        b.logits()[id]
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
                let ours = argmax(a.logits());
                if ours != want {
                    let gap = a.logits()[ours as usize] - a.logits()[want as usize];
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
        sa.logits(),
        sb.logits(),
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

/// Prompts run in batches (`forward_each`: sub-norms and squared ReLU per token there too) give
/// bit for bit the logits and traffic of token-by-token steps, in every weight format, dense and
/// sparse.
#[test]
fn batched_bitnet_steps_equal_single_ones() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relu2.gguf");
    write_model(&path, Some("relu2"), false);
    let tokens: Vec<u32> = (0..45).map(|i| 100 + 37 * i).collect();
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
            m.forward_each(&mut b, &tokens, 0, sparsity, &mut |i, b| {
                m.forward(&mut a, tokens[i], i, sparsity).unwrap();
                let what = format!("{} {sparsity:?}, position {i}", format.name());
                assert!(
                    a.logits()
                        .iter()
                        .zip(b.logits())
                        .all(|(x, y)| x.to_bits() == y.to_bits()),
                    "logits differ: {what}"
                );
                assert_eq!(a.traffic(), b.traffic(), "traffic differs: {what}");
            })
            .unwrap();
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

/// A file may claim any context length: a `--ctx` whose KV cache would not fit in memory is
/// refused with the bytes it needs, before anything is allocated (no abort).
#[test]
fn a_kv_cache_beyond_memory_is_refused_before_allocating() {
    let dir = tempfile::tempdir().unwrap();
    let (small, huge) = (dir.path().join("small.gguf"), dir.path().join("huge.gguf"));
    write_model(&small, None, false);
    // The same model, its context length claimed as u32::MAX.
    let file = GgufFile::open(&small).unwrap();
    let mut w = qsparse::gguf::GgufWriter::new().with_dialect(file.dialect());
    for (key, value) in file.metadata() {
        let value = match key {
            "bitnet.context_length" => qsparse::gguf::MetaValue::U32(u32::MAX),
            _ => value.to_owned_value(),
        };
        w.add_kv(key, value);
    }
    for t in file.tensors() {
        w.add_tensor(t.name.clone(), t.ty, &t.dims);
    }
    w.write_file(&huge, |i, _, sink| {
        sink.write_all(file.tensor_data(&file.tensors()[i]))
    })
    .unwrap();
    let generate = |ctx: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_qsparse"))
            .args([
                "generate",
                "-m",
                huge.to_str().unwrap(),
                "-p",
                "Hi",
                "-n",
                "2",
            ])
            .args(["--ctx", ctx])
            .output()
            .unwrap()
    };
    let out = generate(&u32::MAX.to_string());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("GB of KV cache"), "{err}");
    // A context that fits still runs.
    common::assert_success(&generate("64"));
}

/// Against the t2 path (int8 activations) the reference quantizes activations too, per token as
/// BitNet b1.58 does; int8 products summed in another order and the float lm_head against our
/// Q8 head move logits (~2-4 here) by up to ~1.5% of the largest.
const B158_INT8_TOLERANCE: f32 = 0.03;

/// bitnet.cpp's `bitnet-b1.58` (BitNet b1.58 2B4T's file: I2_S projections with bitnet.cpp's
/// type ids, squared ReLU the file does not declare, NeoX RoPE, sub-norms, tied F16 embedding)
/// against Hugging Face transformers' `BitNetForCausalLM` on a small random model: the file
/// tests/fixtures/bitnet_b158.gguf written as bitnet.cpp's converter writes it, and the
/// reference's logits and greedy tokens in tests/fixtures/bitnet_b158_hf.json (both from
/// scripts/make_bitnet_b158_fixture.py). The f32 path (the exact ternary weights, f32
/// activations) is compared with transformers without activation quantization; the t2 path with
/// transformers' own BitNet layers (AutoBitLinear, int8 activations per token).
#[test]
fn bitnet_b158_files_match_transformers() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bitnet_b158.gguf");
    let fx = common::fixture("bitnet_b158_hf.json");
    let (f32m, _) = model::load(&path, WeightFormat::F32, &|_, _| {}).unwrap();
    assert_eq!(f32m.config.architecture, "bitnet-b1.58");
    assert_eq!(f32m.config.ffn_activation, FfnActivation::Relu2);
    assert!(f32m.config.sub_norms && f32m.config.rope_neox);
    let file = GgufFile::open(&path).unwrap();
    assert_eq!(
        qsparse::model::weights::default_format(&file),
        WeightFormat::Ternary,
        "I2_S projections run as t2 by default"
    );
    let (t2, _) = model::load(&path, WeightFormat::Ternary, &|_, _| {}).unwrap();
    for (key, m, format, tolerance) in [
        ("f32_activations", &f32m, WeightFormat::F32, F32_TOLERANCE),
        (
            "int8_activations",
            &t2,
            WeightFormat::Ternary,
            B158_INT8_TOLERANCE,
        ),
    ] {
        let mut worst = 0f32;
        let mut identical = 0;
        let cases = fx[key].as_array().unwrap();
        for case in cases {
            let prompt = common::ids(&case["prompt_ids"]);
            let mut s = RunState::new(&m.config, format, 64);
            m.feed_prompt(&mut s, &prompt, 0, Sparsity::dense())
                .unwrap();
            let (top10, size) = common::top10(case);
            for (id, logit) in top10 {
                let diff = (s.logits()[id] - logit).abs() / size;
                worst = worst.max(diff);
                assert!(
                    diff <= tolerance,
                    "{key} {prompt:?} token {id}: {} vs {logit}",
                    s.logits()[id]
                );
            }
            // Greedy tokens: where ours departs from the reference's, the two must have been
            // within the tolerance of each other (a near-tie).
            let greedy = common::ids(&case["greedy32"]);
            let mut all = true;
            for (pos, &want) in (prompt.len()..).zip(&greedy) {
                let ours = argmax(s.logits());
                if ours != want {
                    let gap = s.logits()[ours as usize] - s.logits()[want as usize];
                    assert!(
                        gap <= tolerance * size,
                        "{key} {prompt:?}: departure at {pos}, gap {gap}"
                    );
                    all = false;
                    break;
                }
                m.forward(&mut s, want, pos, Sparsity::dense()).unwrap();
            }
            identical += usize::from(all);
        }
        eprintln!(
            "bitnet-b1.58 vs transformers, {key}: largest top-10 logit difference {worst:.1e} of \
             the largest; greedy 32 identical for {identical}/{}",
            cases.len()
        );
    }
}

/// The same model written with I2_S projections (bitnet.cpp's layout and type ids, one scale per
/// tensor) gives the TQ2_0 file's logits bit for bit: both hold the same ternary values.
#[test]
fn i2_s_and_tq2_0_files_of_one_model_agree() {
    let dir = tempfile::tempdir().unwrap();
    let tokenizer = GgufFile::open(common::smollm2()).unwrap();
    let (tq2, i2s) = (dir.path().join("tq2.gguf"), dir.path().join("i2s.gguf"));
    write_bitnet(
        &tq2,
        BitnetShape::SMALL,
        &tokenizer,
        &BitnetOptions::default(),
    )
    .unwrap();
    let options = BitnetOptions {
        i2_s_projections: true,
        ..BitnetOptions::default()
    };
    write_bitnet(&i2s, BitnetShape::SMALL, &tokenizer, &options).unwrap();
    assert_eq!(
        GgufFile::open(&i2s).unwrap().dialect(),
        qsparse::gguf::TypeDialect::BitnetCpp
    );
    let (a, _) = model::load(&tq2, WeightFormat::Ternary, &|_, _| {}).unwrap();
    let (b, _) = model::load(&i2s, WeightFormat::Ternary, &|_, _| {}).unwrap();
    let mut sa = RunState::new(&a.config, WeightFormat::Ternary, 16);
    let mut sb = RunState::new(&b.config, WeightFormat::Ternary, 16);
    for (pos, t) in [504u32, 17, 9000, 42].into_iter().enumerate() {
        a.forward(&mut sa, t, pos, Sparsity::uniform(0.5)).unwrap();
        b.forward(&mut sb, t, pos, Sparsity::uniform(0.5)).unwrap();
        assert_eq!(sa.logits(), sb.logits(), "position {pos}");
    }
}
