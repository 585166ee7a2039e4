//! `qsparse chat` as people and scripts use it, on the real model: through a pseudo-terminal
//! (tests/python/chat_pty.py types, reads the stream, interrupts a reply with Ctrl-C, quits with
//! Ctrl-D), and with piped stdin (one message per line, the KV cache reused across turns, the
//! oldest turns dropped when the context fills, /save writing a transcript).

mod common;

fn chat_piped(args: &[&str], input: &str) -> (String, String, bool) {
    let model = common::smollm2();
    let chat = ["chat", "-m", model.to_str().unwrap(), "--temp", "0"];
    let out = common::qsparse_with_stdin(&[&chat[..], args].concat(), input.as_bytes());
    (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.success(),
    )
}

#[test]
fn chat_in_a_terminal_streams_stops_on_ctrl_c_and_quits_on_ctrl_d() {
    common::python_check("chat_pty.py");
}

#[test]
fn piped_chat_answers_each_line_and_reuses_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let save = dir.path().join("talk.json");
    let input = format!(
        "What is the capital of France?\n/stats\nAnd of Germany?\n/stats\n/save {}\n",
        save.display()
    );
    let (out, err, ok) = chat_piped(&["--max-tokens", "24"], &input);
    assert!(ok, "{err}");
    assert!(out.contains("Paris"), "{out}");
    assert!(out.contains("Berlin"), "{out}");
    // The second turn evaluates only its new tokens: the first turn is still in the cache.
    let reused: Vec<usize> = out
        .lines()
        .filter_map(|l| l.split(" evaluated, ").nth(1))
        .map(|r| r.split(' ').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(reused.len(), 2, "{out}");
    assert_eq!(reused[0], 0);
    assert!(reused[1] > 30, "{out}");

    let t: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&save).unwrap()).unwrap();
    let msgs = t["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 4);
    assert_eq!(msgs[0]["role"], "user");
    assert_eq!(msgs[2]["content"], "And of Germany?");
    assert!(msgs[3]["content"].as_str().unwrap().contains("Berlin"));
}

#[test]
fn a_full_context_drops_the_oldest_turns_and_says_so() {
    let (out, err, ok) = chat_piped(
        &["--ctx", "160", "--max-tokens", "40"],
        "Tell me about cats.\nTell me about dogs.\nTell me about birds.\n",
    );
    assert!(ok, "{err}");
    assert_eq!(
        out.lines().filter(|l| !l.trim().is_empty()).count(),
        3,
        "{out}"
    );
    assert!(err.contains("oldest messages were dropped"), "{err}");
}

#[test]
fn bad_commands_and_flags_are_explained() {
    let (out, err, ok) = chat_piped(&[], "/sparsity 1.5\n/bogus\n/save\n/exit\nnever read\n");
    assert!(ok, "{err}");
    assert!(out.contains("outside [0, 1)"), "{out}");
    assert!(out.contains("unknown command /bogus"), "{out}");
    assert!(out.contains("/save needs a file name"), "{out}");
    assert!(!out.contains("never"), "{out}");

    let (_, err, ok) = chat_piped(&["--ctx", "1"], "");
    assert!(!ok);
    assert!(err.contains("--ctx 1 is outside"), "{err}");
}

/// `/sparsity` and `/system` without an argument show the current value; `/system -` removes
/// the message; `/bye` quits; a reply cut by --max-tokens says so.
#[test]
fn slash_commands_show_values_and_a_cut_reply_is_marked() {
    let (out, err, ok) = chat_piped(
        &["--sparsity", "0.25", "--system", "Be brief.", "--max-tokens", "3"],
        "/sparsity\n/system\n/system -\n/system\nWrite a long story about the sea.\n/bye\nnever read\n",
    );
    assert!(ok, "{err}");
    assert!(
        out.contains("(sparsity 0.25: each projection keeps the top 75%"),
        "{out}"
    );
    assert!(out.contains("(system message: Be brief.)"), "{out}");
    assert!(out.contains("(system message removed"), "{out}");
    assert!(out.contains("(no system message)"), "{out}");
    assert!(err.contains("(cut at --max-tokens 3)"), "{err}");
    assert!(!out.contains("never"), "{out}");
}

/// Chat runs with the profile it is given: a profile whose ratios are all 0 answers as the dense
/// model does though its nominal S is 0.5, unlike uniform S = 0.5; `/sparsity S` drops it and
/// `/sparsity FILE.json` loads one.
#[test]
fn chat_runs_with_its_sparsity_profile() {
    let model = common::smollm2();
    let profile = qsparse::measure::calibrate::SparsityProfile {
        version: 1,
        model: "SmolLM2-135M-Instruct.Q4_1.gguf".into(),
        model_sha256: qsparse::hub::sha256_file(&model).unwrap(),
        sparsity: 0.5,
        select: "magnitude".into(),
        calibration_text: "test".into(),
        calibration_tokens: 0,
        layers: vec![[0.0; 4]; 30],
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("zeros.json");
    std::fs::write(&path, serde_json::to_string(&profile).unwrap()).unwrap();
    let ask = "What is the capital of France?\n";
    let reply = |args: &[&str], input: &str| {
        let (out, err, ok) = chat_piped(&[&["--max-tokens", "12"][..], args].concat(), input);
        assert!(ok, "{err}");
        out
    };
    let profiled = reply(&["--sparsity-profile", path.to_str().unwrap()], ask);
    assert_eq!(profiled, reply(&[], ask));
    assert_ne!(profiled, reply(&["--sparsity", "0.5"], ask));
    // `/sparsity 0.5` goes back to uniform ratios.
    let input = format!("/sparsity 0.5\n{ask}");
    let switched = reply(&["--sparsity-profile", path.to_str().unwrap()], &input);
    let uniform = reply(&["--sparsity", "0.5"], ask);
    assert!(switched.ends_with(&uniform), "{switched:?} vs {uniform:?}");
    // `/sparsity FILE.json` loads a profile; one that does not fit is refused and changes nothing.
    let input = format!("/sparsity {}\n{ask}", path.display());
    let loaded = reply(&["--sparsity", "0.5"], &input);
    assert!(loaded.ends_with(&reply(&[], ask)), "{loaded:?}");
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{not json").unwrap();
    let input = format!("/sparsity {}\n{ask}", bad.display());
    let kept = reply(&["--sparsity", "0.5"], &input);
    assert!(kept.contains("not a sparsity profile"), "{kept:?}");
    assert!(kept.ends_with(&uniform), "{kept:?} vs {uniform:?}");
}

#[test]
fn a_message_of_several_lines_between_triple_quotes() {
    let dir = tempfile::tempdir().unwrap();
    let save = dir.path().join("talk.json");
    let input = format!(
        "\"\"\"Name the capital of\nFrance.\n\n  Answer in one word.\"\"\"\n\"\"\"And of Italy?\"\"\"\n/save {}\n",
        save.display()
    );
    let (out, err, ok) = chat_piped(&["--max-tokens", "8"], &input);
    assert!(ok, "{err}");
    let t: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&save).unwrap()).unwrap();
    let msgs = t["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 4, "{out}");
    assert_eq!(
        msgs[0]["content"],
        "Name the capital of\nFrance.\n\n  Answer in one word."
    );
    assert_eq!(msgs[2]["content"], "And of Italy?");
}
