//! Text <-> token ids, built from a GGUF file's `tokenizer.ggml.*` metadata with the `tokenizers`
//! crate. Two vocabulary kinds are supported, as llama.cpp names them:
//!
//! - `gpt2`: byte-level BPE with merges; the pre-tokenizer follows `tokenizer.ggml.pre` (e.g.
//!   `smollm` isolates every digit before the GPT-2 split).
//! - `llama`: SentencePiece-style BPE with per-token scores and byte fallback (`<0x0A>`); merges are
//!   derived from the scores, the way Hugging Face converts SentencePiece models.
//!
//! Control and user-defined tokens (`<|im_start|>`, `<s>`, ...) are matched as single tokens.
//! Decoding goes through a per-token byte table, so a stream of tokens can be printed as soon as
//! it forms whole UTF-8 characters ([`StreamDecoder`]).

use std::collections::HashMap;

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::{Prepend, Replace};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, NormalizerWrapper, PreTokenizerWrapper, SplitDelimiterBehavior};

use crate::gguf::{GgufError, GgufFile};

/// Why a tokenizer could not be built or used.
// Each variant's `#[error]` message is its documentation.
#[allow(missing_docs)]
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("unsupported tokenizer: {0}")]
    Unsupported(String),
    #[error("tokenizer metadata is inconsistent: {0}")]
    Invalid(String),
    #[error("tokenizer: {0}")]
    Library(String),
}

fn lib(e: impl std::fmt::Display) -> TokenizerError {
    TokenizerError::Library(e.to_string())
}

/// llama.cpp's token types (`tokenizer.ggml.token_type`).
const TYPE_CONTROL: i32 = 3;
const TYPE_USER_DEFINED: i32 = 4;
const TYPE_BYTE: i32 = 6;

/// The GPT-2 split regex (llama.cpp's `gpt2` pre-tokenizer).
const GPT2_SPLIT: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
/// Llama 3's split regex (`llama-bpe`), with the case-insensitive contractions spelled out as
/// llama.cpp does.
const LLAMA3_SPLIT: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's split regex: Llama 3's with single digits.
const QWEN2_SPLIT: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen3.5's: Qwen2's with combining marks kept with their letters.
const QWEN35_SPLIT: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// How a `gpt2` vocabulary's pre-tokenizer (`tokenizer.ggml.pre`) splits text before BPE, as
/// llama.cpp's `llm_tokenizer_bpe` does: each regex in turn splits every piece the previous ones
/// left; `ignore_merges` takes a piece that is itself a token whole; `add_bos` is the default
/// when the file has no `tokenizer.ggml.add_bos_token`.
struct PreTokenizer {
    names: &'static [&'static str],
    regexes: &'static [&'static str],
    ignore_merges: bool,
    add_bos: bool,
}

/// The pre-tokenizers qsparse knows, under llama.cpp's names.
const PRE_TOKENIZERS: &[PreTokenizer] = &[
    PreTokenizer {
        names: &["llama3", "llama-v3", "llama-bpe", "falcon3", "pixtral"],
        regexes: &[LLAMA3_SPLIT],
        ignore_merges: true,
        add_bos: true,
    },
    PreTokenizer {
        names: &["dbrx", "smaug-bpe"],
        regexes: &[LLAMA3_SPLIT],
        ignore_merges: false,
        add_bos: false,
    },
    PreTokenizer {
        names: &["qwen2", "deepseek-r1-qwen", "stablelm2", "megrez"],
        regexes: &[QWEN2_SPLIT],
        ignore_merges: false,
        add_bos: false,
    },
    PreTokenizer {
        names: &["qwen35"],
        regexes: &[QWEN35_SPLIT],
        ignore_merges: false,
        add_bos: false,
    },
    PreTokenizer {
        names: &[
            "smollm",
            "starcoder",
            "refact",
            "command-r",
            "codeshell",
            "exaone",
        ],
        regexes: &[r"\p{N}", GPT2_SPLIT],
        ignore_merges: false,
        add_bos: false,
    },
    PreTokenizer {
        names: &["gpt2", "gpt-2", "phi-2", "mpt", "olmo", "jais"],
        regexes: &[GPT2_SPLIT],
        ignore_merges: false,
        add_bos: false,
    },
    PreTokenizer {
        names: &["falcon"],
        regexes: &[r"[\p{P}\$\+<=>\^~\|`]+", GPT2_SPLIT, "[0-9][0-9][0-9]"],
        ignore_merges: false,
        add_bos: false,
    },
    PreTokenizer {
        names: &["deepseek-coder"],
        regexes: &[
            "[\r\n]",
            r"\s?\p{L}+",
            r"\s?\p{P}+",
            "[一-龥ࠀ-一가-퟿]+",
            r"\p{N}",
        ],
        ignore_merges: false,
        add_bos: false,
    },
    PreTokenizer {
        names: &["default"],
        regexes: &[
            r"[\p{P}\$\+<=>\^~\|]+",
            GPT2_SPLIT,
            r"\p{N}+",
            "[0-9][0-9][0-9]",
        ],
        ignore_merges: false,
        add_bos: false,
    },
];

impl PreTokenizer {
    /// The pre-tokenizer llama.cpp uses for `name`; the error lists the names qsparse knows.
    fn named(name: &str) -> Result<&'static PreTokenizer, TokenizerError> {
        PRE_TOKENIZERS
            .iter()
            .find(|p| p.names.contains(&name))
            .ok_or_else(|| {
                let known: Vec<&str> = PRE_TOKENIZERS
                    .iter()
                    .flat_map(|p| p.names)
                    .copied()
                    .collect();
                TokenizerError::Unsupported(format!(
                    "tokenizer.ggml.pre = `{name}` (supported: {})",
                    known.join(", ")
                ))
            })
    }

    fn build(&self) -> Result<PreTokenizerWrapper, TokenizerError> {
        let mut steps: Vec<PreTokenizerWrapper> = Vec::new();
        for pattern in self.regexes {
            steps.push(
                Split::new(
                    SplitPattern::Regex(pattern.to_string()),
                    SplitDelimiterBehavior::Isolated,
                    false,
                )
                .map_err(lib)?
                .into(),
            );
        }
        steps.push(
            ByteLevel::default()
                .add_prefix_space(false)
                .use_regex(false)
                .into(),
        );
        Ok(Sequence::new(steps).into())
    }
}

/// Tokens llama.cpp ends a generation at, by their text, whatever the file's metadata names
/// (`llama_vocab::impl::load`): Llama 3's `<|eot_id|>`, ChatML's `<|im_end|>`, Phi-3's
/// `<|end|>`, Gemma's `<end_of_turn>`, ...
const END_TEXTS: [&str; 14] = [
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<｜end▁of▁sentence｜>",
];

/// A model's tokenizer.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// The bytes each token stands for (control tokens: their text).
    bytes: Vec<Vec<u8>>,
    bos: Option<u32>,
    eos: Option<u32>,
    /// Every token that ends a generation: EOS, the end-of-turn and end-of-message tokens the
    /// file names, and those llama.cpp recognizes by their text ([`END_TEXTS`]).
    ends: Vec<u32>,
    add_bos: bool,
    control: Vec<bool>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab", &self.bytes.len())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .finish()
    }
}

impl Tokenizer {
    /// The tokenizer `file`'s `tokenizer.ggml.*` keys describe; an error names a missing or unsupported key.
    pub fn from_gguf(file: &GgufFile) -> Result<Tokenizer, TokenizerError> {
        let kind = file.get_str("tokenizer.ggml.model")?;
        let tokens: Vec<&str> = file
            .get_array("tokenizer.ggml.tokens")?
            .strings()
            .ok_or_else(|| {
                TokenizerError::Invalid("tokenizer.ggml.tokens is not an array of strings".into())
            })?
            .collect();
        let n = tokens.len();
        let types: Vec<i32> = match file.get("tokenizer.ggml.token_type") {
            Some(v) => v
                .as_array()
                .map(|a| a.iter().map(|t| t.as_i64().unwrap_or(1) as i32).collect())
                .unwrap_or_default(),
            None => vec![1; n],
        };
        if types.len() != n {
            return Err(TokenizerError::Invalid(format!(
                "{n} tokens but {} token types",
                types.len()
            )));
        }
        let id = |key: &str| -> Result<Option<u32>, TokenizerError> {
            match file.get(key) {
                None => Ok(None),
                Some(v) => match v.as_u64() {
                    Some(i) if (i as usize) < n => Ok(Some(i as u32)),
                    _ => Err(TokenizerError::Invalid(format!(
                        "{key} = {v} is not a token id"
                    ))),
                },
            }
        };
        let (bos, eos) = (
            id("tokenizer.ggml.bos_token_id")?,
            id("tokenizer.ggml.eos_token_id")?,
        );
        let mut ends: Vec<u32> = [
            eos,
            id("tokenizer.ggml.eot_token_id")?,
            id("tokenizer.ggml.eom_token_id")?,
        ]
        .into_iter()
        .flatten()
        .collect();
        ends.extend(
            tokens
                .iter()
                .enumerate()
                .filter(|(_, t)| END_TEXTS.contains(t))
                .map(|(i, _)| i as u32),
        );
        ends.sort_unstable();
        ends.dedup();
        let vocab: tokenizers::models::bpe::Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.to_string(), i as u32))
            .collect();
        if vocab.len() != n {
            return Err(TokenizerError::Invalid(
                "tokenizer.ggml.tokens has duplicate tokens".into(),
            ));
        }

        // `add_bos` is llama.cpp's default for the vocabulary unless the file says otherwise.
        let (mut inner, bytes, default_add_bos) = match kind {
            "gpt2" => {
                let name = file
                    .get("tokenizer.ggml.pre")
                    .and_then(|v| v.as_str())
                    .unwrap_or("default");
                let pre = PreTokenizer::named(name)?;
                let (t, b) = bpe_tokenizer(file, vocab, &tokens, &types, pre)?;
                (t, b, pre.add_bos)
            }
            "llama" => {
                let (t, b) = spm_tokenizer(file, vocab, &tokens, &types)?;
                (t, b, true)
            }
            other => {
                return Err(TokenizerError::Unsupported(format!(
                    "tokenizer.ggml.model = `{other}` (qsparse reads `gpt2` and `llama`)"
                )))
            }
        };
        let add_bos = match file.get("tokenizer.ggml.add_bos_token") {
            Some(v) => v.as_bool().ok_or_else(|| {
                TokenizerError::Invalid(format!("tokenizer.ggml.add_bos_token = {v} is not a bool"))
            })?,
            None => default_add_bos,
        };

        // llama.cpp strips the whitespace after Phi-3's special tokens (its tokenizer.json
        // marks them `rstrip`), but for <unk>, <s> and <|endoftext|>; it knows the model by name.
        let model_name = file
            .get("general.name")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_lowercase();
        let phi3 = model_name.contains("phi-3") || model_name.contains("phi3");
        let specials: Vec<AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter(|(_, &ty)| ty == TYPE_CONTROL || ty == TYPE_USER_DEFINED)
            .map(|(t, _)| {
                let rstrip = phi3 && !matches!(*t, "<unk>" | "<s>" | "<|endoftext|>");
                AddedToken::from(t.to_string(), true).rstrip(rstrip)
            })
            .collect();
        inner.add_special_tokens(&specials);
        Ok(Tokenizer {
            inner,
            bytes,
            bos,
            eos,
            add_bos,
            // Tokens that end a generation are never printed, whatever their type says (as
            // llama.cpp overrides it).
            control: types
                .iter()
                .enumerate()
                .map(|(i, &t)| t == TYPE_CONTROL || ends.binary_search(&(i as u32)).is_ok())
                .collect(),
            ends,
        })
    }

    /// Tokens in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.bytes.len()
    }

    /// The beginning-of-sequence token, if the model has one.
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    /// The end-of-sequence token, if the model has one.
    pub fn eos(&self) -> Option<u32> {
        self.eos
    }

    /// Whether generation should stop at this token (end of sequence or end of turn).
    pub fn is_end(&self, id: u32) -> bool {
        self.ends.binary_search(&id).is_ok()
    }

    /// Token ids of `text`, with BOS first when the model asks for it. Special tokens written in
    /// the text (`<|im_start|>`) become single tokens.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let enc = self.inner.encode_fast(text, false).map_err(lib)?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if self.add_bos {
            ids.extend(self.bos);
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    /// Token ids of `text` alone: no BOS, as llama.cpp's tokenizer tests run.
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let enc = self.inner.encode_fast(text, false).map_err(lib)?;
        Ok(enc.get_ids().to_vec())
    }

    /// Whether [`Tokenizer::encode`] puts BOS first.
    pub fn adds_bos(&self) -> bool {
        self.add_bos && self.bos.is_some()
    }

    /// The bytes of one token (empty for unknown ids and for control tokens of SentencePiece
    /// vocabularies).
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        self.bytes.get(id as usize).map_or(&[], |b| b.as_slice())
    }

    /// The token as stored in the vocabulary (for display in `--logprobs`).
    pub fn piece(&self, id: u32) -> String {
        String::from_utf8_lossy(self.token_bytes(id)).into_owned()
    }

    /// The token's string in the vocabulary, control tokens included (`<s>`, `<|begin_of_text|>`):
    /// what chat templates call `bos_token` and `eos_token`.
    pub fn token_text(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Whether `id` is a control token (never printed).
    pub fn is_control(&self, id: u32) -> bool {
        self.control.get(id as usize).copied().unwrap_or(false)
    }

    /// The text of a token sequence (invalid UTF-8 replaced).
    pub fn decode(&self, ids: &[u32]) -> String {
        let bytes: Vec<u8> = ids
            .iter()
            .flat_map(|&id| self.token_bytes(id).iter().copied())
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// Turns token bytes into text as soon as they form whole UTF-8 characters, so a streamed reply
/// never shows half an emoji. Bytes that can never become valid UTF-8 are replaced by U+FFFD.
#[derive(Debug, Default)]
pub struct StreamDecoder {
    pending: Vec<u8>,
}

impl StreamDecoder {
    /// A decoder with nothing held back.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a token's bytes; returns the text that is now complete.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    return out;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // SAFETY-free: the prefix was just validated.
                    out.push_str(std::str::from_utf8(&self.pending[..valid]).unwrap_or_default());
                    match e.error_len() {
                        // An incomplete character at the end: wait for more bytes.
                        None => {
                            self.pending.drain(..valid);
                            return out;
                        }
                        Some(bad) => {
                            out.push('\u{FFFD}');
                            self.pending.drain(..valid + bad);
                        }
                    }
                }
            }
        }
    }

    /// Whatever is left at the end of the stream.
    pub fn finish(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        s
    }
}

/// GPT-2's byte <-> printable-character table, inverted: the character each token string uses
/// for a byte, back to the byte.
fn byte_level_inverse() -> HashMap<char, u8> {
    let mut printable: Vec<u32> = (b'!'..=b'~')
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .map(u32::from)
        .collect();
    let mut chars: Vec<u32> = printable.clone();
    let mut extra = 0;
    for b in 0..=255u32 {
        if !printable.contains(&b) {
            printable.push(b);
            chars.push(256 + extra);
            extra += 1;
        }
    }
    printable
        .iter()
        .zip(chars)
        .filter_map(|(&b, c)| char::from_u32(c).map(|c| (c, b as u8)))
        .collect()
}

fn parse_byte_token(t: &str) -> Option<u8> {
    let hex = t.strip_prefix("<0x")?.strip_suffix('>')?;
    u8::from_str_radix(hex, 16).ok()
}

/// Merges for a SentencePiece BPE vocabulary, ranked by the score of the merged token (higher
/// first): every split of a normal token into two vocabulary tokens is a merge.
fn spm_merges(tokens: &[&str], scores: &[f32], types: &[i32]) -> Vec<(String, String)> {
    let index: HashMap<&str, usize> = tokens.iter().enumerate().map(|(i, t)| (*t, i)).collect();
    let mut ranked: Vec<(f32, usize, usize, String, String)> = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        if types[i] != 1 || t.chars().count() < 2 {
            continue;
        }
        for (at, _) in t.char_indices().skip(1) {
            let (a, b) = t.split_at(at);
            if let (Some(&ia), Some(&ib)) = (index.get(a), index.get(b)) {
                ranked.push((scores[i], ia, ib, a.to_string(), b.to_string()));
            }
        }
    }
    ranked.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)).then(x.2.cmp(&y.2)));
    ranked.into_iter().map(|(_, _, _, a, b)| (a, b)).collect()
}
/// A tokenizer and every token's bytes.
type Built = (tokenizers::Tokenizer, Vec<Vec<u8>>);

/// `tokenizer.ggml.model = gpt2`: byte-level BPE with the merges and pre-tokenizer of the file.
fn bpe_tokenizer(
    file: &GgufFile,
    vocab: tokenizers::models::bpe::Vocab,
    tokens: &[&str],
    types: &[i32],
    pre: &PreTokenizer,
) -> Result<Built, TokenizerError> {
    let merges: Vec<(String, String)> = file
        .get_array("tokenizer.ggml.merges")?
        .strings()
        .ok_or_else(|| {
            TokenizerError::Invalid("tokenizer.ggml.merges is not an array of strings".into())
        })?
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| TokenizerError::Invalid(format!("merge `{m}` has no space")))
        })
        .collect::<Result<_, _>>()?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .ignore_merges(pre.ignore_merges)
        .build()
        .map_err(lib)?;
    let mut t = tokenizers::Tokenizer::new(bpe);
    t.with_pre_tokenizer(Some(pre.build()?));
    t.with_decoder(Some(ByteLevelDecoder::default()));
    let unicode_to_byte = byte_level_inverse();
    let bytes = tokens
        .iter()
        .zip(types)
        .map(|(t, &ty)| match ty {
            TYPE_CONTROL | TYPE_USER_DEFINED => t.as_bytes().to_vec(),
            _ => t
                .chars()
                .map(|c| unicode_to_byte.get(&c).copied().unwrap_or(b'?'))
                .collect(),
        })
        .collect();
    Ok((t, bytes))
}

/// `tokenizer.ggml.model = llama`: SentencePiece BPE from the tokens' scores, with byte fallback
/// and the leading-space rule.
fn spm_tokenizer(
    file: &GgufFile,
    vocab: tokenizers::models::bpe::Vocab,
    tokens: &[&str],
    types: &[i32],
) -> Result<Built, TokenizerError> {
    let n = tokens.len();
    let scores: Vec<f32> = match file.get("tokenizer.ggml.scores") {
        Some(v) => v
            .as_array()
            .map(|a| a.iter().map(|s| s.as_f32().unwrap_or(0.0)).collect())
            .unwrap_or_default(),
        None => vec![0.0; n],
    };
    if scores.len() != n {
        return Err(TokenizerError::Invalid(format!(
            "{n} tokens but {} scores",
            scores.len()
        )));
    }
    let merges = spm_merges(tokens, &scores, types);
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .byte_fallback(true)
        .fuse_unk(true)
        .build()
        .map_err(lib)?;
    let mut t = tokenizers::Tokenizer::new(bpe);
    let add_space = file
        .get("tokenizer.ggml.add_space_prefix")
        .and_then(|v| v.as_bool())
        .unwrap_or(true);
    let mut norms: Vec<NormalizerWrapper> = Vec::new();
    if add_space {
        norms.push(Prepend::new("▁".into()).into());
    }
    norms.push(Replace::new(" ", "▁").map_err(lib)?.into());
    t.with_normalizer(Some(tokenizers::normalizers::Sequence::new(norms)));
    let bytes = tokens
        .iter()
        .zip(types)
        .map(|(t, &ty)| match ty {
            TYPE_BYTE => parse_byte_token(t).map(|b| vec![b]).unwrap_or_default(),
            TYPE_CONTROL => Vec::new(),
            _ => t.replace('▁', " ").into_bytes(),
        })
        .collect();
    Ok((t, bytes))
}
