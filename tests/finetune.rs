//! `qsparse finetune` on small models (the first two blocks of the real SmolLM2, and a synthetic
//! BitNet): the trainer's forward equals the runtime's, a short run lowers the loss and writes a
//! model every command runs, a stopped run resumes with the same steps, bad input is refused
//! with nothing written, and Ctrl-C leaves a checkpoint.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use qsparse::gguf::{GgufFile, GgufWriter, MetaValue};
use qsparse::model::{self, RunState, Sparsity, WeightFormat};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_qsparse"))
}

/// Run qsparse with `args`; it must succeed.
fn succeed<S: AsRef<std::ffi::OsStr>>(args: impl IntoIterator<Item = S>) -> Output {
    let out = bin().args(args).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    out
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The first `layers` blocks of the real SmolLM2 (its embedding, norms and tokenizer): a model
/// that trains in seconds and still reads real text.
fn truncated_smollm2(path: &Path, layers: usize) {
    let src = GgufFile::open(common::smollm2()).unwrap();
    let mut w = GgufWriter::new();
    for (key, value) in src.metadata() {
        match key {
            "llama.block_count" => w.add_kv(key, MetaValue::U32(layers as u32)),
            "general.alignment" => &mut w,
            _ => w.add_kv(key, value.to_owned_value()),
        };
    }
    let keep: Vec<_> = src
        .tensors()
        .iter()
        .filter(|t| match t.name.strip_prefix("blk.") {
            Some(rest) => rest.split('.').next().unwrap().parse::<usize>().unwrap() < layers,
            None => true,
        })
        .cloned()
        .collect();
    for t in &keep {
        w.add_tensor(t.name.clone(), t.ty, &t.dims);
    }
    w.write_file(path, |i, _, sink| sink.write_all(src.tensor_data(&keep[i])))
        .unwrap();
}

/// Training text that is no evaluation text: the project's own documentation.
fn training_text(dir: &Path) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut text = String::new();
    for doc in [
        "README.md",
        "docs/usage.md",
        "docs/architecture.md",
        "docs/quality.md",
    ] {
        text.push_str(&std::fs::read_to_string(root.join(doc)).unwrap());
    }
    let path = dir.join("train.txt");
    std::fs::write(&path, text).unwrap();
    path
}

/// A short run's flags: 64-token sequences, 2 a step.
fn small_run(model: &Path, data: &Path, out: &Path, steps: u64) -> Vec<String> {
    [
        "finetune",
        "-m",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--sparsity",
        "0.5",
        "--seq",
        "64",
        "--batch",
        "2",
        "--lr",
        "1e-3",
        "--warmup",
        "2",
        "--eval-every",
        "10",
        "--eval-tokens",
        "128",
        "--projections",
        "f16",
        "--no-install",
        "-t",
        "2",
        "--tokens",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([(steps * 128).to_string()])
    .collect()
}

/// A sparsity profile (as `calibrate` writes it) of S = 0.5 with these per-layer ratios, for the
/// model file whose sha256 is `sha`.
fn profile_json(sha: &str, layers: &[[f32; 4]]) -> serde_json::Value {
    serde_json::json!({
        "version": 1, "model": "tiny.gguf", "model_sha256": sha, "sparsity": 0.5,
        "select": "magnitude", "calibration_text": "generated", "calibration_tokens": 64,
        "layers": layers,
    })
}

/// A run's flags with `--sparsity S` replaced by `--sparsity-profile profile`.
fn with_profile(mut args: Vec<String>, profile: &Path) -> Vec<String> {
    let at = args.iter().position(|a| a == "--sparsity").unwrap();
    args.splice(
        at..at + 2,
        [
            "--sparsity-profile".to_string(),
            profile.display().to_string(),
        ],
    );
    args
}

/// `sweep --json` of `model` at S = 0.5 on a few tokens (and `extra` flags); it must succeed.
fn quick_sweep(model: &Path, extra: &[&str]) -> serde_json::Value {
    let out = succeed(
        [
            "sweep",
            "-m",
            model.to_str().unwrap(),
            "--sparsity",
            "0.5",
            "--tokens",
            "64",
            "--runs",
            "1",
            "--prompt-tokens",
            "4",
            "--gen-tokens",
            "4",
            "--json",
        ]
        .iter()
        .chain(extra),
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn log_losses(work: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(work.join("log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter_map(|v| Some((v["step"].as_u64()?, v.get("loss")?.as_f64()?)))
        .collect()
}

fn work_dir(out: &Path) -> PathBuf {
    PathBuf::from(format!("{}.work", out.display()))
}

/// A temp dir holding the first `layers` blocks of SmolLM2 and the training text.
struct Setup {
    dir: tempfile::TempDir,
    model: PathBuf,
    data: PathBuf,
}

fn setup(layers: usize) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny.gguf");
    truncated_smollm2(&model, layers);
    let data = training_text(dir.path());
    Setup { dir, model, data }
}

impl Setup {
    /// The flags of a short run of `steps` steps writing `name` in the temp dir.
    fn run_args(&self, name: &str, steps: u64) -> (Vec<String>, PathBuf) {
        let out = self.dir.path().join(name);
        (small_run(&self.model, &self.data, &out, steps), out)
    }

    /// A short run of `steps` steps (and `extra` flags) writing `name`; it must succeed.
    fn train(&self, name: &str, steps: u64, extra: &[&str]) -> PathBuf {
        let (args, out) = self.run_args(name, steps);
        let run = bin().args(args).args(extra).output().unwrap();
        assert!(run.status.success(), "{}", stderr(&run));
        out
    }
}

#[test]
fn a_short_run_lowers_the_loss_and_writes_a_model_every_command_runs() {
    let s = setup(2);
    let (dir, model) = (&s.dir, &s.model);
    let out = s.train("tuned.gguf", 20, &[]);
    let losses = log_losses(&work_dir(&out));
    assert_eq!(losses.len(), 20, "{losses:?}");
    let mean = |s: &[(u64, f64)]| s.iter().map(|l| l.1).sum::<f64>() / s.len() as f64;
    let (first, last) = (mean(&losses[..5]), mean(&losses[15..]));
    assert!(last < first - 0.1, "loss {first:.3} -> {last:.3}");

    let file = GgufFile::open(&out).unwrap();
    assert_eq!(file.get_f32("qsparse.finetune.sparsity").unwrap(), 0.5);
    assert_eq!(file.get_u64("qsparse.finetune.tokens").unwrap(), 20 * 128);
    assert_eq!(file.get_str("qsparse.finetune.method").unwrap(), "topk-ste");
    assert!(file.get("tokenizer.chat_template").is_some());
    let p = out.to_str().unwrap();
    succeed(["inspect", p, "--json"]);
    let generate = bin()
        .args([
            "generate",
            "-m",
            p,
            "-p",
            "The",
            "-n",
            "4",
            "--temp",
            "0",
            "--sparsity",
            "0.5",
        ])
        .output()
        .unwrap();
    assert!(generate.status.success(), "{}", stderr(&generate));
    // sweep --reference compares the tuned model with the model it was tuned from.
    let own = quick_sweep(&out, &[]);
    assert_eq!(own["rows"][0]["kl"].as_f64(), Some(0.0));
    let against = quick_sweep(&out, &["--reference", model.to_str().unwrap()]);
    assert!(
        against["rows"][0]["kl"].as_f64().unwrap() > 0.0,
        "{against}"
    );
    assert!(against["reference_ppl"].as_f64().unwrap() > 1.0);
    // --report reads the run's log: its evaluations, and a plot.
    let plot = dir.path().join("recovery.svg");
    let work = work_dir(&out);
    let report = succeed(
        [
            "finetune",
            "--json",
            "--plot",
            plot.to_str().unwrap(),
            "--report",
        ]
        .into_iter()
        .chain([work.to_str().unwrap()]),
    );
    let runs: serde_json::Value = serde_json::from_slice(&report.stdout).unwrap();
    assert_eq!(runs[0]["evals"].as_array().unwrap().len(), 3, "{runs}");
    assert!(std::fs::metadata(&plot).unwrap().len() > 1000);
    let packed = dir.path().join("packed.gguf");
    succeed(["pack", "-m", p, "-o", packed.to_str().unwrap()]);
}

#[test]
fn a_stopped_run_resumes_with_the_steps_an_uninterrupted_one_takes() {
    let s = setup(2);
    let whole = s.train("whole.gguf", 6, &[]);
    let parts = s.train("parts.gguf", 6, &["--stop-at", "3"]);
    assert!(!parts.exists(), "a stopped run writes no model");
    let work = work_dir(&parts);
    succeed([
        "finetune",
        "--no-install",
        "--resume",
        work.to_str().unwrap(),
    ]);
    assert!(parts.exists());
    let (a, b) = (log_losses(&work_dir(&whole)), log_losses(&work));
    assert_eq!(a.len(), 6);
    assert_eq!(b.len(), 6, "{b:?}");
    for ((sa, la), (sb, lb)) in a.iter().zip(&b) {
        assert_eq!(sa, sb);
        assert!(
            (la - lb).abs() <= 1e-4 * la.abs(),
            "step {sa}: {la} vs {lb}"
        );
    }
}

/// Next-token logits of the runtime (f32 weights) for `ids` at `s`, or at per-layer ratios.
fn runtime_logits(path: &Path, ids: &[u32], s: f32, layers: Option<&[[f32; 4]]>) -> Vec<Vec<f32>> {
    let (m, _) = model::load(path, WeightFormat::F32, &|_, _| {}).unwrap();
    let mut state = RunState::new(&m.config, WeightFormat::F32, ids.len());
    state.set_layer_ratios(layers.map(|l| l.to_vec().into()));
    let sparsity = Sparsity::uniform(s);
    let mut rows = Vec::new();
    for (pos, &t) in ids.iter().enumerate() {
        m.forward(&mut state, t, pos, sparsity).unwrap();
        rows.push(state.logits().to_vec());
    }
    rows
}

/// The trainer's logits for `ids` at `s` (or, with `profile`, the job's per-layer ratios) from
/// the job in `work` (f32, no autocast).
fn trainer_logits(work: &Path, ids: &[u32], s: f32, profile: bool, vocab: usize) -> Vec<Vec<f32>> {
    let ids_path = work.join("ids.u32");
    let bytes: Vec<u8> = ids.iter().flat_map(|t| t.to_le_bytes()).collect();
    std::fs::write(&ids_path, bytes).unwrap();
    let out_path = work.join("logits.f32");
    let out = Command::new("python3")
        .arg(work.join("qsparse_train.py"))
        .args(["logits", work.to_str().unwrap(), ids_path.to_str().unwrap()])
        .arg(&out_path)
        .args(["--sparsity", &s.to_string()])
        .args(profile.then_some("--profile"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let raw = std::fs::read(&out_path).unwrap();
    let all: Vec<f32> = raw
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    all.chunks(vocab).map(|r| r.to_vec()).collect()
}

fn argmax(v: &[f32]) -> usize {
    (0..v.len()).fold(0, |b, i| if v[i] > v[b] { i } else { b })
}

/// The trainer's forward (f32 activations) and the runtime's (--weights f32) on the same
/// weights. Dense: the same next token everywhere, logits within 1e-3 of the logit range. At
/// S = 0.5 the two can keep different inputs where two magnitudes lie within the forwards'
/// rounding differences (~1e-4 relative; the cache then differs for every later token), so: the
/// first token within the same bound, and the same next token at `min_agree` of the positions.
fn assert_parity(model_path: &Path, dir: &Path, min_agree: f64) {
    assert_parity_at(model_path, dir, min_agree, None)
}

/// [`assert_parity`], with `layers` (a profile's ratios) in place of uniform S = 0.5.
fn assert_parity_at(model_path: &Path, dir: &Path, min_agree: f64, layers: Option<&[[f32; 4]]>) {
    let data = training_text(dir);
    let out = dir.join("parity.gguf");
    let mut args = small_run(model_path, &data, &out, 2);
    args.extend(["--stop-at", "1", "--activations", "f32"].map(String::from));
    if let Some(layers) = layers {
        let sha = qsparse::hub::sha256_file(model_path).unwrap();
        let path = dir.join("parity-profile.json");
        std::fs::write(&path, profile_json(&sha, layers).to_string()).unwrap();
        args = with_profile(args, &path);
    }
    let run = bin().args(args).output().unwrap();
    assert!(run.status.success(), "{}", stderr(&run));
    let work = work_dir(&out);
    let file = GgufFile::open(model_path).unwrap();
    let tok = qsparse::tokenizer::Tokenizer::from_gguf(&file).unwrap();
    let ids = tok
        .encode(
            "The quick brown fox jumps over the lazy dog, and the dog did not mind at all. It \
             had seen many foxes before, most of them in a hurry, and it knew that a fox in a \
             hurry is no danger to a dog asleep in the sun.",
        )
        .unwrap();
    for s in [0.0f32, 0.5] {
        let layers = layers.filter(|_| s > 0.0);
        let a = runtime_logits(model_path, &ids, s, layers);
        let b = trainer_logits(&work, &ids, s, layers.is_some(), a[0].len());
        assert_eq!(a.len(), b.len());
        let mut agree = 0;
        for (pos, (x, y)) in a.iter().zip(&b).enumerate() {
            let range = x.iter().fold(0f32, |m, v| m.max(v.abs()));
            let diff = x.iter().zip(y).fold(0f32, |m, (p, q)| m.max((p - q).abs()));
            if s == 0.0 || pos == 0 {
                assert!(
                    diff <= 1e-3 * range,
                    "S {s} position {pos}: max |Δ| {diff} of {range}"
                );
                assert_eq!(argmax(x), argmax(y), "S {s} position {pos}");
            }
            agree += usize::from(argmax(x) == argmax(y));
        }
        let share = agree as f64 / a.len() as f64;
        assert!(
            share >= min_agree,
            "S {s}: the same next token at {agree} of {}",
            a.len()
        );
    }
}

#[test]
fn the_trainers_forward_equals_the_runtimes_llama() {
    let s = setup(2);
    assert_parity(&s.model, s.dir.path(), 0.9);
}

#[test]
fn the_trainers_forward_equals_the_runtimes_at_a_profiles_ratios() {
    let s = setup(2);
    let layers = [[0.3, 0.6, 0.2, 0.7], [0.6, 0.1, 0.5, 0.4]];
    assert_parity_at(&s.model, s.dir.path(), 0.9, Some(&layers));
}

#[test]
fn the_trainers_forward_equals_the_runtimes_bitnet() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("bitnet.gguf");
    let tokenizer = GgufFile::open(common::smollm2()).unwrap();
    let options = qsparse::synthetic::BitnetOptions {
        activation: Some("relu2".into()),
        f32_projections: true,
        ..Default::default()
    };
    qsparse::synthetic::write_bitnet(
        &model,
        qsparse::synthetic::BitnetShape::SMALL,
        &tokenizer,
        &options,
    )
    .unwrap();
    // Random ternary weights: a chaotic model, where one input kept differently changes much.
    assert_parity(&model, dir.path(), 0.75);
}

#[test]
fn straight_through_gradient_and_top_k_match_the_runtime_rule() {
    common::python_check("train_ste.py");
}

#[test]
fn bad_input_is_refused_and_nothing_is_written() {
    let s = setup(1);
    let (dir, model, data) = (&s.dir, s.model.clone(), s.data.clone());
    let out = dir.path().join("out.gguf");
    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, "  \n").unwrap();
    let short = dir.path().join("short.txt");
    std::fs::write(&short, "Too short to train on.").unwrap();
    let gpt2 = dir.path().join("gpt2.gguf");
    let mut w = GgufWriter::new();
    w.add_kv("general.architecture", MetaValue::String("gpt2".into()));
    w.write_file(&gpt2, |_, _, _| Ok(())).unwrap();
    let m = model.to_str().unwrap();
    // A run with one bad flag.
    let flag = |name: &str, value: &str| -> Vec<String> {
        let head = ["finetune", "-m", m, "--sparsity", "0.5", "-o", "x.gguf"];
        head.iter()
            .chain(&[name, value])
            .map(|a| a.to_string())
            .collect()
    };
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            small_run(&model, &dir.path().join("missing.txt"), &out, 2),
            "missing.txt",
        ),
        (small_run(&model, &empty, &out, 2), "empty"),
        (
            small_run(&model, &short, &out, 2),
            "fewer than one sequence",
        ),
        (small_run(&gpt2, &data, &out, 2), "gpt2"),
        (
            small_run(&model, &data, &dir.path().join("no/such/dir/out.gguf"), 2),
            "cannot write the output",
        ),
        (flag("--tokens", "0"), "--tokens"),
        (flag("--minutes", "0"), "minutes"),
        (
            [
                "finetune",
                "--no-install",
                "--resume",
                dir.path().to_str().unwrap(),
            ]
            .map(String::from)
            .to_vec(),
            "not a finetune job",
        ),
        (
            [
                &small_run(&model, &data, &out, 2)[..],
                &["--init".into(), "random".into(), "--distill".into()],
            ]
            .concat(),
            "a random model has none to teach",
        ),
        (
            [
                &small_run(&model, &data, &out, 2)[..],
                &["--layers".into(), "2".into()],
            ]
            .concat(),
            "need --init random",
        ),
        (
            [
                &small_run(&model, &data, &out, 2)[..],
                &[
                    "--init".into(),
                    "random".into(),
                    "--d-model".into(),
                    "60".into(),
                    "--heads".into(),
                    "8".into(),
                ],
            ]
            .concat(),
            "even head dimension",
        ),
        // A resumed run keeps its recipe: changing it is refused, not ignored.
        (
            ["finetune", "--resume", "some.work", "--lr", "0.1"]
                .map(String::from)
                .to_vec(),
            "--lr",
        ),
    ];
    for (args, says) in cases {
        let run = bin().args(&args).output().unwrap();
        let err = stderr(&run);
        assert!(!run.status.success(), "{args:?} succeeded");
        assert!(
            matches!(run.status.code(), Some(1 | 2)),
            "{args:?}: {:?}",
            run.status
        );
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(!out.exists(), "{args:?} wrote {}", out.display());
    }
}

#[test]
fn ctrl_c_leaves_a_checkpoint_and_no_model() {
    let s = setup(2);
    let (args, out) = s.run_args("out.gguf", 100_000);
    let mut child = bin()
        .args(args)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let work = work_dir(&out);
    let log = work.join("log.jsonl");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    // Wait for a training step or two (the first line is the evaluation before training).
    while std::fs::read_to_string(&log).map_or(0, |l| l.lines().count()) < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "no training step within 300 s"
        );
        assert!(child.try_wait().unwrap().is_none(), "finetune ended early");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let result = child.wait_with_output().unwrap();
    assert_eq!(result.status.code(), Some(130), "{}", stderr(&result));
    assert!(stderr(&result).contains("--resume"), "{}", stderr(&result));
    assert!(work.join("checkpoint.pt").is_file());
    assert!(!out.exists());
    let leftovers: Vec<_> = std::fs::read_dir(s.dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".qsparse-write-")
        })
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// `--init random` trains a new llama model from scratch (every tensor, embeddings included):
/// the loss falls from chance, and the model it writes has the asked shape and runs.
#[test]
fn a_model_trained_from_scratch_learns_and_runs() {
    let s = setup(1);
    let out = s.train(
        "scratch.gguf",
        40,
        &[
            "--init",
            "random",
            "--layers",
            "2",
            "--d-model",
            "64",
            "--d-ff",
            "128",
            "--heads",
            "2",
            "--kv-heads",
            "1",
        ],
    );
    let losses = log_losses(&work_dir(&out));
    let (first, last) = (losses[0].1, losses.last().unwrap().1);
    // Chance over SmolLM2's 49152 tokens is ln 49152 = 10.8 nats.
    assert!(first > 10.0 && last < first - 0.4, "{first} -> {last}");
    let file = GgufFile::open(&out).unwrap();
    assert_eq!(file.get_u64("llama.block_count").unwrap(), 2);
    assert_eq!(file.get_u64("llama.embedding_length").unwrap(), 64);
    assert_eq!(
        file.get_str("qsparse.finetune.method").unwrap(),
        "topk-ste-from-scratch"
    );
    let run = succeed([
        "generate",
        "-m",
        out.to_str().unwrap(),
        "-p",
        "The",
        "-n",
        "4",
        "--sparsity",
        "0.5",
    ]);
    assert!(!run.stdout.is_empty());
}

#[test]
fn a_run_with_a_sparsity_profile_trains_at_its_ratios_and_stores_it() {
    let s = setup(2);
    let sha = qsparse::hub::sha256_file(&s.model).unwrap();
    // Every ratio 0 under a profile that says S = 0.5: the run's perplexity "at S" before
    // training is then the dense one, which it would not be if the ratios were ignored.
    let zeros = [[0.0; 4]; 2];
    let path = s.dir.path().join("profile.json");
    std::fs::write(&path, profile_json(&sha, &zeros).to_string()).unwrap();
    let (args, out) = s.run_args("profiled.gguf", 2);
    let run = bin().args(with_profile(args, &path)).output().unwrap();
    assert!(run.status.success(), "{}", stderr(&run));
    let first: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(work_dir(&out).join("log.jsonl"))
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    let (at_s, dense) = (
        first["eval_ppl"].as_f64().unwrap(),
        first["eval_dense_ppl"].as_f64().unwrap(),
    );
    assert!((at_s - dense).abs() <= 1e-6 * dense, "{first}");

    let file = GgufFile::open(&out).unwrap();
    assert_eq!(file.get_f32("qsparse.finetune.sparsity").unwrap(), 0.5);
    let stored: serde_json::Value =
        serde_json::from_str(file.get_str(model::pack::KEY_SPARSITY_PROFILE).unwrap()).unwrap();
    assert_eq!(stored["layers"], profile_json(&sha, &zeros)["layers"]);
    // The output runs with the stored profile unless told otherwise.
    let generate = succeed([
        "generate",
        "-m",
        out.to_str().unwrap(),
        "-p",
        "The",
        "-n",
        "2",
    ]);
    assert!(
        stderr(&generate).contains("sparsity profile stored in the model"),
        "{}",
        stderr(&generate)
    );

    // sweep measures the model with its stored profile too.
    let sweep = quick_sweep(&out, &[]);
    let methods: Vec<&str> = sweep["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["method"].as_str())
        .collect();
    assert!(methods.contains(&"calibrated"), "{sweep}");

    // A profile made for another model file is refused before anything is written.
    std::fs::write(&path, profile_json(&"0".repeat(64), &zeros).to_string()).unwrap();
    let (args, out) = s.run_args("other.gguf", 2);
    let refused = bin().args(with_profile(args, &path)).output().unwrap();
    assert_eq!(refused.status.code(), Some(1), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("does not fit this model"),
        "{}",
        stderr(&refused)
    );
    assert!(!out.exists() && !work_dir(&out).exists());
}
