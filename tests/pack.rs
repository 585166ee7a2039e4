//! `qsparse pack`: a packed model runs bit for bit like the model it was packed from, its matrices
//! read in place from the file; the official Python `gguf` package lists it; and a packed file
//! that does not fit this build or the run is refused with an error that says what to do.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use qsparse::gguf::{GgmlType, GgufFile, GgufWriter, MetaValue, TensorInfo};
use qsparse::model::{self, pack, HeadInput, Model, RunState, Sparsity, WeightFormat};
use sha2::{Digest, Sha256};

/// The real model converted to `format`, and a packed copy of it in `dir` (loaded back).
fn original_and_packed(
    dir: &Path,
    format: WeightFormat,
    head: HeadInput,
) -> (Model, Model, PathBuf) {
    let (original, _) = model::load_for(&common::smollm2(), format, head, &|_, _| {}).unwrap();
    let path = dir.join(format!("packed-{}.gguf", format.name()));
    let last = std::cell::Cell::new((0, 0));
    pack::write(&original.file, &original.weights, &path, &|d, t| {
        last.set((d, t))
    })
    .unwrap();
    let (done, total) = last.get();
    assert!(done == total && total > original.weights.linear_bytes() as u64);
    let (packed, _) = model::load_for(&path, format, head, &|_, _| {}).unwrap();
    (original, packed, path)
}

fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

#[test]
fn packed_models_run_bit_for_bit_like_converted_ones() {
    let dir = tempfile::tempdir().unwrap();
    let prompt = [1u32, 504, 3458, 282, 4649, 314, 2909, 30, 198, 41];
    for (format, head, sparsities) in [
        (
            WeightFormat::Int8,
            HeadInput::Dense,
            vec![Sparsity::dense(), Sparsity::uniform(0.5)],
        ),
        (
            WeightFormat::Int8,
            HeadInput::Sparse,
            vec![Sparsity {
                lm_head: 0.5,
                ..Sparsity::uniform(0.5)
            }],
        ),
        (
            WeightFormat::F16,
            HeadInput::Dense,
            vec![Sparsity::uniform(0.25)],
        ),
        (
            WeightFormat::Ternary,
            HeadInput::Dense,
            vec![Sparsity::dense(), Sparsity::uniform(0.5)],
        ),
    ] {
        let (original, packed, packed_path) = original_and_packed(dir.path(), format, head);
        // Read in place where the OS maps the file with huge pages (`pack::read_in_place`), else
        // copied into the process's memory: all matrices alike. Both placements are checked.
        let in_place = |m: &Model| {
            let l = &m.weights.layers[7];
            let files = [&l.wqkv, &l.wo, &l.w_gate_up, &l.w_down].map(|m| m.matrix.data.is_file());
            assert!(files.iter().all(|&f| f == files[0]), "{files:?}");
            files[0]
        };
        eprintln!(
            "{}: packed matrices read in place: {}",
            format.name(),
            in_place(&packed)
        );
        assert_eq!(
            original.weights.linear_bytes(),
            packed.weights.linear_bytes()
        );
        let mut copied = model::load_for(&packed_path, format, head, &|_, _| {})
            .unwrap()
            .0;
        copied.weights.place_in_memory(true);
        assert!(!in_place(&copied));
        for (packed, sparsity) in sparsities
            .iter()
            .flat_map(|&s| [(&packed, s), (&copied, s)])
        {
            let what = format!(
                "{} {head:?} {sparsity:?} in place {}",
                format.name(),
                in_place(packed)
            );
            let mut a = RunState::new(&original.config, format, 64);
            let mut b = RunState::new(&packed.config, format, 64);
            let mut token = prompt[0];
            for pos in 0..prompt.len() + 6 {
                original.forward(&mut a, token, pos, sparsity).unwrap();
                packed.forward(&mut b, token, pos, sparsity).unwrap();
                assert!(same_bits(a.logits(), b.logits()), "{what}: logits at {pos}");
                assert_eq!(a.traffic(), b.traffic(), "{what}: bytes read at {pos}");
                token = prompt
                    .get(pos + 1)
                    .copied()
                    .unwrap_or_else(|| qsparse::sample::argmax(a.logits()));
            }
        }
    }
}

/// `qsparse pack` on the command line writes a file that gguf-py lists tensor for tensor as we
/// read it (names, types, shapes, bytes), with every tensor of the source that is not a packed
/// projection carried over unchanged; runs of it generate what the source generates.
#[test]
fn the_pack_command_writes_a_gguf_file_that_gguf_py_lists() {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("smollm2.int8.gguf");
    // Under umask 022, an ordinary output file: readable by all (not a temp file's 0600).
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(r#"umask 022 && exec "$0" pack -m "$1" -o "$2""#)
        .arg(env!("CARGO_BIN_EXE_qsparse"))
        .arg(common::smollm2())
        .arg(&out_path)
        .output()
        .unwrap();
    common::assert_success(&out);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&out_path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644, "{mode:o}");
    }
    // `inspect` counts the model's parameters, not the packed bytes or a tied head's copy.
    let parameters = |path: &std::path::Path| {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_qsparse"))
            .args(["inspect", path.to_str().unwrap(), "--json"])
            .output()
            .unwrap();
        common::assert_success(&o);
        let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        j["parameters"].as_u64().unwrap()
    };
    assert_eq!(parameters(&out_path), parameters(&common::smollm2()));
    let ours = GgufFile::open(&out_path).unwrap();
    let listed = common::gguf_interop("list", &out_path);
    assert_eq!(listed["alignment"], 64);
    let tensors = listed["tensors"].as_array().unwrap();
    assert_eq!(tensors.len(), ours.tensors().len());
    for (t, info) in tensors.iter().zip(ours.tensors()) {
        assert_eq!(t["name"], info.name.as_str());
        assert_eq!(t["type"], info.ty.name(), "{}", info.name);
        assert_eq!(t["n_bytes"], info.n_bytes, "{}", info.name);
        let sha = hex(&Sha256::digest(ours.tensor_data(info)));
        assert_eq!(t["sha256"], sha.as_str(), "{}", info.name);
    }
    let keys: Vec<&str> = listed["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    assert!(keys.contains(&"qsparse.pack.version") && keys.contains(&"tokenizer.ggml.tokens"));

    // The source's other tensors, byte for byte; its projections replaced by packed ones.
    let source = GgufFile::open(common::smollm2()).unwrap();
    for info in source.tensors() {
        match ours.tensor(&info.name) {
            Some(kept) => assert_eq!(
                ours.tensor_data(kept),
                source.tensor_data(info),
                "{}",
                info.name
            ),
            None => assert!(
                ["attn_q.", "attn_k.", "attn_v.", "attn_output.", "ffn_"]
                    .iter()
                    .any(|p| info.name.contains(p)),
                "{} was dropped",
                info.name
            ),
        }
    }
    assert!(ours.tensor("blk.29.ffn_gate_up.packed").is_some());

    let text = |model: &Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_qsparse"))
            .args(["generate", "-p", "The capital of France is", "-n", "12"])
            .args(["--temp", "0", "--sparsity", "0.5", "-m"])
            .arg(model)
            .output()
            .unwrap();
        common::assert_success(&out);
        out.stdout
    };
    assert_eq!(text(&out_path), text(&common::smollm2()));

    // `inspect` says what the file is.
    let out = Command::new(env!("CARGO_BIN_EXE_qsparse"))
        .args(["inspect", "--json"])
        .arg(&out_path)
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["packed"]["weights"], "int8");
    assert_eq!(report["packed"]["lm_head"], "rows_q8");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A copy of `src` at `out` with metadata values replaced by `kv` (None keeps a value) and
/// tensors changed by `tensor` (a new type and shape; the bytes are cut or zero-padded to fit).
fn rewrite(
    src: &GgufFile,
    out: &Path,
    kv: impl Fn(&str) -> Option<MetaValue>,
    tensor: impl Fn(&TensorInfo) -> Option<(GgmlType, Vec<u64>)>,
) {
    let mut w = GgufWriter::new().with_alignment(64).unwrap();
    for (key, value) in src.metadata() {
        if key != "general.alignment" {
            w.add_kv(key, kv(key).unwrap_or_else(|| value.to_owned_value()));
        }
    }
    for info in src.tensors() {
        let (ty, dims) = tensor(info).unwrap_or((info.ty, info.dims.clone()));
        w.add_tensor(info.name.clone(), ty, &dims);
    }
    w.write_file(out, |i, spec, sink| {
        let mut bytes = src.tensor_data(&src.tensors()[i]).to_vec();
        bytes.resize(spec.n_bytes().unwrap() as usize, 0);
        sink.write_all(&bytes)
    })
    .unwrap();
}

/// A model with its own lm_head (`output.weight`, here a copy of the token embedding) packs it
/// like a tied one, and the packed file drops it with the projections.
#[test]
fn untied_lm_heads_are_packed_too() {
    let dir = tempfile::tempdir().unwrap();
    let source = GgufFile::open(common::smollm2()).unwrap();
    let untied = dir.path().join("untied.gguf");
    let mut w = GgufWriter::new();
    for (key, value) in source.metadata() {
        w.add_kv(key, value.to_owned_value());
    }
    for info in source.tensors() {
        w.add_tensor(info.name.clone(), info.ty, &info.dims);
    }
    let embd = source.require_tensor("token_embd.weight").unwrap();
    w.add_tensor("output.weight", embd.ty, &embd.dims);
    let n = source.tensors().len();
    w.write_file(&untied, |i, _, sink| {
        sink.write_all(source.tensor_data(source.tensors().get(i).unwrap_or(embd)))
    })
    .unwrap();
    assert!(n < GgufFile::open(&untied).unwrap().tensors().len());

    let (original, packed, path) = {
        let (original, _) = model::load(&untied, WeightFormat::Int8, &|_, _| {}).unwrap();
        let path = dir.path().join("untied.packed.gguf");
        pack::write(&original.file, &original.weights, &path, &|_, _| {}).unwrap();
        let (packed, _) = model::load(&path, WeightFormat::Int8, &|_, _| {}).unwrap();
        (original, packed, path)
    };
    let file = GgufFile::open(&path).unwrap();
    assert!(file.tensor("output.weight").is_none() && file.tensor("output.packed").is_some());
    let mut a = RunState::new(&original.config, WeightFormat::Int8, 16);
    let mut b = RunState::new(&packed.config, WeightFormat::Int8, 16);
    for (pos, token) in [1u32, 504, 3458, 282].into_iter().enumerate() {
        original
            .forward(&mut a, token, pos, Sparsity::uniform(0.5))
            .unwrap();
        packed
            .forward(&mut b, token, pos, Sparsity::uniform(0.5))
            .unwrap();
        assert!(same_bits(a.logits(), b.logits()), "logits at {pos}");
    }
}

fn load_error(path: &Path, format: WeightFormat, head: HeadInput) -> String {
    match model::load_for(path, format, head, &|_, _| {}) {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(e) => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                text += &format!(": {s}");
                source = s.source();
            }
            text
        }
    }
}

#[test]
fn packed_files_that_do_not_fit_the_run_or_this_build_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_, packed, path) = original_and_packed(dir.path(), WeightFormat::Int8, HeadInput::Dense);

    // The run asks for another format, or a sparse head input the packed head cannot take.
    let e = load_error(&path, WeightFormat::F16, HeadInput::Dense);
    assert!(e.contains("--weights int8"), "{e}");
    let e = load_error(&path, WeightFormat::Int8, HeadInput::Sparse);
    assert!(e.contains("--sparse-head"), "{e}");
    // Packing a packed model.
    let again = pack::write(
        &packed.file,
        &packed.weights,
        &dir.path().join("again.gguf"),
        &|_, _| {},
    );
    assert!(
        matches!(again, Err(pack::PackError::AlreadyPacked(_))),
        "{again:?}"
    );
    assert!(!dir.path().join("again.gguf").exists());

    let src = GgufFile::open(&path).unwrap();
    let bad = dir.path().join("bad.gguf");
    let kv_cases = [
        (
            "a newer layout",
            "qsparse.pack.version",
            MetaValue::U32(2),
            "layout version 2",
        ),
        (
            "another tile geometry",
            "qsparse.pack.lines_per_tile",
            MetaValue::U32(64),
            "lines_per_tile = 64",
        ),
        (
            "an unknown head layout",
            "qsparse.pack.head",
            MetaValue::from("diagonal"),
            "`diagonal` is not a packed lm_head layout",
        ),
        (
            "a weight format that is not a string",
            "qsparse.pack.weights",
            MetaValue::U8(8),
            "qsparse.pack.weights",
        ),
    ];
    for (what, key, value, expected) in kv_cases {
        rewrite(&src, &bad, |k| (k == key).then(|| value.clone()), |_| None);
        let e = load_error(&bad, WeightFormat::Int8, HeadInput::Dense);
        assert!(e.contains(expected), "{what}: {e}");
    }
    // (what, tensor, its new type, its new length from the old one, expected in the error)
    type NewLength = fn(u64) -> u64;
    let tensor_cases: [(&str, &str, GgmlType, NewLength, &str); 4] = [
        (
            "a truncated matrix",
            "blk.3.ffn_down.packed",
            GgmlType::I8,
            |n| n - 64,
            "blk.3.ffn_down.packed",
        ),
        (
            "a matrix of another type",
            "blk.0.attn_qkv.packed",
            GgmlType::F32,
            |n| n / 4,
            "expected one-dimensional I8",
        ),
        (
            "too few row scales",
            "blk.5.attn_output.packed_scale",
            GgmlType::F32,
            |_| 3,
            "blk.5.attn_output.packed",
        ),
        (
            "a head that does not fit the vocabulary",
            "output.packed",
            GgmlType::I8,
            |n| n / 2,
            "output.packed",
        ),
    ];
    for (what, name, ty, len, expected) in tensor_cases {
        rewrite(
            &src,
            &bad,
            |_| None,
            |t| (t.name == name).then(|| (ty, vec![len(t.dims[0])])),
        );
        let e = load_error(&bad, WeightFormat::Int8, HeadInput::Dense);
        assert!(e.contains(expected), "{what}: {e}");
    }

    // The command line refuses to overwrite its input, and says so.
    let out = Command::new(env!("CARGO_BIN_EXE_qsparse"))
        .args(["pack", "-m"])
        .arg(&path)
        .arg("-o")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is the input model"));
    let missing = dir.path().join("no/such/dir/out.gguf");
    let out = common::qsparse(&["pack", "-o", missing.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
}

/// A 4-bit lm_head (`--lm-head-bits 4`): packed and read back, it runs bit for bit like the
/// converted one, holds about half the 8-bit head's bytes, is refused when the run asks for
/// the other width, and a truncated one is refused naming it.
#[test]
fn four_bit_heads_pack_and_are_checked() {
    use qsparse::model::{LmHead, LoadOptions};
    use qsparse_kernels::dense_q8::CodeBits;
    let dir = tempfile::tempdir().unwrap();
    let load = |path: &Path, bits: Option<CodeBits>| {
        let options = LoadOptions {
            head_bits: bits,
            ..LoadOptions::new(WeightFormat::Int8)
        };
        model::load_file(GgufFile::open(path).unwrap(), &options, &|_, _| {})
    };
    let (q8, _) = load(&common::smollm2(), None).unwrap();
    let (q4, _) = load(&common::smollm2(), Some(CodeBits::Four)).unwrap();
    let bytes = |m: &Model| match &m.weights.lm_head {
        LmHead::Rows(r) => (r.bits(), r.bytes()),
        LmHead::Columns(_) => panic!("a column head"),
    };
    let ((b8, n8), (b4, n4)) = (bytes(&q8), bytes(&q4));
    assert_eq!((b8, b4), (CodeBits::Eight, CodeBits::Four));
    assert!(n4 * 100 < n8 * 56, "{n4} vs {n8}");
    let path = dir.path().join("q4.gguf");
    pack::write(&q4.file, &q4.weights, &path, &|_, _| {}).unwrap();
    let (packed, _) = load(&path, None).unwrap();
    assert_eq!(bytes(&packed).0, CodeBits::Four);
    let prompt = [1u32, 504, 3458, 282, 4649];
    let run = |m: &Model| {
        let mut s = RunState::new(&m.config, WeightFormat::Int8, 16);
        m.feed_prompt(&mut s, &prompt, 0, Sparsity::dense())
            .unwrap();
        s.logits().to_vec()
    };
    assert!(same_bits(&run(&q4), &run(&packed)));
    assert!(!same_bits(&run(&q4), &run(&q8)));
    let e = match load(&path, Some(CodeBits::Eight)) {
        Ok(_) => panic!("an 8-bit head asked of a 4-bit one"),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains("4-bit codes") && e.contains("--lm-head-bits"),
        "{e}"
    );
    let bad = dir.path().join("bad.gguf");
    let src = GgufFile::open(&path).unwrap();
    rewrite(
        &src,
        &bad,
        |_| None,
        |t| (t.name == "output.packed").then(|| (GgmlType::I8, vec![t.dims[0] - 64])),
    );
    let e = load_error(&bad, WeightFormat::Int8, HeadInput::Dense);
    assert!(e.contains("output.packed") && e.contains("4-bit"), "{e}");
}
