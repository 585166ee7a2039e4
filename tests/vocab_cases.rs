//! llama.cpp's own tokenizer test cases: for each vocabulary the llama-cpp-python source package
//! ships (`vendor/llama.cpp/models/ggml-vocab-NAME.gguf` with `.inp`/`.out`), every input text
//! tokenizes to llama.cpp's ids (without BOS, as llama.cpp's test-tokenizer-0 runs them) and
//! decodes back to the text. scripts/fetch_vocabs.sh puts the files in `$QSPARSE_VOCABS`, else
//! ~/.cache/qsparse/vocabs; the README's test command runs it first.

mod common;

use common::vocab_dir;
use qsparse::gguf::GgufFile;
use qsparse::tokenizer::Tokenizer;

/// (input text, llama.cpp's ids) pairs of one vocabulary.
fn cases(name: &str) -> Vec<(String, Vec<u32>)> {
    let dir = vocab_dir();
    let read = |ext: &str| {
        std::fs::read_to_string(dir.join(format!("ggml-vocab-{name}.gguf.{ext}"))).unwrap()
    };
    let inputs: Vec<String> = read("inp")
        .split("\n__ggml_vocab_test__\n")
        .map(str::to_string)
        .collect();
    let outputs: Vec<Vec<u32>> = read("out")
        .lines()
        .map(|l| l.split_whitespace().map(|t| t.parse().unwrap()).collect())
        .collect();
    // The input file ends with a separator, so its last piece is empty.
    let inputs = &inputs[..outputs.len()];
    inputs.iter().cloned().zip(outputs).collect()
}

/// Every case of vocabulary `name` as llama.cpp tokenizes it; returns how many.
fn check(name: &str) -> usize {
    let path = vocab_dir().join(format!("ggml-vocab-{name}.gguf"));
    let tok = Tokenizer::from_gguf(&GgufFile::open(&path).unwrap()).unwrap();
    let cases = cases(name);
    assert!(cases.len() >= 30, "{name}: only {} cases", cases.len());
    let mut failures = Vec::new();
    for (text, want) in &cases {
        let got = tok.encode_plain(text).unwrap();
        if &got != want {
            failures.push(format!(
                "{text:?}\n   llama.cpp {want:?}\n   qsparse   {got:?}"
            ));
        } else if !decodes_back(&tok, &got, text) {
            failures.push(format!("{text:?} decodes to {:?}", tok.decode(&got)));
        }
    }
    assert!(
        failures.is_empty(),
        "{name}: {} of {} cases differ from llama.cpp:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    cases.len()
}

#[test]
fn llama3_bpe() {
    check("llama-bpe");
}

#[test]
fn llama_spm() {
    check("llama-spm");
}

#[test]
fn qwen2() {
    check("qwen2");
}

#[test]
fn qwen35() {
    check("qwen35");
}

#[test]
fn phi3() {
    check("phi-3");
}

#[test]
fn gpt2() {
    check("gpt-2");
}

#[test]
fn starcoder() {
    check("starcoder");
}

#[test]
fn refact() {
    check("refact");
}

#[test]
fn command_r() {
    check("command-r");
}

#[test]
fn deepseek_coder() {
    check("deepseek-coder");
}

#[test]
fn falcon() {
    check("falcon");
}

#[test]
fn mpt() {
    check("mpt");
}

/// Decoding gives back the text (SentencePiece vocabularies: after the space they put first).
fn decodes_back(tok: &Tokenizer, ids: &[u32], text: &str) -> bool {
    let out = tok.decode(ids);
    out == text || out.strip_prefix(' ') == Some(text)
}
