//! `qsparse sweep` end to end on the real model: its figures agree with `perplexity` and `bench`
//! run separately, the reference row is the dense model, bytes fall with S, and every output
//! form (table, JSON, CSV, SVG) is produced.

mod common;

use std::process::Output;

use common::qsparse;

fn json(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// A small sweep: 2 windows of 32 tokens, a short speed run.
const SMALL: &[&str] = &[
    "--tokens",
    "64",
    "--ctx",
    "32",
    "--prompt-tokens",
    "4",
    "--gen-tokens",
    "4",
    "--runs",
    "1",
];

fn sweep(extra: &[&str]) -> Output {
    let mut args = vec!["sweep"];
    args.extend_from_slice(SMALL);
    args.extend_from_slice(extra);
    qsparse(&args)
}

#[test]
fn sweep_agrees_with_perplexity_and_bench() {
    let j = json(&sweep(&["--sparsity", "0.5", "--json"]));
    let rows = j["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "the dense reference is added");
    let (dense, sparse) = (&rows[0], &rows[1]);
    assert_eq!(dense["sparsity"].as_f64(), Some(0.0));
    assert_eq!(sparse["sparsity"].as_f64(), Some(0.5));
    assert_eq!(j["settings"]["n_predictions"], 62);
    assert!(j["machine"]["read_gb_s"].as_f64().unwrap() > 0.1);

    // The dense row compared with itself.
    assert_eq!(dense["top1_agreement"].as_f64(), Some(1.0));
    assert_eq!(dense["kl"].as_f64(), Some(0.0));
    assert!(sparse["kl"].as_f64().unwrap() > 0.0);

    // Perplexity: the same windows as `qsparse perplexity`, hence the same value.
    let text = concat!(env!("CARGO_MANIFEST_DIR"), "/data/english.txt");
    for (row, s) in [(dense, "0"), (sparse, "0.5")] {
        let p = json(&qsparse(&[
            "perplexity",
            "-f",
            text,
            "--ctx",
            "32",
            "--chunks",
            "2",
            "--sparsity",
            s,
            "--json",
        ]));
        assert_eq!(p["n_predictions"], 62);
        let (a, b) = (row["ppl"].as_f64().unwrap(), p["ppl"].as_f64().unwrap());
        assert!(
            (a - b).abs() <= 1e-9 * b,
            "S={s}: sweep {a} vs perplexity {b}"
        );
    }

    // Bytes per token: the same counters `bench` reports; half the linear-layer inputs at S=0.5
    // (the lm_head stays dense).
    for (row, s) in [(dense, "0"), (sparse, "0.5")] {
        let b = json(&qsparse(&[
            "bench",
            "--prompt-tokens",
            "2",
            "--gen-tokens",
            "2",
            "--runs",
            "1",
            "--sparsity",
            s,
            "--json",
        ]));
        assert_eq!(
            row["weight_bytes_per_token"], b["weight_bytes_per_token"],
            "S={s}"
        );
    }
    let bytes = |r: &serde_json::Value| r["weight_bytes_per_token"].as_f64().unwrap();
    let lm_head = |r: &serde_json::Value| {
        r["projections"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "lm_head")
            .unwrap()["weight_bytes_per_token"]
            .as_f64()
            .unwrap()
    };
    assert_eq!(lm_head(dense), lm_head(sparse));
    let linear_ratio = (bytes(sparse) - lm_head(sparse)) / (bytes(dense) - lm_head(dense));
    assert!((linear_ratio - 0.5).abs() < 0.01, "{linear_ratio}");
    let ideal = sparse["ideal_speedup"].as_f64().unwrap();
    assert!((ideal - bytes(dense) / bytes(sparse)).abs() < 1e-9);
    // Both speedups are reported; the ratio of medians is the two rows' decode speeds.
    assert_eq!(dense["speedup"].as_f64(), Some(1.0));
    let of_medians =
        sparse["decode_tok_s"].as_f64().unwrap() / dense["decode_tok_s"].as_f64().unwrap();
    assert!((sparse["speedup_of_medians"].as_f64().unwrap() - of_medians).abs() < 1e-9);
    assert!(sparse["speedup"].as_f64().unwrap() > 0.0);
}

#[test]
fn sweep_table_csv_and_plot() {
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("sweep.svg");
    let o = sweep(&[
        "--sparsity",
        "0.25,0.75",
        "--per-layer",
        "--plot",
        svg.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let table = String::from_utf8(o.stdout).unwrap();
    for s in ["0.00", "0.25", "0.75", "MB/token", "lm_head"] {
        assert!(table.contains(s), "{s} missing from\n{table}");
    }
    let figure = std::fs::read_to_string(&svg).unwrap();
    assert!(figure.starts_with("<svg") && figure.contains("perplexity"));

    let o = sweep(&["--sparsity", "0.5", "--csv"]);
    let csv = String::from_utf8(o.stdout).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 3, "{csv}");
    let header: Vec<&str> = lines[0].split(',').collect();
    assert!(header.contains(&"top1_agreement") && header.contains(&"ppl"));
    for l in &lines[1..] {
        assert_eq!(l.split(',').count(), header.len());
    }
}

#[test]
fn sweep_rejects_bad_flags_before_measuring() {
    for (args, needle) in [
        (vec!["--sparsity", "0.5,1.2"], "outside [0, 1)"),
        (vec!["--plot", "out.gif"], ".svg or .png"),
        (
            vec!["--tokens", "16", "--ctx", "32"],
            "less than one window",
        ),
    ] {
        let mut all = vec!["sweep"];
        all.extend(args);
        let o = qsparse(&all);
        assert!(!o.status.success());
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(needle), "{err}");
    }
}

/// Without --ctx, a short --tokens scores one window of all of them (the default window is 256).
#[test]
fn a_short_text_budget_picks_its_own_window() {
    let o = qsparse(&[
        "sweep",
        "--tokens",
        "64",
        "--sparsity",
        "0.5",
        "--runs",
        "1",
        "--prompt-tokens",
        "4",
        "--gen-tokens",
        "4",
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["settings"]["ctx"], 64, "{j}");
    assert_eq!(j["settings"]["n_predictions"], 63, "{j}");
}
