//! `qsparse serve` driven by the official `openai` Python client (installed by scripts/test.sh)
//! against the real model on loopback: see tests/python/serve_openai.py for every step
//! (streaming and not, 8 concurrent clients, a disconnect mid-stream, bad requests, a full queue,
//! graceful shutdown).

mod common;

use std::process::Command;

#[test]
fn openai_client_against_the_server() {
    let model = common::smollm2();
    let out = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/python/serve_openai.py"
        ))
        .arg(env!("CARGO_BIN_EXE_qsparse"))
        .arg(&model)
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{log}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(log.trim_end().ends_with("OK"), "{log}");
}
