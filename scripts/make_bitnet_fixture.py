#!/usr/bin/env python3
"""llama.cpp's outputs (through llama-cpp-python) on the small `bitnet` model tests/bitnet.rs
writes, saved as tests/fixtures/bitnet_llamacpp.json so the test suite runs without llama.cpp.

    python3 scripts/make_bitnet_fixture.py     # installs llama-cpp-python (compiles llama.cpp) if needed

The model files come from the same writer the test uses (`qsparse::synthetic`, through
`--example bitnet_model`), so both sides use the same bytes; their sha256 go into the fixture and
the test checks the files it writes against them. Holds, for the model (TQ2_0 projections) and
its F32 form (the same values), per prompt: the prompt's token ids, the top-10 logits after it and
the greedy 8-token continuation (llama.cpp's CPU backend, 2 threads; make_fixtures.py's probe).
"""
import hashlib
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import import_llama_cpp, write_fixture  # noqa: E402
from make_fixtures import logits_and_greedy  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "bitnet_llamacpp.json")

PROMPTS = [
    "The capital of France is",
    "Once upon a time, there was a",
    "def fibonacci(n):",
    "1, 2, 3, 4, 5,",
]


def main():
    llama_cpp = import_llama_cpp()

    subprocess.check_call(["cargo", "run", "--release", "--quiet", "--", "pull"], cwd=ROOT)
    with tempfile.TemporaryDirectory() as tmp:
        model = os.path.join(tmp, "bitnet.gguf")
        model_f32 = os.path.join(tmp, "bitnet-f32.gguf")
        for path, extra in [(model, []), (model_f32, ["--f32"])]:
            subprocess.check_call(["cargo", "run", "--release", "--quiet", "--example", "bitnet_model",
                                   "--", path, *extra], cwd=ROOT)
        out = {"llama_cpp_python": llama_cpp.__version__}
        for path, sha_key, key in [(model, "model_sha256", "prompts"),
                                   (model_f32, "model_f32_sha256", "prompts_f32")]:
            with open(path, "rb") as f:
                out[sha_key] = hashlib.sha256(f.read()).hexdigest()
            out[key] = logits_and_greedy(path, PROMPTS, greedy=8)
    write_fixture(OUT, out)


if __name__ == "__main__":
    main()
