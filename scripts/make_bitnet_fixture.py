#!/usr/bin/env python3
"""llama.cpp's outputs (through llama-cpp-python) on the small `bitnet` model tests/bitnet.rs
writes, saved as tests/fixtures/bitnet_llamacpp.json so the test suite runs without llama.cpp.

    python3 scripts/make_bitnet_fixture.py     # installs llama-cpp-python (compiles llama.cpp) if needed

The model file comes from the test itself (`write_test_model`, an ignored test run with
QSPARSE_BITNET_MODEL set), so both sides use the same bytes; its sha256 goes into the fixture and
the test checks the files it writes against them. Holds, for the model (TQ2_0 projections) and
its F32 form (the same values), per prompt: the prompt's token ids, the top-10 logits after it and
the greedy 8-token continuation (llama.cpp's CPU backend, 2 threads).
"""
import hashlib
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "bitnet_llamacpp.json")

PROMPTS = [
    "The capital of France is",
    "Once upon a time, there was a",
    "def fibonacci(n):",
    "1, 2, 3, 4, 5,",
]


def main():
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        subprocess.check_call([sys.executable, "-m", "pip", "install", "llama-cpp-python==0.3.36"])
    import llama_cpp
    import numpy as np
    from llama_cpp import Llama

    subprocess.check_call(["cargo", "run", "--release", "--quiet", "--", "pull"], cwd=ROOT)
    with tempfile.TemporaryDirectory() as tmp:
        model = os.path.join(tmp, "bitnet.gguf")
        model_f32 = os.path.join(tmp, "bitnet-f32.gguf")
        env = dict(os.environ, QSPARSE_BITNET_MODEL=model, QSPARSE_BITNET_MODEL_F32=model_f32)
        subprocess.check_call(
            ["cargo", "test", "--release", "--quiet", "--test", "bitnet", "--",
             "--ignored", "--exact", "write_test_model"],
            cwd=ROOT, env=env)
        out = {"llama_cpp_python": llama_cpp.__version__}
        for path, sha_key, key in [(model, "model_sha256", "prompts"),
                                   (model_f32, "model_f32_sha256", "prompts_f32")]:
            with open(path, "rb") as f:
                out[sha_key] = hashlib.sha256(f.read()).hexdigest()
            out[key] = run(Llama, np, path)
    with open(OUT, "w") as f:
        json.dump(out, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"wrote {OUT}")


def run(Llama, np, model):
    """Per prompt: its ids, the top-10 logits after it, the greedy 8-token continuation."""
    llm = Llama(model, n_ctx=128, n_threads=2, logits_all=True, verbose=False)
    prompts = []
    for prompt in PROMPTS:
        toks = llm.tokenize(prompt.encode(), add_bos=False, special=True)
        llm.reset()
        llm.eval(toks)
        logits = np.array(llm.scores[len(toks) - 1], dtype=np.float64)
        top = np.argsort(-logits)[:10]
        greedy = []
        for _ in range(8):
            nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            greedy.append(nxt)
            llm.eval([nxt])
        prompts.append({
            "prompt": prompt,
            "prompt_ids": toks,
            "top10": [[int(i), float(logits[i])] for i in top],
            "greedy": greedy,
        })
    return prompts


if __name__ == "__main__":
    main()
