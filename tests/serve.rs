//! `qsparse serve` driven by the official `openai` Python client (installed by scripts/test.sh)
//! against the real model on loopback: see tests/python/serve_openai.py for every step
//! (streaming and not, 8 concurrent clients, a disconnect mid-stream, bad requests, a full queue,
//! graceful shutdown), and under a minute of load and faults (tests/python/serve_load.py).

mod common;

#[test]
fn openai_client_against_the_server() {
    common::python_check("serve_openai.py");
}

/// 8 clients for 60 s of mixed requests and faults (tests/python/serve_load.py): every request
/// answered once and correctly or refused with 503, memory flat, the server well afterwards.
#[test]
fn the_server_under_load_and_faults() {
    common::python_check("serve_load.py");
}
