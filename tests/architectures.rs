//! The architectures beside `llama`'s plain form — Llama 3's RoPE factors and separate head,
//! linear RoPE scaling with biases, Qwen2's q/k/v biases, Qwen3's q/k norms and wide heads,
//! Phi-3's fused tensors — against llama.cpp on small random models this test writes
//! (`qsparse::synthetic::write_architecture`, SmolLM2's tokenizer), and the tokenizers and chat
//! templates of Llama 3, Llama 2 / Mistral, Qwen2 and Phi-3 against llama.cpp's tokenizer and
//! Python's jinja2. The fixture tests/fixtures/architectures_llamacpp.json
//! (scripts/make_arch_fixtures.py) holds llama.cpp's logits and greedy tokens and the sha256 of
//! the files it ran, which the files written here must match.

mod common;

use std::path::Path;

use qsparse::gguf::GgufFile;
use qsparse::model::{self, RunState, Sparsity, WeightFormat};
use qsparse::runtime::template::{ChatTemplate, Date, Message};
use qsparse::sample::argmax;
use qsparse::synthetic::{write_architecture, ArchShape, TestArchitecture};
use qsparse::tokenizer::Tokenizer;
use sha2::{Digest, Sha256};

/// The context the runs hold, as llama.cpp's (scripts/make_fixtures.py): past the LongRoPE
/// model's original 128 positions, so both take its long factors.
const CTX: usize = 512;

/// f32 weights on both sides: rounding in another order only (relative to the largest logit).
const F32_TOLERANCE: f32 = 1e-3;
/// The int8 path (int8 weights with a per-row scale, int8 activations with 32 outliers kept)
/// against llama.cpp's f32 logits: its own quantization error on these models.
const INT8_TOLERANCE: f32 = 0.03;

fn sha256(path: &Path) -> String {
    Sha256::digest(std::fs::read(path).unwrap())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn every_architecture_matches_llama_cpp() {
    let fx = common::fixture("architectures_llamacpp.json");
    let tokenizer = GgufFile::open(common::smollm2()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for arch in TestArchitecture::ALL {
        let name = arch.name();
        let path = dir.path().join(format!("{name}.gguf"));
        write_architecture(&path, arch, ArchShape::small(arch), false, &tokenizer).unwrap();
        let want = &fx["models"][name];
        assert_eq!(
            sha256(&path),
            want["sha256"].as_str().unwrap(),
            "{name}: the test model is not the one llama.cpp ran: rerun scripts/make_arch_fixtures.py"
        );
        let (f32m, tok) = model::load(&path, WeightFormat::F32, &|_, _| {}).unwrap();
        let (int8, _) = model::load(&path, WeightFormat::Int8, &|_, _| {}).unwrap();
        assert_eq!(f32m.config.architecture, arch.gguf_arch());
        let (mut worst_f32, mut worst_int8) = (0f32, 0f32);
        for case in want["prompts"].as_array().unwrap() {
            let prompt = common::ids(&case["prompt_ids"]);
            assert_eq!(
                tok.encode(case["prompt"].as_str().unwrap()).unwrap(),
                prompt
            );
            let mut a = RunState::new(&f32m.config, WeightFormat::F32, CTX);
            let mut b = RunState::new(&int8.config, WeightFormat::Int8, CTX);
            f32m.feed_prompt(&mut a, &prompt, 0, Sparsity::dense())
                .unwrap();
            int8.feed_prompt(&mut b, &prompt, 0, Sparsity::dense())
                .unwrap();
            let (top10, size) = common::top10(case);
            for (id, logit) in top10 {
                worst_f32 = worst_f32.max((a.logits()[id] - logit).abs() / size);
                worst_int8 = worst_int8.max((b.logits()[id] - logit).abs() / size);
            }
            // 32 greedy tokens of the f32 path, each equal to llama.cpp's.
            let greedy = common::ids(&case["greedy32"]);
            for (pos, &want) in (prompt.len()..).zip(&greedy) {
                let ours = argmax(a.logits());
                assert_eq!(
                    ours, want,
                    "{name} {:?}: greedy token at {pos} differs from llama.cpp's",
                    case["prompt"]
                );
                f32m.forward(&mut a, want, pos, Sparsity::dense()).unwrap();
            }
        }
        eprintln!(
            "{name}: largest |logit - llama.cpp's| over the top-10s, of the largest: f32 \
             {worst_f32:.1e}, int8 {worst_int8:.1e}"
        );
        assert!(
            worst_f32 <= F32_TOLERANCE,
            "{name}: f32 logits off by {worst_f32}"
        );
        assert!(
            worst_int8 <= INT8_TOLERANCE,
            "{name}: int8 logits off by {worst_int8}"
        );
        let each = sparse_prompt_is_token_by_token(&int8, name);
        // The packed file (fused and stacked matrices, biases and norms kept beside them)
        // gives the same logits.
        let packed = dir.path().join(format!("{name}.packed.gguf"));
        qsparse::model::pack::write(&int8.file, &int8.weights, &packed, &|_, _| {}).unwrap();
        let (p, _) = model::load(&packed, WeightFormat::Int8, &|_, _| {}).unwrap();
        assert_eq!(
            sparse_prompt_is_token_by_token(&p, name),
            each,
            "{name}: packed"
        );
    }
}

/// At S = 0.5 a prompt's batched pass gives each token's logits bit for bit as one token at a
/// time does (biases, norms and fused matrices included); returns them.
fn sparse_prompt_is_token_by_token(m: &model::Model, name: &str) -> Vec<Vec<f32>> {
    let tokens: Vec<u32> = (0..12).map(|i| 100 + 37 * i).collect();
    let s = Sparsity::uniform(0.5);
    let mut one = RunState::new(&m.config, WeightFormat::Int8, 64);
    let mut each = Vec::new();
    for (pos, &t) in tokens.iter().enumerate() {
        m.forward(&mut one, t, pos, s).unwrap();
        each.push(one.logits().to_vec());
    }
    let mut batch = RunState::new(&m.config, WeightFormat::Int8, 64);
    let mut i = 0;
    m.forward_each(&mut batch, &tokens, 0, s, &mut |t, st| {
        assert_eq!(st.logits(), each[t].as_slice(), "{name}: token {t} batched");
        i += 1;
    })
    .unwrap();
    assert_eq!(i, tokens.len());
    each
}

#[test]
fn special_tokens_and_bos_as_llama_cpp_adds_them() {
    let fx = common::fixture("architectures_llamacpp.json");
    let dir = common::vocab_dir();
    for (vocab, cases) in fx["tokenize"].as_object().unwrap() {
        let file = GgufFile::open(dir.join(format!("ggml-vocab-{vocab}.gguf"))).unwrap();
        let tok = Tokenizer::from_gguf(&file).unwrap();
        for case in cases.as_array().unwrap() {
            let text = case["text"].as_str().unwrap();
            assert_eq!(
                tok.encode(text).unwrap(),
                common::ids(&case["ids"]),
                "{vocab}: {text:?}"
            );
        }
    }
}

#[test]
fn chat_templates_render_as_jinja2_does() {
    let fx = common::fixture("architectures_llamacpp.json");
    let dir = common::vocab_dir();
    let date = Date {
        year: 2026,
        month: 12,
        day: 7,
    };
    assert_eq!(fx["date"], "07 Dec 2026");
    let messages = [
        Message::new("system", "You are a helpful assistant."),
        Message::new("user", "What is 2 + 2?"),
        Message::new("assistant", "4."),
        Message::new("user", "And 3 + 3?"),
    ];
    let templates = fx["templates"].as_array().unwrap();
    assert!(templates.len() >= 8);
    for t in templates {
        let name = t["name"].as_str().unwrap();
        let (bos, eos) = (t["bos"].as_str().unwrap(), t["eos"].as_str().unwrap());
        let template = if name.ends_with(".gguf") {
            let file = GgufFile::open(dir.join(name)).unwrap();
            ChatTemplate::from_gguf(&file, bos, eos).unwrap()
        } else {
            let source = std::fs::read_to_string(dir.join(name)).unwrap();
            ChatTemplate::from_source(&source, bos, eos).unwrap()
        };
        let prompt = template.on_date(date).render(&messages, true).unwrap();
        assert_eq!(prompt, t["prompt"].as_str().unwrap(), "{name}");
    }
}

/// A tensor's new dims from its name and dims (None: left out).
type TensorEdit<'a> = &'a dyn Fn(&str, &[u64]) -> Option<Vec<u64>>;

/// A metadata case: what it is, the source file, keys dropped, keys added, what the error names.
type KeyCase<'a> = (
    &'a str,
    &'a Path,
    Vec<&'a str>,
    Vec<(&'a str, qsparse::gguf::MetaValue)>,
    &'a str,
);

/// `src` rewritten to `dst` with the metadata keys `drop` left out, `add` added, and each
/// tensor passed through `tensor` (None leaves it out; its dims may change, its data is cut or
/// zero-padded to fit).
fn rewrite(
    src: &Path,
    dst: &Path,
    drop: &[&str],
    add: &[(&str, qsparse::gguf::MetaValue)],
    tensor: TensorEdit<'_>,
) {
    use qsparse::gguf::GgufWriter;
    let file = GgufFile::open(src).unwrap();
    let mut w = GgufWriter::new();
    for (key, value) in file.metadata() {
        if !drop.contains(&key) && !add.iter().any(|(k, _)| *k == key) {
            w.add_kv(key, value.to_owned_value());
        }
    }
    for (key, value) in add {
        w.add_kv(*key, value.clone());
    }
    let mut kept = Vec::new();
    for info in file.tensors() {
        if let Some(dims) = tensor(&info.name, &info.dims) {
            w.add_tensor(info.name.clone(), info.ty, &dims);
            kept.push((info.clone(), dims));
        }
    }
    w.write_file(dst, |i, _, sink| {
        let (info, dims) = &kept[i];
        let bytes = info.ty.tensor_bytes(dims).unwrap() as usize;
        let mut data = file.tensor_data(info).to_vec();
        data.resize(bytes, 0);
        sink.write_all(&data)
    })
    .unwrap();
}

/// What a file asks for and qsparse does not do is refused at load, naming the key or tensor.
#[test]
fn malformed_or_unsupported_architecture_metadata_is_refused_by_name() {
    use qsparse::gguf::MetaValue;
    use TestArchitecture::{Qwen2, Qwen3};
    let tokenizer = GgufFile::open(common::smollm2()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let qwen2 = dir.path().join("qwen2.gguf");
    let qwen3 = dir.path().join("qwen3.gguf");
    write_architecture(&qwen2, Qwen2, ArchShape::small(Qwen2), false, &tokenizer).unwrap();
    write_architecture(&qwen3, Qwen3, ArchShape::small(Qwen3), false, &tokenizer).unwrap();
    let bad = dir.path().join("bad.gguf");
    let same = |_: &str, d: &[u64]| Some(d.to_vec());
    let refused = |what: &str| -> String {
        match model::load(&bad, WeightFormat::Int8, &|_, _| {}) {
            Ok(_) => panic!("{what}: loaded"),
            Err(e) => e.to_string(),
        }
    };
    let cases: Vec<KeyCase> = vec![
        (
            "no head count",
            &qwen2,
            vec!["qwen2.attention.head_count"],
            vec![],
            "qwen2.attention.head_count",
        ),
        (
            "YaRN",
            &qwen2,
            vec![],
            vec![("qwen2.rope.scaling.type", MetaValue::String("yarn".into()))],
            "RoPE scaling `yarn`",
        ),
        (
            "a zero linear factor",
            &qwen2,
            vec![],
            vec![
                (
                    "qwen2.rope.scaling.type",
                    MetaValue::String("linear".into()),
                ),
                ("qwen2.rope.scaling.factor", MetaValue::F32(0.0)),
            ],
            "qwen2.rope.scaling.factor",
        ),
        (
            "experts",
            &qwen2,
            vec![],
            vec![("qwen2.expert_count", MetaValue::U32(8))],
            "qwen2.expert_count",
        ),
        (
            "narrower value heads",
            &qwen3,
            vec![],
            vec![("qwen3.attention.value_length", MetaValue::U32(32))],
            "qwen3.attention.value_length",
        ),
        (
            "an unknown architecture",
            &qwen2,
            vec![],
            vec![("general.architecture", MetaValue::String("qwen2moe".into()))],
            "architecture `qwen2moe`",
        ),
    ];
    for (what, src, drop, add, expect) in cases {
        rewrite(src, &bad, &drop, &add, &same);
        let e = refused(what);
        assert!(e.contains(expect), "{what}: {e}");
    }
    // A bias of the wrong shape, a missing key norm.
    let tensor_cases: [(&str, &Path, TensorEdit, &str); 2] = [
        (
            "short q bias",
            &qwen2,
            &|n: &str, d: &[u64]| {
                Some(if n == "blk.1.attn_q.bias" {
                    vec![64]
                } else {
                    d.to_vec()
                })
            },
            "blk.1.attn_q.bias",
        ),
        (
            "no key norm",
            &qwen3,
            &|n: &str, d: &[u64]| (n != "blk.0.attn_k_norm.weight").then(|| d.to_vec()),
            "attn_q_norm",
        ),
    ];
    for (what, src, edit, expect) in tensor_cases {
        rewrite(src, &bad, &[], &[], edit);
        let e = refused(what);
        assert!(e.contains(expect), "{what}: {e}");
    }
    // A tensor the architecture does not read: qwen2's norm with a bias (LayerNorm).
    let file = GgufFile::open(&qwen2).unwrap();
    let mut w = qsparse::gguf::GgufWriter::new();
    for (key, value) in file.metadata() {
        w.add_kv(key, value.to_owned_value());
    }
    for info in file.tensors() {
        w.add_tensor(info.name.clone(), info.ty, &info.dims);
    }
    w.add_tensor("blk.0.attn_norm.bias", qsparse::gguf::GgmlType::F32, &[128]);
    let n = file.tensors().len();
    w.write_file(&bad, |i, _, sink| {
        if i < n {
            sink.write_all(file.tensor_data(&file.tensors()[i]))
        } else {
            sink.write_all(&[0u8; 512])
        }
    })
    .unwrap();
    let e = refused("a norm bias");
    assert!(
        e.contains("blk.0.attn_norm.bias") && e.contains("not supported"),
        "{e}"
    );
}

/// Generation ends where llama.cpp's does: at EOS, and at the end-of-turn tokens it knows by
/// their text (Llama 3's <|eot_id|>, Phi-3's <|end|>, ChatML's <|im_end|>), which are never
/// printed.
#[test]
fn end_of_turn_tokens_end_generation() {
    let dir = common::vocab_dir();
    for (vocab, ends) in [
        ("llama-bpe", &["<|eot_id|>", "<|end_of_text|>"][..]),
        ("phi-3", &["<|end|>", "</s>", "<|endoftext|>"][..]),
        ("qwen2", &["<|im_end|>", "<|endoftext|>"][..]),
        ("llama-spm", &["</s>"][..]),
    ] {
        let file = GgufFile::open(dir.join(format!("ggml-vocab-{vocab}.gguf"))).unwrap();
        let tok = Tokenizer::from_gguf(&file).unwrap();
        for text in ends {
            let ids = tok.encode_plain(text).unwrap();
            assert_eq!(ids.len(), 1, "{vocab}: {text} is one token");
            assert!(tok.is_end(ids[0]), "{vocab}: {text} ends a generation");
            assert!(tok.is_control(ids[0]), "{vocab}: {text} is not printed");
        }
        let hello = tok.encode_plain("Hello").unwrap();
        assert!(!tok.is_end(hello[0]), "{vocab}: an ordinary token");
    }
}

/// A chat prompt has one BOS: where the tokenizer adds it and the template writes it too (Llama
/// 3, Phi-3), the template's is left out, as llama.cpp does.
#[test]
fn chat_prompts_have_one_bos() {
    let dir = common::vocab_dir();
    let messages = [Message::new("user", "Hi")];
    for (vocab, template, bos) in [
        (
            "llama-bpe",
            Some("templates/meta-llama-Llama-3.1-8B-Instruct.jinja"),
            128_000,
        ),
        ("phi-3", None, 1),
    ] {
        let file = GgufFile::open(dir.join(format!("ggml-vocab-{vocab}.gguf"))).unwrap();
        let tok = Tokenizer::from_gguf(&file).unwrap();
        let bos_text = tok.token_text(tok.bos().unwrap()).unwrap();
        let eos_text = tok.token_text(tok.eos().unwrap()).unwrap();
        let t = match template {
            Some(name) => {
                let source = std::fs::read_to_string(dir.join(name)).unwrap();
                ChatTemplate::from_source(&source, &bos_text, &eos_text).unwrap()
            }
            None => ChatTemplate::from_gguf(&file, &bos_text, &eos_text).unwrap(),
        };
        let written = t.render(&messages, true).unwrap();
        assert!(
            written.starts_with(&bos_text),
            "{vocab}: the template writes BOS"
        );
        let prompt = t
            .without_leading_bos(tok.adds_bos())
            .render(&messages, true)
            .unwrap();
        let ids = tok.encode(&prompt).unwrap();
        assert_eq!(ids[0], bos, "{vocab}");
        assert_ne!(ids[1], bos, "{vocab}: BOS twice");
    }
}
