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

from benchlib import import_llama_cpp, llama_decode, print_ratios, ratios, run_rounds

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, "models", "bitnet-2b4t-shaped.tq2_0.gguf")
QSPARSE = os.path.join(ROOT, "target", "release", "qsparse")
PROMPT = "The Declaration of Independence was signed in"

import_llama_cpp()


def write_model():
    if os.path.exists(MODEL):
        return
    subprocess.check_call(["cargo", "run", "--release", "--quiet", "--", "pull"], cwd=ROOT)
    subprocess.check_call(["cargo", "run", "--release", "--quiet", "--example", "bitnet_model", "--",
                           MODEL + ".tmp", "--shape", "2b4t"], cwd=ROOT)
    os.replace(MODEL + ".tmp", MODEL)


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
    import llama_cpp
    llm = llama_cpp.Llama(MODEL, n_ctx=128, n_threads=2, n_threads_batch=2, verbose=False)
    llama_decode(llm, PROMPT, 4)  # warm-up: maps the file
    rounds = run_rounds({
        "llama.cpp TQ2_0": lambda: llama_decode(llm, PROMPT, a.gen),
        "qsparse t2 S=0": lambda: qsparse_decode(0.0, a.gen),
        "qsparse t2 S=0.5": lambda: qsparse_decode(0.5, a.gen),
    }, a.rounds)
    results = {k: [r[0] for r in v] for k, v in rounds.items()}
    bytes_per_token = {k: v[-1][1] for k, v in rounds.items() if k.startswith("qsparse")}
    med = {k: statistics.median(v) for k, v in results.items()}
    pairs = {
        "qsparse_t2_dense_vs_llamacpp_tq2_0": ("qsparse t2 S=0", "llama.cpp TQ2_0"),
        "qsparse_t2_s05_vs_llamacpp_tq2_0": ("qsparse t2 S=0.5", "llama.cpp TQ2_0"),
        "qsparse_t2_s05_vs_own_dense": ("qsparse t2 S=0.5", "qsparse t2 S=0"),
    }
    of_medians, by_round = ratios(results, pairs)
    if a.json:
        print(json.dumps({"median_decode_tok_s": med, "runs": results, "ratios": of_medians,
                          "round_ratios": by_round,
                          "weight_bytes_per_token": bytes_per_token}, indent=2))
    else:
        for k, v in med.items():
            b = bytes_per_token.get(k)
            extra = f", {b / 1e6:.1f} MB of weights a token" if b else ""
            print(f"{k:<18} {v:6.1f} tok/s (median of {a.rounds}){extra}")
        print_ratios(of_medians, by_round, width=36)


if __name__ == "__main__":
    main()
