//! The real SmolLM2-135M-Instruct file: its facts, agreement with the gguf-rs crate as an
//! independent oracle, and `qsparse inspect` end to end.

mod common;

use std::process::Command;

use qsparse::gguf::{GgmlType, GgufFile};
use qsparse::model::ModelConfig;

#[test]
fn smollm2_facts() {
    let f = GgufFile::open(common::smollm2()).unwrap();
    let c = ModelConfig::from_gguf(&f).unwrap();
    assert_eq!(c.architecture, "llama");
    assert_eq!((c.n_layers, c.d_model, c.d_ff), (30, 576, 1536));
    assert_eq!((c.n_heads, c.n_kv_heads, c.head_dim), (9, 3, 64));
    assert_eq!(c.rope_base, 100_000.0);
    assert_eq!(c.vocab_size, 49_152);
    assert_eq!(c.tokenizer_model.as_deref(), Some("gpt2"));
    assert_eq!(c.tokenizer_pre.as_deref(), Some("smollm"));
    assert!(c.has_chat_template);
    assert_eq!(f.tensors().len(), 272);
    let count = |ty| f.tensors().iter().filter(|t| t.ty == ty).count();
    assert_eq!(
        (
            count(GgmlType::Q4_1),
            count(GgmlType::Q8_0),
            count(GgmlType::F32)
        ),
        (210, 1, 61)
    );
    assert!(
        f.tensor("output.weight").is_none(),
        "SmolLM2 ties its head to token_embd"
    );
    let emb = f.tensor("token_embd.weight").unwrap();
    assert_eq!(emb.dims, [576, 49_152]);
    assert_eq!(f.tensor_data(emb).len() as u64, 576 * 49_152 / 32 * 34);
    assert_eq!(f.get_array("tokenizer.ggml.merges").unwrap().len(), 48_900);
}

/// Every metadata key and every tensor info agrees with gguf-rs (read with no array limit).
#[test]
fn metadata_agrees_with_gguf_rs_key_for_key() {
    let path = common::smollm2();
    let ours = GgufFile::open(&path).unwrap();
    let mut container =
        gguf_rs::get_gguf_container_array_size(path.to_str().unwrap(), u64::MAX).unwrap();
    let theirs = container.decode().unwrap();

    let their_meta = theirs.metadata();
    assert_eq!(their_meta.len(), ours.kv_count());
    for (key, value) in ours.metadata() {
        let expected = their_meta
            .get(key)
            .unwrap_or_else(|| panic!("gguf-rs lacks key {key}"));
        let got = value.to_json();
        // Compare through f64 for floats (gguf-rs keeps arbitrary-precision JSON numbers).
        assert!(
            json_eq(&got, expected),
            "key {key}: ours {got}, gguf-rs {expected}"
        );
    }

    assert_eq!(theirs.tensors().len(), ours.tensors().len());
    for (t, o) in theirs.tensors().iter().zip(ours.tensors()) {
        assert_eq!(t.name, o.name);
        assert_eq!(t.shape, o.dims, "{}", o.name);
        assert_eq!(t.kind, o.raw_type_id, "{}", o.name);
        assert_eq!(t.offset, o.offset, "{}", o.name);
    }
    assert_eq!(theirs.data_offset(), ours.data_offset());
}

fn json_eq(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value as J;
    match (a, b) {
        (J::Number(x), J::Number(y)) => x.as_f64() == y.as_f64(),
        (J::Array(x), J::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| json_eq(p, q))
        }
        _ => a == b,
    }
}

fn qsparse(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_qsparse"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn inspect_json_reports_the_model() {
    let path = common::smollm2();
    let out = qsparse(&["inspect", path.to_str().unwrap(), "--json", "--tensors"]);
    common::assert_success(&out);
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["architecture"], "llama");
    assert_eq!(j["tensor_count"], 272);
    assert_eq!(j["model"]["n_layers"], 30);
    assert_eq!(j["model"]["d_model"], 576);
    assert_eq!(j["model"]["d_ff"], 1536);
    assert_eq!(j["model"]["n_heads"], 9);
    assert_eq!(j["model"]["n_kv_heads"], 3);
    assert_eq!(j["model"]["vocab_size"], 49152);
    assert_eq!(j["model"]["tokenizer_model"], "gpt2");
    assert_eq!(j["model"]["rope_base"].as_f64(), Some(100000.0));
    assert_eq!(j["tensors"].as_array().unwrap().len(), 272);
    let q41 = j["types"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["type"] == "Q4_1")
        .unwrap();
    assert_eq!(q41["tensors"], 210);
    let total: u64 = j["types"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["bytes"].as_u64().unwrap())
        .sum();
    assert!(total < j["file_size"].as_u64().unwrap());

    // By manifest name too, and one key alone.
    let out = qsparse(&[
        "inspect",
        "smollm2-135m-instruct",
        "--meta",
        "llama.block_count",
    ]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "30");
}

#[test]
fn inspect_text_names_the_essentials() {
    let out = qsparse(&["inspect", common::smollm2().to_str().unwrap()]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for want in [
        "llama",
        "576",
        "1536",
        "9 query / 3 kv",
        "100000",
        "49152",
        "gpt2",
        "Q4_1",
    ] {
        assert!(text.contains(want), "inspect output lacks {want}:\n{text}");
    }
}

#[test]
fn bad_input_gives_clear_errors_and_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.gguf");
    std::fs::write(&junk, b"GGML not really a model").unwrap();
    let out = qsparse(&["inspect", junk.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a GGUF file"), "{err}");
    assert!(out.stdout.is_empty());

    let out = qsparse(&["inspect", "/no/such/file.gguf"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no model named"));

    let out = qsparse(&["inspect", "--no-such-flag", "x"]);
    assert_eq!(out.status.code(), Some(2));

    let out = qsparse(&[
        "inspect",
        common::smollm2().to_str().unwrap(),
        "--meta",
        "no.such.key",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no.such.key"));
}
