//! `qsparse serve` driven by the official `openai` Python client (installed by scripts/test.sh)
//! against the real model on loopback: see tests/python/serve_openai.py for every step
//! (streaming and not, 8 concurrent clients, a disconnect mid-stream, bad requests, a full queue,
//! graceful shutdown).

mod common;

#[test]
fn openai_client_against_the_server() {
    common::python_check("serve_openai.py");
}
