//! Our scalar dequantizers agree with the Python `gguf` package's on random blocks of every type
//! we decode and on real blocks of the SmolLM2 file.

mod common;

use qsparse::gguf::{dequantize, GgmlType, GgufFile};
use serde_json::Value as J;

fn oracle(args: &[&str]) -> J {
    common::python_json("dequant_oracle.py", args)
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// Equal up to f32 rounding of a differently ordered product (numpy may multiply scales first).
fn close(a: f32, b: f64) -> bool {
    (f64::from(a) - b).abs() <= 1e-6 * b.abs().max(1e-3)
}

#[test]
fn random_blocks_of_every_type_match_gguf_py() {
    let cases = oracle(&["random", "11"]);
    let cases = cases.as_object().unwrap();
    assert!(cases.len() >= 13, "oracle produced {} types", cases.len());
    for (name, case) in cases {
        let ty = GgmlType::from_name(name).unwrap();
        let data = unhex(case["data"].as_str().unwrap());
        let want: Vec<f64> = case["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let mut got = vec![0f32; want.len()];
        dequantize(ty, &data, &mut got).unwrap();
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(close(*g, *w), "{name} element {i}: ours {g}, gguf-py {w}");
        }
    }
}

#[test]
fn real_smollm2_blocks_match_gguf_py() {
    let path = common::smollm2();
    let n = 100_000;
    let cases = oracle(&["real", path.to_str().unwrap(), &n.to_string()]);
    let f = GgufFile::open(&path).unwrap();
    let cases = cases.as_object().unwrap();
    assert_eq!(cases.len(), 4);
    for (name, case) in cases {
        let info = f.require_tensor(name).unwrap();
        assert_eq!(info.ty.name(), case["type"].as_str().unwrap());
        let mut all = vec![0f32; info.n_elements() as usize];
        dequantize(info.ty, f.tensor_data(info), &mut all).unwrap();
        let want = case["values"].as_array().unwrap();
        for (i, (g, w)) in all.iter().zip(want).enumerate() {
            let w = w.as_f64().unwrap();
            assert!(close(*g, w), "{name} element {i}: ours {g}, gguf-py {w}");
        }
    }
}
