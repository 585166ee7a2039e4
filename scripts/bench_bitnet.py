#!/usr/bin/env python3
"""Decode speed of a ternary model at BitNet b1.58 2B4T's shapes: qsparse (`--weights t2`, dense
and S = 0.5) next to llama.cpp on the same TQ2_0 file, interleaved round by round.

No real ternary model can be fetched, so the model is written here with random ternary weights:
architecture `bitnet`, 30 blocks, d_model 2560, FFN 6912, 20 heads sharing 5 kv heads, SiLU (the
only activation llama-cpp-python's llama.cpp reads for `bitnet`), SmolLM2's tokenizer (vocab
49152; 2B4T's Llama-3 vocabulary of 128256 would make the head 2.6x larger). The writer is
`qsparse::synthetic` (`--example bitnet_model`), whose small model tests/bitnet.rs checks
against llama.cpp's logits.

    scripts/bench_bitnet.py [--rounds 5] [--gen 32] [--json]

llama.cpp is timed by its own counters (2 threads, greedy); qsparse by `qsparse bench`. Ratios
are given of the medians and as the median of the per-round ratios.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, "models", "bitnet-2b4t-shaped.tq2_0.gguf")
QSPARSE = os.path.join(ROOT, "target", "release", "qsparse")
PROMPT = "The Declaration of Independence was signed in"

try:
    import llama_cpp
except ImportError:
    subprocess.check_call([sys.executable, "-m", "pip", "install", "--quiet", "llama-cpp-python==0.3.36"])
    import llama_cpp


def write_model():
    if os.path.exists(MODEL):
        return
    subprocess.check_call(["cargo", "run", "--release", "--quiet", "--", "pull"], cwd=ROOT)
    subprocess.check_call(["cargo", "run", "--release", "--quiet", "--example", "bitnet_model", "--",
                           MODEL + ".tmp", "--shape", "2b4t"], cwd=ROOT)
    os.replace(MODEL + ".tmp", MODEL)


def llama_decode(llm, gen):
    """Decode tok/s as llama.cpp's own counters report it (the prompt excluded)."""
    llm.reset()
    ctx = llm._ctx.ctx
    llama_cpp.llama_perf_context_reset(ctx)
    llm.create_completion(PROMPT, max_tokens=gen, temperature=0.0, top_k=1)
    perf = llama_cpp.llama_perf_context(ctx)
    return perf.n_eval / (perf.t_eval_ms / 1e3)


def qsparse_decode(sparsity, gen):
    out = subprocess.run(
        [QSPARSE, "bench", "-m", MODEL, "--weights", "t2", "--sparsity", str(sparsity),
         "--prompt-tokens", "1", "--gen-tokens", str(gen), "--runs", "3", "--json"],
        check=True, capture_output=True, text=True).stdout
    j = json.loads(out)
    return j["decode_tok_s"], j["weight_bytes_per_token"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--gen", type=int, default=32)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    subprocess.check_call(["cargo", "build", "--release", "--quiet"], cwd=ROOT)
    write_model()
    llm = llama_cpp.Llama(MODEL, n_ctx=128, n_threads=2, n_threads_batch=2, verbose=False)
    llama_decode(llm, 4)  # warm-up: maps the file
    names = ["llama.cpp TQ2_0", "qsparse t2 S=0", "qsparse t2 S=0.5"]
    results = {n: [] for n in names}
    bytes_per_token = {}
    for r in range(a.rounds):
        runs = [
            ("llama.cpp TQ2_0", lambda: (llama_decode(llm, a.gen), None)),
            ("qsparse t2 S=0", lambda: qsparse_decode(0.0, a.gen)),
            ("qsparse t2 S=0.5", lambda: qsparse_decode(0.5, a.gen)),
        ]
        if r % 2:
            runs.reverse()
        for name, run in runs:
            tok_s, b = run()
            results[name].append(tok_s)
            if b:
                bytes_per_token[name] = b
        print(f"round {r + 1}/{a.rounds}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in results.items()),
              file=sys.stderr)
    med = {k: statistics.median(v) for k, v in results.items()}
    pairs = {
        "qsparse_t2_dense_vs_llamacpp_tq2_0": ("qsparse t2 S=0", "llama.cpp TQ2_0"),
        "qsparse_t2_s05_vs_llamacpp_tq2_0": ("qsparse t2 S=0.5", "llama.cpp TQ2_0"),
        "qsparse_t2_s05_vs_own_dense": ("qsparse t2 S=0.5", "qsparse t2 S=0"),
    }
    ratios = {k: med[x] / med[y] for k, (x, y) in pairs.items()}
    round_ratios = {k: [p / q for p, q in zip(results[x], results[y])] for k, (x, y) in pairs.items()}
    if a.json:
        print(json.dumps({"median_decode_tok_s": med, "runs": results, "ratios": ratios,
                          "round_ratios": round_ratios,
                          "weight_bytes_per_token": bytes_per_token}, indent=2))
    else:
        for k, v in med.items():
            b = bytes_per_token.get(k)
            extra = f", {b / 1e6:.1f} MB of weights a token" if b else ""
            print(f"{k:<18} {v:6.1f} tok/s (median of {a.rounds}){extra}")
        for k, v in ratios.items():
            spread = ", ".join(f"{x:.2f}" for x in sorted(round_ratios[k]))
            print(f"{k:<36} {v:5.2f}x of medians, {statistics.median(round_ratios[k]):.2f}x "
                  f"median of rounds ({spread})")


if __name__ == "__main__":
    main()
