//! Interop with the official Python `gguf` package (installed by the README's test command):
//! we read exactly what gguf-py writes, and gguf-py reads exactly what we write.

mod common;

use qsparse::gguf::{GgufFile, MetaValue};
use serde_json::Value as J;

/// Numbers compared as exact integers where both are integers, else as floats: exactly as f64,
/// or, for values stored as f32 (`f32`), exactly after narrowing to f32 (Python prints the f32
/// widened to f64, we print its shortest f32 form).
fn json_eq(a: &J, b: &J, f32: bool) -> bool {
    match (a, b) {
        (J::Number(x), J::Number(y)) => match (x.as_i128(), y.as_i128()) {
            (Some(p), Some(q)) => p == q,
            _ if f32 => x.as_f64().map(|v| v as f32) == y.as_f64().map(|v| v as f32),
            _ => x.as_f64() == y.as_f64(),
        },
        (J::Array(x), J::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| json_eq(p, q, f32))
        }
        _ => a == b,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn we_read_exactly_what_gguf_py_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("py.gguf");
    let expected = common::gguf_interop("write", &path);

    let f = GgufFile::open(&path).unwrap();
    let kv = expected["kv"].as_object().unwrap();
    assert_eq!(f.kv_count(), kv.len());
    for (key, want) in kv {
        let got = f.get(key).unwrap_or_else(|| panic!("key {key} missing"));
        let got_type = got.describe_type();
        assert_eq!(got_type, want["type"].as_str().unwrap(), "type of {key}");
        assert!(
            json_eq(&got.to_json(), &want["value"], got_type.ends_with("f32")),
            "{key}: read {}, gguf-py wrote {}",
            got.to_json(),
            want["value"]
        );
    }
    for t in expected["tensors"].as_array().unwrap() {
        let info = f.require_tensor(t["name"].as_str().unwrap()).unwrap();
        assert_eq!(
            hex(f.tensor_data(info)),
            t["data_hex"].as_str().unwrap(),
            "{}",
            info.name
        );
    }
}

#[test]
fn gguf_py_reads_exactly_what_we_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ours.gguf");
    let (w, data) = common::sample_writer();
    w.write_file(&path, |i, _, o| o.write_all(&data[i]))
        .unwrap();
    let read = common::gguf_interop("read", &path);

    let kv = read["kv"].as_object().unwrap();
    for (key, value) in common::every_value_type() {
        let got = &kv[&key];
        let ours = GgufFile::open(&path).unwrap();
        let v = ours.get(&key).unwrap();
        let empty = v.as_array().is_some_and(|a| a.is_empty());
        if !empty {
            // gguf-py keeps no element type for an empty array.
            assert_eq!(
                got["type"].as_str().unwrap(),
                v.describe_type(),
                "type of {key}"
            );
        }
        let f32 = v.describe_type().ends_with("f32");
        let want = match &value {
            // gguf-py flattens nested arrays into one list of leaves.
            MetaValue::Array(..) => J::Array(flatten(&v.to_json())),
            _ => v.to_json(),
        };
        assert!(
            json_eq(&got["value"], &want, f32),
            "{key}: gguf-py read {}, we wrote {want}",
            got["value"]
        );
    }
    let tensors = read["tensors"].as_array().unwrap();
    for ((name, ty, dims, bytes), t) in common::sample_tensors().iter().zip(tensors) {
        assert_eq!(t["name"], name.as_str());
        assert_eq!(t["type"], ty.name());
        let shape: Vec<u64> = t["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap())
            .collect();
        assert_eq!(&shape, dims, "{name}");
        assert_eq!(t["data_hex"].as_str().unwrap(), hex(bytes), "{name}");
    }
}

fn flatten(v: &J) -> Vec<J> {
    match v {
        J::Array(items) => items.iter().flat_map(flatten).collect(),
        other => vec![other.clone()],
    }
}
