//! The hyper-parameters of a llama-family model, from `<arch>.*` GGUF metadata.
//! Required keys are checked up front and a missing one is named in the error.

use serde::Serialize;

use crate::gguf::{GgufError, GgufFile, Value};

/// Why a model's configuration could not be read from its metadata.
// Each variant's `#[error]` message is its documentation.
#[allow(missing_docs)]
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("metadata key `{key}`: {what}")]
    Invalid { key: String, what: String },
}

/// Shape and numerics of a transformer, as the file declares them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelConfig {
    /// `general.architecture` (`llama`, `bitnet`).
    pub architecture: String,
    /// `general.name`, if given.
    pub name: Option<String>,
    /// Transformer blocks.
    pub n_layers: usize,
    /// Width of the residual stream.
    pub d_model: usize,
    /// Width of the feed-forward hidden layer.
    pub d_ff: usize,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads (fewer than query heads: grouped-query attention).
    pub n_kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// The context length the model was trained for.
    pub context_length: usize,
    /// RoPE's frequency base.
    pub rope_base: f32,
    /// Entries of each head RoPE rotates.
    pub rope_dim: usize,
    /// RMSNorm's ε.
    pub rms_eps: f32,
    /// Tokens in the vocabulary.
    pub vocab_size: usize,
    /// `tokenizer.ggml.model` (`gpt2`, `llama`).
    pub tokenizer_model: Option<String>,
    /// `tokenizer.ggml.pre`, the pre-tokenizer.
    pub tokenizer_pre: Option<String>,
    /// Whether the file carries a chat template.
    pub has_chat_template: bool,
    /// The feed-forward's gate activation.
    pub ffn_activation: FfnActivation,
    /// BitNet's sub-norms: RMSNorm of the attention output before the o projection and of the
    /// gated FFN activation before the down projection.
    pub sub_norms: bool,
    /// RoPE on entries i and i + rope_dim/2 (NeoX), not on consecutive pairs: llama.cpp rotates
    /// `bitnet`, `qwen2`, `qwen3` and `phi3` this way.
    pub rope_neox: bool,
    /// RoPE's linear position scaling (`rope.scaling.type` = linear): positions are multiplied
    /// by this (1 / `rope.scaling.factor`); 1 without scaling.
    pub rope_freq_scale: f32,
    /// `rope.scaling.attn_factor` (LongRoPE models: Phi-3 128k, Phi-3.5): the rotation's cos and
    /// sin are multiplied by it, as llama.cpp does; 1 without.
    pub rope_attn_factor: f32,
    /// `rope.scaling.original_context_length` (the context length before long-context scaling):
    /// a run with a longer context takes the long RoPE factors (`rope_factors_long.weight`), a
    /// shorter one the short ones, as llama.cpp chooses them.
    pub rope_original_context: usize,
}

/// The gate activation of the FFN, act(gate)·up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FfnActivation {
    /// SiLU (llama; llama.cpp's `bitnet` by default).
    Silu,
    /// Squared ReLU (BitNet b1.58 2B4T).
    Relu2,
}

/// The architectures the executor runs: llama.cpp's names for Llama (also Mistral, TinyLlama,
/// SmolLM), BitNet b1.58 (and `bitnet-b1.58`, bitnet.cpp's name for BitNet b1.58 2B4T), Qwen2/2.5,
/// Qwen3 and Phi-3. They differ in tensors the loader finds by
/// name (biases, q/k norms, fused q/k/v and gate/up, sub-norms) and in these few settings.
pub const ARCHITECTURES: [&str; 6] = ["llama", "bitnet", "bitnet-b1.58", "qwen2", "qwen3", "phi3"];

/// Metadata of the architectures above that changes what a model computes but that qsparse
/// does not implement: a file that sets one is refused, never run wrongly.
const UNSUPPORTED_KEYS: [&str; 7] = [
    "expert_count",
    "attention.scale",
    "attn_logit_softcapping",
    "final_logit_softcapping",
    "embedding_scale",
    "residual_scale",
    "logit_scale",
];

impl ModelConfig {
    /// Read the configuration from `file`'s metadata; an error names a missing or invalid key.
    pub fn from_gguf(file: &GgufFile) -> Result<ModelConfig, ConfigError> {
        let arch = file.get_str("general.architecture")?.to_string();
        let key = |k: &str| format!("{arch}.{k}");
        let invalid = |k: String, what: String| ConfigError::Invalid { key: k, what };

        let n_layers = file.get_usize(&key("block_count"))?;
        let d_model = file.get_usize(&key("embedding_length"))?;
        let d_ff = file.get_usize(&key("feed_forward_length"))?;
        let n_heads = file.get_usize(&key("attention.head_count"))?;
        let n_kv_heads = match file.get(&key("attention.head_count_kv")) {
            None => n_heads,
            Some(v) => uniform_count(&v).ok_or_else(|| {
                invalid(
                    key("attention.head_count_kv"),
                    format!("expected one count for all layers, got {v}"),
                )
            })?,
        };
        if n_heads == 0 || n_kv_heads == 0 || n_heads % n_kv_heads != 0 {
            return Err(invalid(
                key("attention.head_count"),
                format!("{n_heads} heads cannot be shared by {n_kv_heads} kv heads"),
            ));
        }
        let head_dim = match file.get(&key("attention.key_length")) {
            Some(_) => file.get_usize(&key("attention.key_length"))?,
            None if d_model % n_heads == 0 => d_model / n_heads,
            None => {
                return Err(invalid(
                    key("embedding_length"),
                    format!("{d_model} is not divisible by {n_heads} heads"),
                ))
            }
        };
        if head_dim == 0 || head_dim > qsparse_kernels::attention::MAX_HEAD_DIM {
            return Err(invalid(
                key("attention.key_length"),
                format!(
                    "head dimension {head_dim} is outside 1..={}",
                    qsparse_kernels::attention::MAX_HEAD_DIM
                ),
            ));
        }
        let context_length = file.get_usize(&key("context_length"))?;
        let rope_base =
            optional(file, &key("rope.freq_base"), |f, k| f.get_f32(k))?.unwrap_or(10_000.0);
        let rope_dim = optional(file, &key("rope.dimension_count"), |f, k| f.get_usize(k))?
            .unwrap_or(head_dim);
        if rope_dim == 0 || rope_dim > head_dim || rope_dim % 2 != 0 {
            return Err(invalid(
                key("rope.dimension_count"),
                format!("RoPE on {rope_dim} entries of a {head_dim}-entry head: it must be even and at most the head"),
            ));
        }
        let rms_eps = optional(file, &key("attention.layer_norm_rms_epsilon"), |f, k| {
            f.get_f32(k)
        })?
        .unwrap_or(1e-5);
        // llama.cpp's `bitnet` (BitNet b1.58): llama with sub-norms; SiLU unless the file
        // declares another activation (`relu2` for the 2B4T model). bitnet.cpp's `bitnet-b1.58`
        // (how its converter writes 2B4T, Hugging Face's `BitNetForCausalLM`): the same graph with
        // squared ReLU, which its files do not declare.
        let bitnet = arch == "bitnet" || arch == "bitnet-b1.58";
        let ffn_activation = match file.get(&key("hidden_activation")) {
            None if arch == "bitnet-b1.58" => FfnActivation::Relu2,
            None => FfnActivation::Silu,
            Some(_) => match file.get_str(&key("hidden_activation"))? {
                "silu" => FfnActivation::Silu,
                "relu2" | "relu_sqr" => FfnActivation::Relu2,
                other => {
                    return Err(invalid(
                        key("hidden_activation"),
                        format!("activation `{other}` is not supported (silu, relu2)"),
                    ))
                }
            },
        };
        if let Some(v) = file.get(&key("attention.value_length")) {
            if v.as_u64() != Some(head_dim as u64) {
                return Err(invalid(
                    key("attention.value_length"),
                    format!("{v}: value heads of another width than key heads ({head_dim}) are not supported"),
                ));
            }
        }
        for k in UNSUPPORTED_KEYS {
            let k = key(k);
            match file.get(&k) {
                // An expert count of 0 is a dense model.
                Some(v) if k.ends_with("expert_count") && v.as_u64() == Some(0) => {}
                Some(v) => {
                    return Err(invalid(k, format!("{v}: not supported by qsparse")));
                }
                None => {}
            }
        }
        let rope_freq_scale = rope_scaling(file, &arch)?;
        let rope_attn_factor =
            optional(file, &key("rope.scaling.attn_factor"), |f, k| f.get_f32(k))?.unwrap_or(1.0);
        if !(rope_attn_factor.is_finite() && rope_attn_factor > 0.0) {
            return Err(invalid(
                key("rope.scaling.attn_factor"),
                format!("{rope_attn_factor} is not a positive number"),
            ));
        }
        let rope_original_context = optional(
            file,
            &key("rope.scaling.original_context_length"),
            |f, k| f.get_usize(k),
        )?
        .unwrap_or(context_length);
        let vocab_size = match file.get(&key("vocab_size")) {
            Some(_) => file.get_usize(&key("vocab_size"))?,
            None => usize::try_from(file.get_array("tokenizer.ggml.tokens")?.len())
                .unwrap_or(usize::MAX),
        };
        Ok(ModelConfig {
            name: file
                .get("general.name")
                .and_then(|v| v.as_str())
                .map(str::to_string),
            n_layers,
            d_model,
            d_ff,
            n_heads,
            n_kv_heads,
            head_dim,
            context_length,
            rope_base,
            rope_dim,
            rms_eps,
            vocab_size,
            tokenizer_model: file
                .get("tokenizer.ggml.model")
                .and_then(|v| v.as_str())
                .map(str::to_string),
            tokenizer_pre: file
                .get("tokenizer.ggml.pre")
                .and_then(|v| v.as_str())
                .map(str::to_string),
            has_chat_template: file.get("tokenizer.chat_template").is_some(),
            ffn_activation,
            sub_norms: bitnet,
            // llama.cpp's rope type of each architecture (`llama_model_rope_type`).
            rope_neox: matches!(
                arch.as_str(),
                "bitnet" | "bitnet-b1.58" | "qwen2" | "qwen3" | "phi3"
            ),
            rope_freq_scale,
            rope_attn_factor,
            rope_original_context,
            architecture: arch,
        })
    }
}

/// RoPE's position scale from `ARCH.rope.scaling.type` / `.factor` (or the older
/// `ARCH.rope.scale_linear`): 1 without scaling, 1/factor for linear scaling. Llama 3's and
/// LongRoPE's frequency factors come as tensors, read with the weights; any other scaling type
/// (YaRN, ...) is refused.
fn rope_scaling(file: &GgufFile, arch: &str) -> Result<f32, ConfigError> {
    let key = |k: &str| format!("{arch}.{k}");
    let factor = |k: String| -> Result<f32, ConfigError> {
        let f = file.get_f32(&k)?;
        if !(f.is_finite() && f > 0.0) {
            return Err(ConfigError::Invalid {
                key: k,
                what: format!("scaling factor {f} is not a positive number"),
            });
        }
        Ok(1.0 / f)
    };
    match file.get(&key("rope.scaling.type")) {
        None => match file.get(&key("rope.scale_linear")) {
            None => Ok(1.0),
            Some(_) => factor(key("rope.scale_linear")),
        },
        Some(_) => match file.get_str(&key("rope.scaling.type"))? {
            "none" => Ok(1.0),
            "linear" => factor(key("rope.scaling.factor")),
            other => Err(ConfigError::Invalid {
                key: key("rope.scaling.type"),
                what: format!("RoPE scaling `{other}` is not supported (none, linear)"),
            }),
        },
    }
}

/// A key that may be absent, but must have the right type when present.
fn optional<T>(
    file: &GgufFile,
    key: &str,
    get: impl Fn(&GgufFile, &str) -> Result<T, GgufError>,
) -> Result<Option<T>, GgufError> {
    match file.get(key) {
        None => Ok(None),
        Some(_) => get(file, key).map(Some),
    }
}

/// A count stored as a scalar, or as a per-layer array whose entries are all equal.
fn uniform_count(v: &Value<'_>) -> Option<usize> {
    if let Some(a) = v.as_array() {
        let mut it = a.iter().map(|x| x.as_u64());
        let first = it.next()??;
        return it
            .all(|x| x == Some(first))
            .then(|| usize::try_from(first).ok())?;
    }
    v.as_u64().and_then(|n| usize::try_from(n).ok())
}
