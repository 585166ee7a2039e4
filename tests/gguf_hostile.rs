//! Hostile and corrupt GGUF input: every case gives a typed error naming the problem, and no
//! mutation of a real or synthetic file can make the reader panic.

mod common;

use qsparse::gguf::{GgufError, GgufFile};

/// Raw little-endian GGUF bytes, for crafting exact malformed headers.
#[derive(Default)]
struct Raw(Vec<u8>);

impl Raw {
    fn header(version: u32, tensors: u64, kvs: u64) -> Raw {
        let mut r = Raw::default();
        r.bytes(b"GGUF").u32(version).u64(tensors).u64(kvs);
        r
    }
    fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(b);
        self
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }
    fn str(&mut self, s: &str) -> &mut Self {
        self.u64(s.len() as u64).bytes(s.as_bytes())
    }
    fn kv_u32(&mut self, key: &str, v: u32) -> &mut Self {
        self.str(key).u32(4).u32(v)
    }
    fn tensor(&mut self, name: &str, dims: &[u64], ty: u32, offset: u64) -> &mut Self {
        self.str(name).u32(dims.len() as u32);
        for d in dims {
            self.u64(*d);
        }
        self.u32(ty).u64(offset)
    }
    /// Pad to `align` and append `n` data bytes.
    fn data(&mut self, align: usize, n: usize) -> &mut Self {
        while !self.0.len().is_multiple_of(align) {
            self.0.push(0);
        }
        self.0.extend(std::iter::repeat_n(0u8, n));
        self
    }
    fn open(&self) -> Result<GgufFile, GgufError> {
        GgufFile::from_bytes(self.0.clone())
    }
}

fn err_text(r: &Raw) -> String {
    match r.open() {
        Ok(_) => panic!("accepted a bad file"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn wrong_magic_and_versions() {
    assert!(matches!(
        GgufFile::from_bytes(b"GGML\x03\0\0\0".to_vec()),
        Err(GgufError::NotGguf { .. })
    ));
    assert!(matches!(
        GgufFile::from_bytes(vec![]),
        Err(GgufError::NotGguf { .. })
    ));
    assert!(matches!(
        GgufFile::from_bytes(b"GG".to_vec()),
        Err(GgufError::NotGguf { .. })
    ));
    for v in [0, 1, 4, u32::MAX] {
        let e = Raw::header(v, 0, 0).open().unwrap_err();
        assert!(
            matches!(e, GgufError::UnsupportedVersion { version } if version == v),
            "{e}"
        );
    }
    assert!(Raw::header(3, 0, 0).open().is_ok());
    assert!(Raw::header(2, 0, 0).open().is_ok());
}

#[test]
fn absurd_counts_are_refused_before_allocating() {
    for (t, k) in [
        (u64::MAX, 0),
        (0, u64::MAX),
        (1 << 40, 1 << 40),
        (u64::MAX, u64::MAX),
    ] {
        let e = err_text(&Raw::header(3, t, k));
        assert!(e.contains("cannot fit"), "{e}");
    }
}

#[test]
fn strings_and_arrays_past_the_end() {
    let mut r = Raw::header(3, 0, 1);
    r.u64(u64::MAX).bytes(b"abcdefghijklmnop");
    assert!(err_text(&r).contains("truncated"));

    let mut r = Raw::header(3, 0, 1);
    r.str("k").u32(8).u64(1 << 50).bytes(b"xyz");
    assert!(err_text(&r).contains("truncated"));

    // An array claiming 2^61 u64 elements (count * 8 overflows to a small number).
    let mut r = Raw::header(3, 0, 1);
    r.str("k").u32(9).u32(10).u64(1 << 61).u64(0);
    assert!(err_text(&r).contains("cannot fit"));

    // An array of strings claiming more strings than bytes.
    let mut r = Raw::header(3, 0, 1);
    r.str("k").u32(9).u32(8).u64(1_000_000).str("only one");
    assert!(err_text(&r).contains("cannot fit"));
}

#[test]
fn malformed_metadata() {
    let mut r = Raw::header(3, 0, 1);
    r.str("k").u32(13).u32(0);
    assert!(err_text(&r).contains("unknown value type 13"));

    let mut r = Raw::header(3, 0, 1);
    r.u64(2).bytes(&[0xff, 0xfe]).u32(4).u32(1);
    assert!(err_text(&r).contains("not valid UTF-8"));

    let mut r = Raw::header(3, 0, 2);
    r.kv_u32("dup", 1).kv_u32("dup", 2);
    assert!(err_text(&r).contains("appears twice"));

    for bad in [0u32, 3, 48] {
        let mut r = Raw::header(3, 0, 1);
        r.kv_u32("general.alignment", bad);
        assert!(err_text(&r).contains("power of two"), "alignment {bad}");
    }

    // Arrays nested past the depth limit.
    let mut r = Raw::header(3, 0, 1);
    r.str("deep").u32(9);
    for _ in 0..6 {
        r.u32(9).u64(1);
    }
    r.u32(4).u64(0);
    assert!(err_text(&r).contains("nested deeper"));

    let mut r = Raw::header(3, 0, 1);
    r.str("k").u32(9).u32(77).u64(0);
    assert!(err_text(&r).contains("unknown array element type 77"));

    // A bool is one byte, 0 or 1: anything else is refused, naming the key.
    let mut r = Raw::header(3, 0, 1);
    r.str("tokenizer.ggml.add_bos_token").u32(7).bytes(&[2]);
    let e = err_text(&r);
    assert!(
        e.contains("add_bos_token") && e.contains("bool value is 2"),
        "{e}"
    );
    let mut r = Raw::header(3, 0, 1);
    r.str("flags").u32(9).u32(7).u64(3).bytes(&[1, 0, 255]);
    let e = err_text(&r);
    assert!(
        e.contains("flags") && e.contains("bool element 2 is 255"),
        "{e}"
    );
}

#[test]
fn malformed_tensor_infos() {
    // Unknown type id, with the tensor named and its info offset given.
    let mut r = Raw::header(3, 1, 0);
    r.tensor("w", &[4], 99, 0).data(32, 64);
    let e = r.open().unwrap_err();
    assert!(
        matches!(&e, GgufError::UnknownType { tensor, id: 99, offset: 24, .. } if tensor == "w"),
        "{e}"
    );

    // Retired upstream ids are unknown in an upstream file.
    let mut r = Raw::header(3, 1, 0);
    r.tensor("w", &[4], 31, 0).data(32, 64);
    assert!(matches!(
        r.open(),
        Err(GgufError::UnknownType { id: 31, .. })
    ));

    let mut r = Raw::header(3, 1, 0);
    r.tensor("w", &[1, 1, 1, 1, 1], 0, 0);
    assert!(err_text(&r).contains("5 dimensions"));

    let mut r = Raw::header(3, 1, 0);
    r.tensor("w", &[u64::MAX, 3], 0, 0).data(32, 0);
    assert!(err_text(&r).contains("overflows"));

    let mut r = Raw::header(3, 1, 0);
    r.tensor("w", &[1 << 62], 0, 0).data(32, 0);
    assert!(err_text(&r).contains("overflows"));

    let mut r = Raw::header(3, 1, 0);
    r.tensor("w", &[4], 0, 64).data(32, 16);
    assert!(err_text(&r).contains("past the end"));

    let mut r = Raw::header(3, 1, 0);
    r.tensor("w", &[4], 0, u64::MAX - 31).data(32, 16);
    assert!(err_text(&r).contains("past the end"));

    let mut r = Raw::header(3, 1, 0);
    r.tensor("w", &[4], 0, 8).data(32, 64);
    assert!(err_text(&r).contains("not a multiple of the alignment"));

    let mut r = Raw::header(3, 2, 0);
    r.tensor("a", &[16], 0, 0)
        .tensor("b", &[8], 0, 32)
        .data(32, 128);
    assert!(err_text(&r).contains("overlaps tensor `a`"));

    let mut r = Raw::header(3, 2, 0);
    r.tensor("a", &[8], 0, 0)
        .tensor("a", &[8], 0, 32)
        .data(32, 128);
    assert!(err_text(&r).contains("appears twice"));

    // Q4_K rows must be whole 256-element blocks.
    let mut r = Raw::header(3, 1, 0);
    r.tensor("q", &[100], 12, 0).data(32, 1024);
    assert!(err_text(&r).contains("not a multiple"));

    // The padding before the data section is missing.
    let mut r = Raw::header(3, 1, 0);
    r.tensor("w", &[0], 0, 0);
    assert!(err_text(&r).contains("truncated"));

    // A well-formed one opens, proving the cases above fail for the stated reason.
    let mut r = Raw::header(3, 2, 0);
    r.tensor("a", &[8], 0, 0)
        .tensor("b", &[8], 0, 32)
        .data(32, 64);
    let f = r.open().unwrap();
    assert_eq!(f.tensor_data(f.tensor("b").unwrap()).len(), 32);
}

#[test]
fn every_truncation_of_a_valid_file_is_an_error() {
    let img = common::sample_image();
    assert!(GgufFile::validate_bytes(&img).is_ok());
    for len in 0..img.len() {
        let r = GgufFile::validate_bytes(&img[..len]);
        assert!(
            r.is_err(),
            "truncated to {len} of {} bytes and accepted",
            img.len()
        );
    }
}

/// Flip, overwrite and splice bytes of a small file holding every value type, thousands of
/// times; whatever the reader accepts must then be fully readable without panicking.
#[test]
fn random_mutations_of_a_synthetic_file_never_panic() {
    let img = common::sample_image();
    let mut rng = common::Rng::new(0x5eed);
    let mut accepted = 0;
    for _ in 0..20_000 {
        let mut m = img.clone();
        mutate(&mut m, &mut rng, img.len());
        if let Ok(f) = GgufFile::from_bytes(m) {
            accepted += 1;
            for (k, v) in f.metadata() {
                let _ = (k.len(), v.to_json(), v.to_string(), v.to_owned_value());
            }
            for t in f.tensors() {
                assert_eq!(f.tensor_data(t).len() as u64, t.n_bytes);
            }
        }
    }
    // Some mutations land in values or tensor data and leave a valid file: those paths ran too.
    assert!(
        accepted > 100,
        "only {accepted} mutated files were accepted"
    );
}

/// The same on the real model's header region (metadata with a 49,152-entry vocabulary and
/// 272 tensor infos), without copying 98 MB per case: mutate in place, validate, restore.
#[test]
fn random_mutations_of_the_real_header_never_panic() {
    let path = common::smollm2();
    let mut img = std::fs::read(&path).unwrap();
    let header_len = GgufFile::open(&path).unwrap().data_offset() as usize;
    let mut rng = common::Rng::new(42);
    let mut errors = 0;
    for i in 0..3_000 {
        if i % 10 == 0 {
            // Truncation anywhere in the header or just past it.
            let len = rng.below(header_len as u64 + 4096) as usize;
            errors += usize::from(GgufFile::validate_bytes(&img[..len.min(img.len())]).is_err());
            continue;
        }
        let saved: Vec<(usize, u8)> = (0..1 + rng.below(8))
            .map(|_| {
                let at = pick_offset(&mut rng, header_len);
                (at, img[at])
            })
            .collect();
        for &(at, _) in &saved {
            img[at] = mutated_byte(&mut rng, img[at]);
        }
        errors += usize::from(GgufFile::validate_bytes(&img).is_err());
        for &(at, b) in saved.iter().rev() {
            img[at] = b;
        }
    }
    assert!(
        GgufFile::validate_bytes(&img).is_ok(),
        "restoring the bytes failed"
    );
    assert!(
        errors > 300,
        "only {errors} of 3000 mutations were detected"
    );
}

/// Offsets biased towards the first 4 KiB, where counts, lengths and type tags live.
fn pick_offset(rng: &mut common::Rng, len: usize) -> usize {
    if rng.below(2) == 0 {
        rng.below(len.min(4096) as u64) as usize
    } else {
        rng.below(len as u64) as usize
    }
}

fn mutated_byte(rng: &mut common::Rng, b: u8) -> u8 {
    match rng.below(4) {
        0 => b ^ (1 << rng.below(8)),
        1 => 0xff,
        2 => 0,
        _ => rng.next_u64() as u8,
    }
}

fn mutate(m: &mut Vec<u8>, rng: &mut common::Rng, len: usize) {
    match rng.below(5) {
        0 | 1 => {
            for _ in 0..1 + rng.below(4) {
                let at = pick_offset(rng, len);
                m[at] = mutated_byte(rng, m[at]);
            }
        }
        2 => {
            // A little-endian u64 of an extreme value over a count or offset.
            let at = rng.below(len.saturating_sub(8) as u64) as usize;
            let v: u64 = match rng.below(4) {
                0 => u64::MAX,
                1 => 1 << rng.below(64),
                2 => rng.next_u64(),
                _ => rng.below(1 << 20),
            };
            m[at..at + 8].copy_from_slice(&v.to_le_bytes());
        }
        3 => m.truncate(rng.below(len as u64) as usize),
        _ => {
            // Delete or duplicate a run of bytes, shifting everything after it.
            let at = rng.below(len as u64) as usize;
            let n = (1 + rng.below(16) as usize).min(m.len() - at);
            if rng.below(2) == 0 {
                m.drain(at..at + n);
            } else {
                let run: Vec<u8> = m[at..at + n].to_vec();
                m.splice(at..at, run);
            }
        }
    }
}

/// Model shapes the kernels cannot serve are refused when the configuration is read, by name.
#[test]
fn absurd_model_shapes_are_refused_by_name() {
    use qsparse::model::ModelConfig;
    let config = |embedding: u32, heads: u32| {
        let mut r = Raw::header(3, 0, 5);
        // general.architecture = "llama" (type 8: string).
        r.str("general.architecture").u32(8).str("llama");
        r.kv_u32("llama.block_count", 1)
            .kv_u32("llama.embedding_length", embedding)
            .kv_u32("llama.feed_forward_length", 64)
            .kv_u32("llama.attention.head_count", heads);
        let file = r.open().expect("a well-formed header");
        ModelConfig::from_gguf(&file)
            .map(|_| ())
            .unwrap_err()
            .to_string()
    };
    let e = config(4096, 4);
    assert!(
        e.contains("attention.key_length") && e.contains("head dimension 1024"),
        "{e}"
    );
    let e = config(0, 1);
    assert!(e.contains("head dimension 0"), "{e}");
    let e = config(64, 0);
    assert!(e.contains("head_count"), "{e}");

    // RoPE on more entries than a head has, or on an odd number, is refused at load.
    for rope in [40u32, 7, 0] {
        let mut r = Raw::header(3, 0, 7);
        r.str("general.architecture").u32(8).str("llama");
        r.kv_u32("llama.block_count", 1)
            .kv_u32("llama.embedding_length", 64)
            .kv_u32("llama.feed_forward_length", 64)
            .kv_u32("llama.attention.head_count", 2)
            .kv_u32("llama.context_length", 16)
            .kv_u32("llama.rope.dimension_count", rope);
        let file = r.open().expect("a well-formed header");
        let e = ModelConfig::from_gguf(&file).unwrap_err().to_string();
        assert!(e.contains("rope.dimension_count"), "rope {rope}: {e}");
    }
}

/// Mutated model files through the whole loader (configuration, weights and tokenizer from the
/// metadata) and a dense and a sparse step: each is refused with an error or runs, never panics.
#[test]
fn random_mutations_of_a_model_never_panic_the_loader() {
    use qsparse::model::{load_file, weights, LoadOptions, RunState, Sparsity};
    use qsparse::synthetic::{write_bitnet, BitnetOptions, BitnetShape};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("small.gguf");
    let tokenizer = GgufFile::open(common::smollm2()).unwrap();
    write_bitnet(
        &path,
        BitnetShape::SMALL,
        &tokenizer,
        &BitnetOptions::default(),
    )
    .unwrap();
    let img = std::fs::read(&path).unwrap();
    let mut rng = common::Rng::new(7);
    let (mut loaded, mut refused) = (0, 0);
    for _ in 0..400 {
        let mut m = img.clone();
        for _ in 0..1 + rng.below(3) {
            let len = m.len();
            if len > 8 {
                mutate(&mut m, &mut rng, len);
            }
        }
        let Ok(file) = GgufFile::from_bytes(m) else {
            refused += 1;
            continue;
        };
        let options = LoadOptions {
            huge_pages: false,
            ..LoadOptions::new(weights::default_format(&file))
        };
        match load_file(file, &options, &|_, _| {}) {
            Ok((model, tokenizer)) => {
                loaded += 1;
                let _ = tokenizer.encode("Hello, world! 123");
                let mut state = RunState::new(&model.config, model.weights.format, 4);
                let _ = model.forward(&mut state, 0, 0, Sparsity::dense());
                let _ = model.forward(&mut state, 1, 1, Sparsity::uniform(0.5));
            }
            Err(e) => {
                refused += 1;
                let _ = e.to_string();
            }
        }
    }
    // Mutations in weights or unused values leave a model that runs: those paths ran too.
    assert!(
        loaded > 10 && refused > 100,
        "{loaded} loaded, {refused} refused"
    );
}
