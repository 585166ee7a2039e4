//! `qsparse calibrate` and `--sparsity-profile` on a small model the test writes: the profile
//! reads uniform S's bytes, is the same each run, changes what a run computes, and a profile that
//! does not fit is refused by name.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use qsparse::gguf::GgufFile;
use qsparse::measure::calibrate::{block_bytes, SparsityProfile};
use qsparse::model::{self, WeightFormat};
use qsparse::synthetic::{write_bitnet, BitnetOptions, BitnetShape};

fn qsparse(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_qsparse"))
        .args(args)
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn write_model(path: &Path, seed_activation: Option<&str>) {
    let tokenizer = GgufFile::open(common::smollm2()).unwrap();
    let options = BitnetOptions {
        activation: seed_activation.map(str::to_string),
        f32_projections: false,
        ..Default::default()
    };
    write_bitnet(path, BitnetShape::SMALL, &tokenizer, &options).unwrap();
}

/// The command failed with exit 1 and said `needle`.
fn assert_fails_saying(o: &Output, needle: &str) {
    assert_eq!(o.status.code(), Some(1), "{}", stderr(o));
    assert!(stderr(o).contains(needle), "{needle}: {}", stderr(o));
}

/// `qsparse calibrate` at S = 0.5 on 64 tokens of the model's own text into `out`; its JSON.
fn calibrate_profile(model: &str, out: &Path) -> String {
    let o = qsparse(&[
        "calibrate",
        "-m",
        model,
        "--sparsity",
        "0.5",
        "--tokens",
        "64",
        "--ctx",
        "32",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    std::fs::read_to_string(out).unwrap()
}

fn ppl(model: &str, extra: &[&str]) -> f64 {
    let text = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/english.txt");
    let o = qsparse(
        &[
            &["perplexity", "-m", model, "-f", text.to_str().unwrap()][..],
            &["--ctx", "32", "--chunks", "2", "--json"],
            extra,
        ]
        .concat(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    j["ppl"].as_f64().unwrap()
}

#[test]
fn a_calibrated_profile_reads_uniform_bytes_and_is_used() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("small.gguf");
    write_model(&m, None);
    let ms = m.to_str().unwrap();
    let calibrate = |out: &Path| calibrate_profile(ms, out);
    let (a, b) = (dir.path().join("a.json"), dir.path().join("b.json"));
    let text = calibrate(&a);
    assert_eq!(text, calibrate(&b), "calibration is deterministic");
    let profile: SparsityProfile = serde_json::from_str(&text).unwrap();
    let (model, _) = model::load(&m, WeightFormat::Ternary, &|_, _| {}).unwrap();
    let uniform = block_bytes(&model, &vec![[0.5; 4]; profile.layers.len()]) as f64;
    let profiled = block_bytes(&model, &profile.layers) as f64;
    assert!(
        (profiled / uniform - 1.0).abs() <= 0.01,
        "{profiled} vs {uniform}"
    );

    // The run uses the profile: extreme ratios change the perplexity, the file's own runs.
    let mut extreme = profile.clone();
    for r in &mut extreme.layers {
        *r = [0.9, 0.9, 0.9, 0.9];
    }
    let e = dir.path().join("extreme.json");
    std::fs::write(&e, serde_json::to_string(&extreme).unwrap()).unwrap();
    let (with, with_extreme) = (
        ppl(ms, &["--sparsity-profile", a.to_str().unwrap()]),
        ppl(ms, &["--sparsity-profile", e.to_str().unwrap()]),
    );
    assert!(
        with.is_finite() && with != with_extreme,
        "{with} vs {with_extreme}"
    );
    assert_eq!(with_extreme, ppl(ms, &["--sparsity", "0.9"]));

    // Profiles that do not fit are refused, naming why; --sparsity and a profile conflict.
    let other = dir.path().join("other.gguf");
    write_model(&other, Some("relu2"));
    let refused = |profile: &str, model: &str, needle: &str| {
        let p = dir.path().join("bad.json");
        std::fs::write(&p, profile).unwrap();
        let text = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/english.txt");
        let o = qsparse(&[
            "perplexity",
            "-m",
            model,
            "-f",
            text.to_str().unwrap(),
            "--sparsity-profile",
            p.to_str().unwrap(),
        ]);
        assert_eq!(o.status.code(), Some(1), "{needle}: {}", stderr(&o));
        assert!(stderr(&o).contains(needle), "{needle}: {}", stderr(&o));
    };
    refused(&text, other.to_str().unwrap(), "calibrated for");
    refused("{not json", ms, "not a sparsity profile");
    refused(&text[..text.len() / 2], ms, "not a sparsity profile");
    let mut bad = profile.clone();
    bad.layers[1][2] = 1.5;
    refused(
        &serde_json::to_string(&bad).unwrap(),
        ms,
        "layers[1]: ratio 1.5",
    );
    let mut short = profile.clone();
    short.layers.pop();
    refused(&serde_json::to_string(&short).unwrap(), ms, "entries for");
    let o = qsparse(&[
        "generate",
        "-m",
        ms,
        "-p",
        "hi",
        "--sparsity",
        "0.5",
        "--sparsity-profile",
        a.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

/// `sweep` measures methods side by side (a row each, named), a calibrated profile at uniform
/// S's bytes with the perplexity `perplexity --sparsity-profile` gives; `pack
/// --sparsity-profile` stores a profile the packed file then runs with unless told otherwise.
#[test]
fn sweep_compares_methods_and_pack_keeps_a_profile() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("small.gguf");
    write_model(&m, None);
    let ms = m.to_str().unwrap();
    let profile = dir.path().join("s50.json");
    calibrate_profile(ms, &profile);
    let text = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/english.txt");
    let o = qsparse(&[
        "sweep",
        "-m",
        ms,
        "-f",
        text.to_str().unwrap(),
        "--sparsity",
        "0.5",
        "--select",
        "magnitude,weighted",
        "--sparsity-profile",
        profile.to_str().unwrap(),
        "--tokens",
        "64",
        "--ctx",
        "32",
        "--runs",
        "1",
        "--prompt-tokens",
        "4",
        "--gen-tokens",
        "4",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let rows = j["rows"].as_array().unwrap();
    let methods: Vec<&str> = rows.iter().map(|r| r["method"].as_str().unwrap()).collect();
    assert_eq!(methods, ["dense", "magnitude", "weighted", "calibrated"]);
    let bytes = |i: usize| rows[i]["weight_bytes_per_token"].as_f64().unwrap();
    assert_eq!(bytes(1), bytes(2), "the same K, the same bytes");
    assert!(
        (bytes(3) / bytes(1) - 1.0).abs() <= 0.01,
        "{} vs {}",
        bytes(3),
        bytes(1)
    );
    assert_eq!(rows[3]["profile"], profile.to_str().unwrap());
    let ppl_of = |i: usize| rows[i]["ppl"].as_f64().unwrap();
    assert!((ppl_of(0) - ppl(ms, &[])).abs() < 1e-6 * ppl_of(0));
    let calibrated = ppl(ms, &["--sparsity-profile", profile.to_str().unwrap()]);
    assert!(
        (ppl_of(3) - calibrated).abs() < 1e-6 * calibrated,
        "{} vs {calibrated}",
        ppl_of(3)
    );
    assert_ne!(ppl_of(1), ppl_of(2), "weighted selects other inputs");

    // Calibrating on the evaluated text is refused; one --select only outside sweep.
    let o = qsparse(&[
        "sweep",
        "-m",
        ms,
        "-f",
        text.to_str().unwrap(),
        "--calibrated",
        "--calibration-file",
        text.to_str().unwrap(),
        "--sparsity",
        "0.5",
        "--tokens",
        "64",
        "--ctx",
        "32",
    ]);
    assert_fails_saying(&o, "is the evaluated text");
    let o = qsparse(&[
        "generate",
        "-m",
        ms,
        "-p",
        "hi",
        "--select",
        "magnitude,weighted",
    ]);
    assert_fails_saying(&o, "--select takes one method");

    // A packed file keeps its profile: runs use it by default (as the profile runs the source),
    // --sparsity overrides it; a profile for another file is refused at pack time.
    let mut extreme: SparsityProfile =
        serde_json::from_str(&std::fs::read_to_string(&profile).unwrap()).unwrap();
    for r in &mut extreme.layers {
        *r = [0.9, 0.2, 0.9, 0.2];
    }
    let e = dir.path().join("extreme.json");
    std::fs::write(&e, serde_json::to_string(&extreme).unwrap()).unwrap();
    let packed = dir.path().join("packed.gguf");
    let o = qsparse(&[
        "pack",
        "-m",
        ms,
        "--sparsity-profile",
        e.to_str().unwrap(),
        "-o",
        packed.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let ps = packed.to_str().unwrap();
    let with_profile = ppl(ms, &["--sparsity-profile", e.to_str().unwrap()]);
    assert_eq!(ppl(ps, &[]), with_profile);
    assert_ne!(with_profile, ppl(ms, &["--sparsity", "0.5"]));
    assert_eq!(ppl(ps, &["--sparsity", "0"]), ppl(ms, &[]));
    assert_eq!(
        ppl(ps, &["--sparsity", "0.5"]),
        ppl(ms, &["--sparsity", "0.5"])
    );
    let other = dir.path().join("other.gguf");
    write_model(&other, Some("relu2"));
    let refused = dir.path().join("refused.gguf");
    let o = qsparse(&[
        "pack",
        "-m",
        other.to_str().unwrap(),
        "--sparsity-profile",
        e.to_str().unwrap(),
        "-o",
        refused.to_str().unwrap(),
    ]);
    assert_fails_saying(&o, "calibrated for");
    assert!(!refused.exists());
}
