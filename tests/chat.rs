//! The real model's chat template renders exactly as jinja2 renders it for Hugging Face
//! (fixture made by scripts/make_fixtures.py), and `generate --chat` answers.

mod common;

use std::process::Command;

use qsparse::gguf::GgufFile;
use qsparse::runtime::template::{ChatTemplate, Message};

#[test]
fn template_renders_like_jinja2() {
    let fx = common::fixture("smollm2_llamacpp.json");
    let file = GgufFile::open(common::smollm2()).unwrap();
    let template = ChatTemplate::from_gguf(&file, "<|im_start|>", "<|im_end|>").unwrap();
    assert!(!template.fallback);
    let cases = fx["chat"].as_array().unwrap();
    assert_eq!(cases.len(), 2);
    for case in cases {
        let messages: Vec<Message> = serde_json::from_value(case["messages"].clone()).unwrap();
        let ours = template.render(&messages, true).unwrap();
        assert_eq!(ours, case["text"].as_str().unwrap());
    }
}

#[test]
fn generate_chat_answers() {
    let model = common::smollm2();
    let out = Command::new(env!("CARGO_BIN_EXE_qsparse"))
        .args([
            "generate",
            "--chat",
            "-p",
            "What is the capital of France?",
            "-n",
            "12",
            "--temp",
            "0",
        ])
        .args(["-m", model.to_str().unwrap()])
        .output()
        .unwrap();
    common::assert_success(&out);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("Paris"), "{text:?}");
}
