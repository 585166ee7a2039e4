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
    /// The projections in bitnet.cpp's I2_S (its type ids; one scale per tensor, the same
    /// values as TQ2_0 holds), for bitnet.cpp to run.
    pub i2_s_projections: bool,
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
        head_dim: None,
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
    if options.i2_s_projections {
        w = w.with_dialect(crate::gguf::TypeDialect::BitnetCpp);
    }
    for (name, ty, dims) in &tensors {
        let ty = match ty {
            GgmlType::TQ2_0 if options.f32_projections => GgmlType::F32,
            GgmlType::TQ2_0 if options.i2_s_projections => GgmlType::I2_S,
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
                    } else if options.i2_s_projections {
                        i2_s(&codes, d.to_f32())
                    } else {
                        tq2_0(&codes, d.to_f32())
                    }
                }
            }
        })
        .collect();
    w.write_file(path, |i, _, sink| sink.write_all(&data[i]))
}

/// bitnet.cpp's I2_S bytes (x86 layout) of ternary `codes` (a whole number of 128-value
/// blocks) scaled by `scale`: codes + 1 in 128-element blocks of 32 bytes, byte j holding
/// elements j, j+32, j+64, j+96 at bits 7:6, 5:4, 3:2, 1:0; then the f32 scale, padded to 32
/// bytes.
fn i2_s(codes: &[i8], scale: f32) -> Vec<u8> {
    let mut out = vec![0u8; codes.len() / 4];
    for (i, &c) in codes.iter().enumerate() {
        let (blk, e) = (i / 128, i % 128);
        out[32 * blk + e % 32] |= ((c + 1) as u8) << (6 - 2 * (e / 32));
    }
    out.extend_from_slice(&scale.to_le_bytes());
    out.resize(out.len() + 28, 0);
    out
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
    /// Heads of another width than d_model / heads (written as `attention.key_length`).
    head_dim: Option<u64>,
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
        let head_dim = self.head_dim.unwrap_or(s.d_model / u64::from(s.heads));
        if self.head_dim.is_some() {
            w.add_kv(
                arch("attention.key_length"),
                MetaValue::U32(head_dim as u32),
            );
            w.add_kv(
                arch("attention.value_length"),
                MetaValue::U32(head_dim as u32),
            );
        }
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
        head_dim: None,
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

/// The architectures [`write_architecture`] writes: small random models of llama.cpp's
/// architectures, each with the tensors and metadata that set it apart, for comparing the
/// executor with llama.cpp (tests/architectures.rs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestArchitecture {
    /// `llama` as Llama 3.x files hold it: RoPE frequency factors (`rope_freqs.weight`), a
    /// separate lm_head, an F16 token embedding.
    Llama3,
    /// `llama` with linear RoPE scaling (factor 2) and biases on o, gate, up and down.
    LlamaLinear,
    /// `qwen2`: biases on q, k and v; NeoX RoPE; tied lm_head.
    Qwen2,
    /// `qwen3`: per-head RMSNorm of queries and keys, heads wider than d_model / heads.
    Qwen3,
    /// `phi3`: fused q/k/v and gate/up tensors, a separate lm_head.
    Phi3,
    /// `phi3` with LongRoPE as Phi-3 128k and Phi-3.5 files hold it: short and long factor
    /// tensors, an attention factor, an original context of 128 positions (of 1024).
    Phi3LongRope,
}

impl TestArchitecture {
    /// Every one, in a fixed order.
    pub const ALL: [TestArchitecture; 6] = [
        TestArchitecture::Llama3,
        TestArchitecture::LlamaLinear,
        TestArchitecture::Qwen2,
        TestArchitecture::Qwen3,
        TestArchitecture::Phi3,
        TestArchitecture::Phi3LongRope,
    ];

    /// The name the fixture and `--example arch_model` use.
    pub fn name(self) -> &'static str {
        match self {
            TestArchitecture::Llama3 => "llama3",
            TestArchitecture::LlamaLinear => "llama-linear",
            TestArchitecture::Qwen2 => "qwen2",
            TestArchitecture::Qwen3 => "qwen3",
            TestArchitecture::Phi3 => "phi3",
            TestArchitecture::Phi3LongRope => "phi3-longrope",
        }
    }

    /// The one named `name`.
    pub fn from_name(name: &str) -> Option<TestArchitecture> {
        Self::ALL.into_iter().find(|a| a.name() == name)
    }

    /// `general.architecture`.
    pub fn gguf_arch(self) -> &'static str {
        match self {
            TestArchitecture::Llama3 | TestArchitecture::LlamaLinear => "llama",
            TestArchitecture::Qwen2 => "qwen2",
            TestArchitecture::Qwen3 => "qwen3",
            TestArchitecture::Phi3 | TestArchitecture::Phi3LongRope => "phi3",
        }
    }
}

/// The shape of a [`write_architecture`] model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArchShape {
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
    /// Entries per head.
    pub head_dim: u64,
}

impl ArchShape {
    /// The tests' (2 blocks, d_model 128, FFN 256, 4 heads sharing 2 kv heads of 32 entries;
    /// Qwen3's of 64, wider than d_model / heads as its real heads are).
    pub fn small(arch: TestArchitecture) -> ArchShape {
        ArchShape {
            layers: 2,
            d_model: 128,
            d_ff: 256,
            heads: 4,
            kv_heads: 2,
            head_dim: if arch == TestArchitecture::Qwen3 {
                64
            } else {
                32
            },
        }
    }

    /// The shape of the architecture's ~1B model (the speed comparison's): Llama 3.2 1B for
    /// llama and phi3 (Phi-3's smallest is 3.8B), Qwen2.5 1.5B, Qwen3 1.7B.
    pub fn one_b(arch: TestArchitecture) -> ArchShape {
        match arch {
            TestArchitecture::Qwen2 => ArchShape {
                layers: 28,
                d_model: 1536,
                d_ff: 8960,
                heads: 12,
                kv_heads: 2,
                head_dim: 128,
            },
            TestArchitecture::Qwen3 => ArchShape {
                layers: 28,
                d_model: 2048,
                d_ff: 6144,
                heads: 16,
                kv_heads: 8,
                head_dim: 128,
            },
            _ => ArchShape {
                layers: 16,
                d_model: 2048,
                d_ff: 8192,
                heads: 32,
                kv_heads: 8,
                head_dim: 64,
            },
        }
    }
}

/// A random model of `arch` at `shape` in `path`: every tensor F32 (F16 matrices with
/// `f16_matrices`), but a separate head's token embedding (F16, which llama.cpp reads exactly),
/// with the tokenizer of `tokenizer`.
pub fn write_architecture(
    path: &Path,
    arch: TestArchitecture,
    shape: ArchShape,
    f16_matrices: bool,
    tokenizer: &GgufFile,
) -> Result<u64, GgufError> {
    use TestArchitecture as A;
    let ArchShape {
        layers,
        d_model,
        d_ff,
        heads,
        kv_heads,
        head_dim,
    } = shape;
    let (q, kv) = (u64::from(heads) * head_dim, u64::from(kv_heads) * head_dim);
    let vocab = tokenizer.get_array("tokenizer.ggml.tokens")?.len();
    let name = arch.gguf_arch();
    let mut w = GgufWriter::new();
    let keys = ModelKeys {
        arch: name,
        name: "qsparse architecture test",
        shape: LlamaShape {
            layers,
            d_model,
            d_ff,
            heads,
            kv_heads,
            context_length: if arch == A::Phi3LongRope { 1024 } else { 256 },
        },
        head_dim: (head_dim != d_model / u64::from(heads)).then_some(head_dim),
    };
    keys.add_to(&mut w, tokenizer);
    let key = |k: &str| format!("{name}.{k}");
    if arch == A::LlamaLinear {
        w.add_kv(key("rope.scaling.type"), MetaValue::String("linear".into()));
        w.add_kv(key("rope.scaling.factor"), MetaValue::F32(2.0));
    }
    if arch == A::Phi3LongRope {
        // As llama.cpp's converter writes Phi-3 128k: the original context and
        // sqrt(1 + ln(scale) / ln(original)) (it writes no scaling type).
        let (long, original) = (1024u32, 128u32);
        w.add_kv(
            key("rope.scaling.original_context_length"),
            MetaValue::U32(original),
        );
        let scale = long as f32 / original as f32;
        let attn = (1.0 + scale.ln() / (original as f32).ln()).sqrt();
        w.add_kv(key("rope.scaling.attn_factor"), MetaValue::F32(attn));
    }
    let phi3 = matches!(arch, A::Phi3 | A::Phi3LongRope);
    let separate_head = matches!(arch, A::Llama3) || phi3;
    // (name, dims, kind)
    #[derive(Clone, Copy, PartialEq)]
    enum Kind {
        Matrix,
        Norm,
        Bias,
        RopeFactors,
        RopeFactorsShort,
        Embedding16,
    }
    let mut tensors: Vec<(String, Vec<u64>, Kind)> = vec![(
        "token_embd.weight".into(),
        vec![d_model, vocab],
        if separate_head {
            Kind::Embedding16
        } else {
            Kind::Matrix
        },
    )];
    if separate_head {
        tensors.push(("output.weight".into(), vec![d_model, vocab], Kind::Matrix));
    }
    tensors.push(("output_norm.weight".into(), vec![d_model], Kind::Norm));
    if arch == A::Llama3 {
        tensors.push((
            "rope_freqs.weight".into(),
            vec![head_dim / 2],
            Kind::RopeFactors,
        ));
    }
    if arch == A::Phi3LongRope {
        tensors.push((
            "rope_factors_long.weight".into(),
            vec![head_dim / 2],
            Kind::RopeFactors,
        ));
        tensors.push((
            "rope_factors_short.weight".into(),
            vec![head_dim / 2],
            Kind::RopeFactorsShort,
        ));
    }
    for l in 0..layers {
        let t = |n: &str| format!("blk.{l}.{n}");
        tensors.push((t("attn_norm.weight"), vec![d_model], Kind::Norm));
        if phi3 {
            tensors.push((
                t("attn_qkv.weight"),
                vec![d_model, q + 2 * kv],
                Kind::Matrix,
            ));
        } else {
            tensors.extend([
                (t("attn_q.weight"), vec![d_model, q], Kind::Matrix),
                (t("attn_k.weight"), vec![d_model, kv], Kind::Matrix),
                (t("attn_v.weight"), vec![d_model, kv], Kind::Matrix),
            ]);
        }
        if arch == A::Qwen2 {
            tensors.extend([
                (t("attn_q.bias"), vec![q], Kind::Bias),
                (t("attn_k.bias"), vec![kv], Kind::Bias),
                (t("attn_v.bias"), vec![kv], Kind::Bias),
            ]);
        }
        if arch == A::Qwen3 {
            tensors.extend([
                (t("attn_q_norm.weight"), vec![head_dim], Kind::Norm),
                (t("attn_k_norm.weight"), vec![head_dim], Kind::Norm),
            ]);
        }
        tensors.push((t("attn_output.weight"), vec![q, d_model], Kind::Matrix));
        tensors.push((t("ffn_norm.weight"), vec![d_model], Kind::Norm));
        if phi3 {
            tensors.push((t("ffn_up.weight"), vec![d_model, 2 * d_ff], Kind::Matrix));
        } else {
            tensors.extend([
                (t("ffn_gate.weight"), vec![d_model, d_ff], Kind::Matrix),
                (t("ffn_up.weight"), vec![d_model, d_ff], Kind::Matrix),
            ]);
        }
        tensors.push((t("ffn_down.weight"), vec![d_ff, d_model], Kind::Matrix));
        if arch == A::LlamaLinear {
            tensors.extend([
                (t("attn_output.bias"), vec![d_model], Kind::Bias),
                (t("ffn_gate.bias"), vec![d_ff], Kind::Bias),
                (t("ffn_up.bias"), vec![d_ff], Kind::Bias),
                (t("ffn_down.bias"), vec![d_model], Kind::Bias),
            ]);
        }
    }
    let type_of = |kind: Kind| match kind {
        Kind::Embedding16 => GgmlType::F16,
        Kind::Matrix if f16_matrices => GgmlType::F16,
        _ => GgmlType::F32,
    };
    for (name, dims, kind) in &tensors {
        w.add_tensor(name.clone(), type_of(*kind), dims);
    }
    let mut rng = Rng::new(0x5eed_a4c4);
    w.write_file(path, |i, _, sink| {
        let (_, dims, kind) = &tensors[i];
        let n = dims.iter().product::<u64>() as usize;
        // Matrices scaled so that each product keeps its input's magnitude (uniform values
        // have variance 1/3).
        let matrix_scale = (3.0 / dims[0] as f32).sqrt();
        let bytes: Vec<u8> = match kind {
            Kind::Embedding16 => (0..n)
                .flat_map(|_| half::f16::from_f32(rng.unit()).to_le_bytes())
                .collect(),
            Kind::Matrix if f16_matrices => (0..n)
                .flat_map(|_| half::f16::from_f32(matrix_scale * rng.unit()).to_le_bytes())
                .collect(),
            Kind::RopeFactors => (0..n)
                .flat_map(|i| {
                    // Llama 3's shape: 1 for the fastest pairs, 8 for the slowest, a ramp
                    // between.
                    let x = i as f32 / (n - 1).max(1) as f32;
                    (1.0 + 7.0 * ((x - 0.25) * 2.0).clamp(0.0, 1.0)).to_le_bytes()
                })
                .collect(),
            // LongRoPE's short factors: close to 1.
            Kind::RopeFactorsShort => (0..n)
                .flat_map(|i| (1.0 + 0.5 * i as f32 / n as f32).to_le_bytes())
                .collect(),
            _ => (0..n)
                .flat_map(|_| {
                    let v = match kind {
                        Kind::Norm => 1.0 + 0.2 * rng.unit(),
                        Kind::Bias => 0.5 * rng.unit(),
                        _ => matrix_scale * rng.unit(),
                    };
                    v.to_le_bytes()
                })
                .collect(),
        };
        sink.write_all(&bytes)
    })
}
