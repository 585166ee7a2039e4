//! Tokenization of the real SmolLM2 vocabulary equals llama.cpp's (fixture made by
//! scripts/make_fixtures.py), decoding inverts it, and streamed decoding never splits a character.

mod common;

use qsparse::gguf::GgufFile;
use qsparse::tokenizer::{StreamDecoder, Tokenizer};

fn smollm2_tokenizer() -> Tokenizer {
    Tokenizer::from_gguf(&GgufFile::open(common::smollm2()).unwrap()).unwrap()
}

#[test]
fn token_ids_equal_llama_cpp() {
    let tok = smollm2_tokenizer();
    let fx = common::fixture("smollm2_llamacpp.json");
    let cases = fx["tokenize"].as_array().unwrap();
    assert!(cases.len() >= 15);
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let got = tok.encode(text).unwrap();
        assert_eq!(got, want, "text {text:?}");
        assert_eq!(tok.decode(&got), text, "decode(encode({text:?}))");
    }
}

#[test]
fn special_tokens_and_ids() {
    let tok = smollm2_tokenizer();
    assert_eq!(tok.vocab_size(), 49_152);
    assert_eq!(tok.bos(), Some(1));
    assert_eq!(tok.eos(), Some(2));
    assert!(tok.is_end(2));
    // add_bos_token is false for SmolLM2: no BOS is prepended.
    assert_eq!(tok.encode("<|im_start|>").unwrap(), vec![1]);
    assert_eq!(tok.piece(1), "<|im_start|>");
}

#[test]
fn streaming_never_splits_a_character() {
    let tok = smollm2_tokenizer();
    let text = "emoji 🦀🚀 👍🏽 日本語 done";
    let ids = tok.encode(text).unwrap();
    let mut dec = StreamDecoder::new();
    let mut out = String::new();
    for &id in &ids {
        let piece = dec.push(tok.token_bytes(id));
        assert!(
            !piece.contains('\u{FFFD}'),
            "a partial character leaked at token {id}"
        );
        out.push_str(&piece);
    }
    out.push_str(&dec.finish());
    assert_eq!(out, text);
    // Some of these tokens really are partial characters (byte-level BPE), so the test bites.
    assert!(ids
        .iter()
        .any(|&id| std::str::from_utf8(tok.token_bytes(id)).is_err()));
}

#[test]
fn stream_decoder_replaces_invalid_bytes() {
    let mut dec = StreamDecoder::new();
    assert_eq!(dec.push(&[0xF0, 0x9F]), "");
    assert_eq!(dec.push(&[0xA6, 0x80, b'!']), "🦀!");
    assert_eq!(dec.push(&[0xFF, b'a']), "\u{FFFD}a");
    assert_eq!(dec.push(&[0xE6]), "");
    assert_eq!(dec.finish(), "\u{FFFD}");
}
