//! The model-running commands end to end on the real model: output shape, and clear errors with
//! the right exit codes for bad input.

mod common;

use std::process::{Command, Output};

use common::qsparse;

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn generate_json_starts_like_llama_cpp() {
    let o = qsparse(&[
        "generate",
        "-p",
        "The capital of France is",
        "-n",
        "4",
        "--temp",
        "0",
        "--repeat-penalty",
        "1",
        "--json",
        "--logprobs",
        "3",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    // llama.cpp's greedy first token after this prompt is " Paris" (id 7042; see the fixture).
    assert_eq!(j["generated_tokens"][0], 7042);
    assert!(j["text"].as_str().unwrap().starts_with(" Paris"));
    assert_eq!(j["logprobs"][0].as_array().unwrap().len(), 3);
    assert!(j["timings"]["decode_tok_s"].as_f64().unwrap() > 0.0);
}

/// `--select weighted` reaches the forward pass: at S = 0.5 the first step's log-probabilities
/// differ from magnitude selection's, and dense (S = 0, every input kept) they are the same.
#[test]
fn the_selection_flag_changes_the_sparse_products_only() {
    let first_step = |select: &str, sparsity: &str| -> serde_json::Value {
        let o = qsparse(&[
            "generate",
            "-p",
            "The capital of France is",
            "-n",
            "1",
            "--temp",
            "0",
            "--json",
            "--logprobs",
            "5",
            "--sparsity",
            sparsity,
            "--select",
            select,
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        j["logprobs"][0].clone()
    };
    assert_ne!(
        first_step("magnitude", "0.5"),
        first_step("weighted", "0.5")
    );
    assert_eq!(first_step("magnitude", "0"), first_step("weighted", "0"));
    let o = qsparse(&["generate", "-p", "Hi", "--select", "largest"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

#[test]
fn generate_streams_only_the_text_to_stdout() {
    let o = qsparse(&[
        "generate",
        "-p",
        "The capital of France is",
        "-n",
        "3",
        "--temp",
        "0",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8(o.stdout.clone()).unwrap();
    assert!(out.starts_with(" Paris"), "{out:?}");
    assert!(
        !out.contains("tok/s"),
        "diagnostics leaked into stdout: {out:?}"
    );
    assert!(stderr(&o).contains("tok/s"));
}

#[test]
fn bad_input_is_refused_clearly() {
    let o = qsparse(&["generate", "-p", ""]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("prompt is empty"), "{}", stderr(&o));

    let o = qsparse(&["generate", "-p", "hi", "--sparsity", "1.0"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("outside [0, 1)"), "{}", stderr(&o));

    let o = qsparse(&[
        "generate",
        "-p",
        "one two three four",
        "--ctx",
        "4",
        "-n",
        "8",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("exceed the context"), "{}", stderr(&o));

    let o = qsparse(&["perplexity", "-f", "/no/such/text.txt"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("/no/such/text.txt"));

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.txt");
    std::fs::write(&bad, b"ok \xff\xfe not utf8").unwrap();
    let o = qsparse(&["perplexity", "-f", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("not valid UTF-8"), "{}", stderr(&o));

    let o = qsparse(&["bench", "--gen-tokens", "0"]);
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn scaling_recommends_the_papers_sparsity_for_the_weight_type() {
    // SmolLM2 (Q4_1): the full-precision fit; the budget defaults to what its dense form reads.
    let o = qsparse(&["scaling", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let fit = &j["fits"][0];
    assert_eq!(fit["precision"], "full-precision");
    assert_eq!(fit["optimal_sparsity"], 0.4558);
    let block = fit["model"]["block_linear_params"].as_f64().unwrap();
    let head = fit["model"]["lm_head_params"].as_f64().unwrap();
    // 30 layers x (576x576 q, o + 576x192 k, v + 3 x 576x1536); the tied 49152x576 embedding.
    assert_eq!(
        block,
        30.0 * (2.0 * 576.0 * 576.0 + 2.0 * 576.0 * 192.0 + 3.0 * 576.0 * 1536.0)
    );
    assert_eq!(head, 49152.0 * 576.0);
    assert_eq!(j["budget_active_params"].as_f64(), Some(block + head));

    // A file with ternary projections gets the 1.58-bit fit.
    use qsparse::gguf::{GgmlType, GgufWriter};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ternary.gguf");
    let mut w = GgufWriter::new();
    w.add_kv("general.architecture", "llama");
    w.add_tensor("blk.0.ffn_up.weight", GgmlType::TQ2_0, &[256, 4]);
    w.add_tensor("token_embd.weight", GgmlType::F32, &[256, 8]);
    let sizes: Vec<u64> = w.tensors().iter().map(|t| t.n_bytes().unwrap()).collect();
    w.write_file(&path, |i, _, out| {
        out.write_all(&vec![0u8; sizes[i] as usize])
    })
    .unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_qsparse"))
        .args([
            "scaling",
            "--json",
            "--budget",
            "2.9B",
            "-m",
            path.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["fits"][0]["precision"], "ternary");
    assert_eq!(j["fits"][0]["optimal_sparsity"], 0.6125);
    assert_eq!(j["budget_active_params"].as_f64(), Some(2.9e9));

    let o = qsparse(&["scaling", "--budget", "lots"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("not a parameter count"));
}

/// Sampling and count flags are checked before loading: out-of-range values (negative ones
/// included, with or without `=`) exit 2 naming the flag; `--logprobs` needs `--json`.
#[test]
fn out_of_range_flags_exit_2_naming_the_flag() {
    for (args, flag) in [
        (&["--temp", "-1"][..], "--temp"),
        (&["--temp=-1"][..], "--temp"),
        (&["--top-p", "1.5"][..], "--top-p"),
        (&["--top-p", "0"][..], "--top-p"),
        (&["--min-p", "-0.1"][..], "--min-p"),
        (&["--repeat-penalty", "0"][..], "--repeat-penalty"),
        (&["--seed", "-2"][..], "--seed"),
        (&["-n", "0"][..], "--n-predict"),
        (&["-t", "0"][..], "--threads"),
        (&["--logprobs", "3"][..], "--json"),
    ] {
        let o = qsparse(&[&["generate", "-p", "hi"][..], args].concat());
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(flag), "{args:?}: {}", stderr(&o));
    }
}

/// The seed is fresh each run unless given (and reported with --json); a given seed reproduces
/// the text; the prompt can come from standard input; -n -1 runs to the end of the sequence or
/// of the context.
#[test]
fn seeds_prompts_from_stdin_and_unbounded_generation() {
    let run = |extra: &[&str]| -> serde_json::Value {
        let o = qsparse(&[&["generate", "-p", "Once upon a time", "--json"][..], extra].concat());
        assert!(o.status.success(), "{}", stderr(&o));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let (a, b) = (run(&["-n", "8"]), run(&["-n", "8", "--seed", "-1"]));
    assert_ne!(a["seed"], b["seed"]);
    let (c, d) = (
        run(&["-n", "8", "--seed", "7"]),
        run(&["-n", "8", "--seed", "7"]),
    );
    assert_eq!((c["seed"].as_u64(), &c["text"]), (Some(7), &d["text"]));

    let model = common::smollm2();
    let o = common::qsparse_with_stdin(
        &[
            "generate",
            "-m",
            model.to_str().unwrap(),
            "-p",
            "-",
            "-n",
            "2",
            "--temp",
            "0",
            "--json",
        ],
        b"The capital of France is",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["generated_tokens"][0], 7042, "{j}");

    // A 16-token context, no limit: generation ends at the context's end or the sequence's.
    let j = run(&["--ctx", "16", "-n", "-1", "--temp", "0"]);
    let used = j["prompt_tokens"].as_array().unwrap().len()
        + j["generated_tokens"].as_array().unwrap().len();
    assert!(used <= 16, "{j}");
    assert!(
        j["finish_reason"] == "length" || j["finish_reason"] == "stop",
        "{j}"
    );
}

fn inspect(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_qsparse"))
        .arg("inspect")
        .args(args)
        .output()
        .unwrap()
}

/// `inspect` of a file cut short shows what its header holds (the whole tensors, the metadata)
/// and names the tensors whose data is missing, then exits 1 naming the first.
#[test]
fn inspect_shows_the_header_of_a_truncated_file_and_fails() {
    let bytes = std::fs::read(common::smollm2()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cut = dir.path().join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() * 9 / 10]).unwrap();
    let o = inspect(&[cut.to_str().unwrap(), "--json"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["architecture"], "llama");
    let missing = j["truncated_tensors"].as_array().unwrap();
    assert!(!missing.is_empty());
    let first = missing[0].as_str().unwrap();
    assert!(stderr(&o).contains(first), "{first}: {}", stderr(&o));
    assert!(stderr(&o).contains("past the end"), "{}", stderr(&o));
    let whole = j["tensor_count"].as_u64().unwrap() as usize;
    let all = inspect(&[common::smollm2().to_str().unwrap(), "--json"]);
    let all: serde_json::Value = serde_json::from_slice(&all.stdout).unwrap();
    assert_eq!(
        whole + missing.len(),
        all["tensor_count"].as_u64().unwrap() as usize
    );
    let o = inspect(&[cut.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stdout).contains("TRUNCATED"));
}

/// `qsparse list` shows the models of the models directory ($QSPARSE_MODELS), by manifest name
/// where they have one; an empty directory says how to get one.
#[test]
fn list_shows_the_models_directory() {
    let dir = tempfile::tempdir().unwrap();
    let list = |json: bool| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_qsparse"));
        c.arg("list").env("QSPARSE_MODELS", dir.path());
        if json {
            c.arg("--json");
        }
        c.output().unwrap()
    };
    let o = list(false);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("no models in"));
    let model = common::smollm2();
    std::os::unix::fs::symlink(&model, dir.path().join(model.file_name().unwrap())).unwrap();
    std::fs::write(dir.path().join("broken.gguf"), b"GGUF").unwrap();
    let o = list(true);
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let models = j["models"].as_array().unwrap();
    assert_eq!(models.len(), 2);
    let real = models
        .iter()
        .find(|m| m["name"] == "smollm2-135m-instruct")
        .unwrap();
    assert_eq!(real["architecture"], "llama");
    assert!(real["parameters"].as_u64().unwrap() > 100_000_000);
    let broken = models.iter().find(|m| m["file"] == "broken.gguf").unwrap();
    assert!(broken["error"].as_str().is_some());
}

/// A model pulled once is found by name from any directory (one store, not the current one).
#[test]
fn a_pulled_model_is_found_from_any_directory() {
    common::smollm2();
    let elsewhere = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_qsparse"))
        .args(["inspect", "smollm2-135m-instruct", "--json"])
        .current_dir(elsewhere.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["architecture"], "llama");
}

#[test]
fn bench_profiles_decode_steps_and_batched_prompt_steps_apart() {
    let o = qsparse(&[
        "bench",
        "--prompt-tokens",
        "9",
        "--gen-tokens",
        "2",
        "--runs",
        "1",
        "--profile",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let us = |section: &str, phase: &str| {
        j[section]
            .as_array()
            .unwrap_or_else(|| panic!("{section}: {j}"))
            .iter()
            .find(|r| r["phase"] == phase)
            .unwrap()["us_per_token"]
            .as_f64()
            .unwrap()
    };
    // Single-token passes compute logits; a batched pass of the prompt's first 8 tokens does not.
    assert!(us("profile", "lm_head matvec") > 0.0, "{j}");
    assert_eq!(us("prompt_profile", "lm_head matvec"), 0.0, "{j}");
    assert!(us("prompt_profile", "gate/up matvec") > 0.0, "{j}");
}
