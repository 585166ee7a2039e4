//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

/// The real SmolLM2 file. The README's test command pulls it first; a missing model is a failure
/// with instructions, never a silent skip.
pub fn smollm2() -> PathBuf {
    match qsparse::hub::resolve("smollm2-135m-instruct", &qsparse::cli::models_dir()) {
        Ok(p) => p,
        Err(e) => {
            panic!("{e}\n(the test suite needs the real model: run `cargo run --release -- pull`)")
        }
    }
}

/// Run the qsparse binary with `args` and `-m` the real model.
pub fn qsparse(args: &[&str]) -> std::process::Output {
    let model = smollm2();
    std::process::Command::new(env!("CARGO_BIN_EXE_qsparse"))
        .args(args)
        .args(["-m", model.to_str().unwrap()])
        .output()
        .unwrap()
}

/// Panics with the command's stderr unless it exited 0.
pub fn assert_success(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Run tests/python/`script` with the qsparse binary and the real model as arguments; panics with
/// its output unless it exits 0 and its last line is "OK".
pub fn python_check(script: &str) {
    let out = std::process::Command::new("python3")
        .arg(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/python")
                .join(script),
        )
        .arg(env!("CARGO_BIN_EXE_qsparse"))
        .arg(smollm2())
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && log.trim_end().ends_with("OK"),
        "{log}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Run tests/python/`script` with `args` (the Python oracles: the official `gguf` package and
/// others); its stdout parsed as JSON. Panics with its stderr unless it exits 0.
pub fn python_json<S: AsRef<std::ffi::OsStr>>(script: &str, args: &[S]) -> serde_json::Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(script);
    let out = std::process::Command::new("python3")
        .arg(&path)
        .args(args)
        .output()
        .expect("python3 must be installed for the oracle tests");
    assert!(
        out.status.success(),
        "{script} failed (are the test command's Python packages installed? see scripts/test.sh):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// What tests/python/gguf_interop.py (`write`, `read`, `list`) wrote or read with the official
/// Python `gguf` package at `path`.
pub fn gguf_interop(mode: &str, path: &std::path::Path) -> serde_json::Value {
    python_json(
        "gguf_interop.py",
        &[std::ffi::OsStr::new(mode), path.as_os_str()],
    )
}

/// The tests' seeded generator.
#[allow(unused_imports)]
pub use qsparse::synthetic::Rng;

use qsparse::gguf::{GgmlType, GgufWriter, MetaValue, ValueType};

/// Metadata covering every GGUF value type: scalars at their extremes, strings with multi-byte
/// UTF-8, arrays of every element type, empty arrays and nested arrays.
pub fn every_value_type() -> Vec<(String, MetaValue)> {
    use MetaValue as M;
    let v: Vec<(&str, MetaValue)> = vec![
        ("t.u8", M::U8(u8::MAX)),
        ("t.i8", M::I8(i8::MIN)),
        ("t.u16", M::U16(u16::MAX)),
        ("t.i16", M::I16(i16::MIN)),
        ("t.u32", M::U32(u32::MAX)),
        ("t.i32", M::I32(i32::MIN)),
        ("t.f32", M::F32(-1.5e-7)),
        ("t.bool_true", M::Bool(true)),
        ("t.bool_false", M::Bool(false)),
        ("t.string", M::from("héllo, 世界 🦀\n\t\"q\"")),
        ("t.empty_string", M::from("")),
        ("t.u64", M::U64(u64::MAX)),
        ("t.i64", M::I64(i64::MIN)),
        ("t.f64", M::F64(std::f64::consts::PI)),
        ("t.arr.u8", M::array(ValueType::U8, [0u8, 1, 255])),
        ("t.arr.i8", M::array(ValueType::I8, [-128i8, 0, 127])),
        ("t.arr.u16", M::array(ValueType::U16, [0u16, 65535])),
        ("t.arr.i16", M::array(ValueType::I16, [-32768i16, 32767])),
        (
            "t.arr.u32",
            M::array(ValueType::U32, [1u32, 2, 3, u32::MAX]),
        ),
        ("t.arr.i32", M::array(ValueType::I32, [-1i32, 0, i32::MAX])),
        (
            "t.arr.f32",
            M::array(ValueType::F32, [0.5f32, -0.0, f32::MAX, f32::MIN_POSITIVE]),
        ),
        ("t.arr.bool", M::array(ValueType::Bool, [true, false, true])),
        (
            "t.arr.string",
            M::strings(["<|im_start|>", "", "Ġthe", "日本語", "🙂"]),
        ),
        ("t.arr.u64", M::array(ValueType::U64, [0u64, u64::MAX])),
        ("t.arr.i64", M::array(ValueType::I64, [i64::MIN, i64::MAX])),
        ("t.arr.f64", M::array(ValueType::F64, [1e300f64, -2.5])),
        ("t.arr.empty", M::Array(ValueType::U32, vec![])),
        (
            "t.arr.nested",
            M::Array(
                ValueType::Array,
                vec![
                    M::array(ValueType::U32, [1u32, 2]),
                    M::Array(ValueType::U32, vec![]),
                    M::array(ValueType::U32, [3u32]),
                ],
            ),
        ),
        (
            "t.arr.nested_strings",
            M::Array(
                ValueType::Array,
                vec![M::strings(["a", "bc"]), M::strings(["déf"])],
            ),
        ),
    ];
    v.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// Tensors of several types with deterministic contents: (name, type, dims, bytes).
pub fn sample_tensors() -> Vec<(String, GgmlType, Vec<u64>, Vec<u8>)> {
    let specs: Vec<(&str, GgmlType, Vec<u64>)> = vec![
        ("a.f32", GgmlType::F32, vec![3, 2]),
        ("b.f16", GgmlType::F16, vec![5]),
        ("c.q4_1", GgmlType::Q4_1, vec![64, 2]),
        ("d.bf16", GgmlType::BF16, vec![2, 3, 4]),
        ("e.q8_0", GgmlType::Q8_0, vec![32, 1, 1, 2]),
        ("f.empty", GgmlType::F32, vec![0]),
    ];
    specs
        .into_iter()
        .enumerate()
        .map(|(i, (name, ty, dims))| {
            let n = ty.tensor_bytes(&dims).unwrap() as usize;
            let bytes = (0..n).map(|j| (j * 31 + i * 7) as u8).collect();
            (name.to_string(), ty, dims, bytes)
        })
        .collect()
}

/// A writer holding [`every_value_type`] and [`sample_tensors`].
pub fn sample_writer() -> (GgufWriter, Vec<Vec<u8>>) {
    let mut w = GgufWriter::new();
    w.add_kv("general.architecture", "test");
    for (k, v) in every_value_type() {
        w.add_kv(k, v);
    }
    let mut data = Vec::new();
    for (name, ty, dims, bytes) in sample_tensors() {
        w.add_tensor(name, ty, &dims);
        data.push(bytes);
    }
    (w, data)
}

/// The in-memory image of [`sample_writer`]'s file.
pub fn sample_image() -> Vec<u8> {
    let (w, data) = sample_writer();
    let mut out = Vec::new();
    w.write_to(&mut out, |i, _, o| o.write_all(&data[i]))
        .unwrap();
    out
}

/// tests/fixtures/`name`, parsed.
pub fn fixture(name: &str) -> serde_json::Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// A fixture case's `top10` as (token id, logit) pairs, and the largest |logit| among them (the
/// scale tolerances are relative to).
pub fn top10(case: &serde_json::Value) -> (Vec<(usize, f32)>, f32) {
    let entries: Vec<(usize, f32)> = case["top10"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e[0].as_u64().unwrap() as usize,
                e[1].as_f64().unwrap() as f32,
            )
        })
        .collect();
    let size = entries.iter().fold(0f32, |m, &(_, l)| m.max(l.abs()));
    (entries, size)
}

/// A fixture's list of token ids.
pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// Run the qsparse binary with `args` (the model not added), `input` on its standard input.
pub fn qsparse_with_stdin(args: &[&str], input: &[u8]) -> std::process::Output {
    use std::io::Write as _;
    use std::process::Stdio;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_qsparse"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

/// Where scripts/fetch_vocabs.sh put llama.cpp's vocabularies and chat templates
/// (`$QSPARSE_VOCABS`, else ~/.cache/qsparse/vocabs); the README's test command runs it first.
pub fn vocab_dir() -> PathBuf {
    let dir = match std::env::var_os("QSPARSE_VOCABS").filter(|d| !d.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
            .join(".cache/qsparse/vocabs"),
    };
    assert!(
        dir.join("ggml-vocab-llama-bpe.gguf").exists() && dir.join("templates").is_dir(),
        "llama.cpp's vocabularies are not in {} (run scripts/fetch_vocabs.sh)",
        dir.display()
    );
    dir
}
