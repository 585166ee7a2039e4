//! Models written from a seed, for tests and benchmarks where no real model can be fetched (no
//! ternary model is reachable here): llama.cpp's `bitnet` architecture with random ternary
//! projections, at any shape, carrying a real model's tokenizer.

use std::path::Path;

use crate::gguf::{GgmlType, GgufError, GgufFile, GgufWriter, MetaValue};

/// xorshift64*: the same stream on every machine.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in 0..n (0 when n is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    /// Uniform in [−1, 1).
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// A `bitnet` model's shape; head dimension d_model / heads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BitnetShape {
    /// Transformer blocks.
    pub layers: u32,
    /// Width of the residual stream.
    pub d_model: u64,
    /// Width of the feed-forward hidden layer.
    pub d_ff: u64,
    /// Query heads.
    pub heads: u32,
    /// Key/value heads.
    pub kv_heads: u32,
}

impl BitnetShape {
    /// Small enough to write in a blink (the tests').
    pub const SMALL: BitnetShape = BitnetShape {
        layers: 2,
        d_model: 256,
        d_ff: 512,
        heads: 4,
        kv_heads: 2,
    };

    /// BitNet b1.58 2B4T's.
    pub const B2_4T: BitnetShape = BitnetShape {
        layers: 30,
        d_model: 2560,
        d_ff: 6912,
        heads: 20,
        kv_heads: 5,
    };
}

/// How [`write_bitnet`] writes the projections and the FFN activation.
#[derive(Debug, Clone, Default)]
pub struct BitnetOptions {
    /// `bitnet.hidden_activation` (llama.cpp's default, SiLU, when None).
    pub activation: Option<String>,
    /// The projections as F32 holding the ternary values instead of TQ2_0.
    pub f32_projections: bool,
}

/// A `bitnet` model at `shape` in `path`, from a fixed seed: F16 token embedding (tied head),
/// norm weights around 1, ternary projections scaled to keep their input's magnitude (TQ2_0, or
/// F32 of the same values), and the tokenizer (`tokenizer.*` keys) of `tokenizer`.
pub fn write_bitnet(
    path: &Path,
    shape: BitnetShape,
    tokenizer: &GgufFile,
    options: &BitnetOptions,
) -> Result<u64, GgufError> {
    let BitnetShape {
        layers,
        d_model,
        d_ff,
        heads,
        kv_heads,
    } = shape;
    let head_dim = d_model / u64::from(heads);
    let vocab = tokenizer.get_array("tokenizer.ggml.tokens")?.len();
    let mut w = GgufWriter::new();
    let keys = ModelKeys {
        arch: "bitnet",
        name: "qsparse bitnet test",
        shape: LlamaShape {
            layers,
            d_model,
            d_ff,
            heads,
            kv_heads,
            context_length: 256,
        },
    };
    keys.add_to(&mut w, tokenizer);
    if let Some(a) = &options.activation {
        w.add_kv("bitnet.hidden_activation", MetaValue::String(a.clone()));
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
            GgmlType::TQ2_0 if options.f32_projections => GgmlType::F32,
            t => *t,
        };
        w.add_tensor(name.clone(), ty, dims);
    }
    let mut rng = Rng::new(0x9e37_79b9_7f4a_7c15);
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
                    let codes: Vec<i8> = (0..n).map(|_| rng.below(3) as i8 - 1).collect();
                    // Scaled so each product keeps its input's magnitude (2/3 of the weights
                    // are nonzero).
                    let d = half::f16::from_f32(1.2 / (dims[0] as f32 * 2.0 / 3.0).sqrt());
                    if options.f32_projections {
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

/// The metadata every model written here has.
struct ModelKeys {
    arch: &'static str,
    name: &'static str,
    shape: LlamaShape,
}

impl ModelKeys {
    /// Architecture and name, the shape under `ARCH.*`, RMSNorm's epsilon, RoPE over whole
    /// heads, and the `tokenizer.*` keys of `tokenizer`.
    fn add_to(&self, w: &mut GgufWriter, tokenizer: &GgufFile) {
        let s = self.shape;
        w.add_kv("general.architecture", MetaValue::String(self.arch.into()));
        w.add_kv("general.name", MetaValue::String(self.name.into()));
        let arch = |k: &str| format!("{}.{k}", self.arch);
        w.add_kv(arch("block_count"), MetaValue::U32(s.layers));
        w.add_kv(arch("context_length"), MetaValue::U32(s.context_length));
        w.add_kv(arch("embedding_length"), MetaValue::U32(s.d_model as u32));
        w.add_kv(arch("feed_forward_length"), MetaValue::U32(s.d_ff as u32));
        w.add_kv(arch("attention.head_count"), MetaValue::U32(s.heads));
        w.add_kv(arch("attention.head_count_kv"), MetaValue::U32(s.kv_heads));
        w.add_kv(
            arch("attention.layer_norm_rms_epsilon"),
            MetaValue::F32(1e-5),
        );
        w.add_kv(arch("rope.freq_base"), MetaValue::F32(10_000.0));
        let head_dim = s.d_model / u64::from(s.heads);
        w.add_kv(
            arch("rope.dimension_count"),
            MetaValue::U32(head_dim as u32),
        );
        for (key, value) in tokenizer.metadata() {
            if key.starts_with("tokenizer.") {
                w.add_kv(key, value.to_owned_value());
            }
        }
    }
}

/// A `llama` model's shape for training from scratch; head dimension d_model / heads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LlamaShape {
    /// Transformer blocks.
    pub layers: u32,
    /// Width of the residual stream.
    pub d_model: u64,
    /// Width of the feed-forward (SwiGLU) hidden layer.
    pub d_ff: u64,
    /// Query heads.
    pub heads: u32,
    /// Key/value heads.
    pub kv_heads: u32,
    /// Context length the model declares.
    pub context_length: u32,
}

/// A freshly initialized `llama` model at `shape` in `path`, every tensor F32, from `seed`: the
/// token embedding (tied head) and projections drawn with standard deviation 0.02, the
/// projections that write into the residual stream (o, down) scaled by 1/√(2·layers) as GPT-2
/// does, norm weights 1; with the tokenizer and chat template (`tokenizer.*` keys) of
/// `tokenizer`.
pub fn write_llama_init(
    path: &Path,
    shape: LlamaShape,
    tokenizer: &GgufFile,
    seed: u64,
) -> Result<u64, GgufError> {
    let LlamaShape {
        layers,
        d_model,
        d_ff,
        heads,
        kv_heads,
        ..
    } = shape;
    let head_dim = d_model / u64::from(heads);
    let vocab = tokenizer.get_array("tokenizer.ggml.tokens")?.len();
    let mut w = GgufWriter::new();
    let keys = ModelKeys {
        arch: "llama",
        name: "qsparse from-scratch model",
        shape,
    };
    keys.add_to(&mut w, tokenizer);
    w.add_kv("llama.vocab_size", MetaValue::U32(vocab as u32));
    let kv = u64::from(kv_heads) * head_dim;
    let residual = 0.02 / (2.0 * layers as f32).sqrt();
    // (name, dims, standard deviation; 0 for a norm's ones)
    let mut tensors: Vec<(String, Vec<u64>, f32)> = vec![
        ("token_embd.weight".into(), vec![d_model, vocab], 0.02),
        ("output_norm.weight".into(), vec![d_model], 0.0),
    ];
    for l in 0..layers {
        let t = |n: &str| format!("blk.{l}.{n}.weight");
        tensors.extend([
            (t("attn_norm"), vec![d_model], 0.0),
            (t("attn_q"), vec![d_model, d_model], 0.02),
            (t("attn_k"), vec![d_model, kv], 0.02),
            (t("attn_v"), vec![d_model, kv], 0.02),
            (t("attn_output"), vec![d_model, d_model], residual),
            (t("ffn_norm"), vec![d_model], 0.0),
            (t("ffn_gate"), vec![d_model, d_ff], 0.02),
            (t("ffn_up"), vec![d_model, d_ff], 0.02),
            (t("ffn_down"), vec![d_ff, d_model], residual),
        ]);
    }
    for (name, dims, _) in &tensors {
        w.add_tensor(name.clone(), GgmlType::F32, dims);
    }
    let mut rng = Rng::new(seed);
    w.write_file(path, |i, _, sink| {
        let (_, dims, std) = &tensors[i];
        let n = dims.iter().product::<u64>() as usize;
        let bytes: Vec<u8> = (0..n)
            .flat_map(|_| {
                let v = if *std == 0.0 {
                    1.0
                } else {
                    // The sum of four uniforms on [−1, 1) has variance 4/3: close enough to a
                    // normal for an initialization.
                    let s: f32 = (0..4).map(|_| rng.unit()).sum();
                    s * std / (4.0f32 / 3.0).sqrt()
                };
                v.to_le_bytes()
            })
            .collect();
        sink.write_all(&bytes)
    })
}
