#!/usr/bin/env python3
"""Decode speed of qsparse next to llama.cpp on ~1B-shaped random models of each architecture,
interleaved round by round (scripts/benchlib.py).

For each architecture (llama3: Llama 3.2 1B's shape, also used for phi3; qwen2: Qwen2.5 1.5B's;
qwen3: Qwen3 1.7B's; SmolLM2's tokenizer), `--example arch_model --shape 1b --f16` writes the
model with F16 matrices, llama.cpp's quantizer makes its Q8_0 copy; each round times llama.cpp
on the Q8_0 file (greedy decode, 2 threads, its own counters) and `qsparse bench` on the F16
file with int8 weights at S = 0 and 0.5. Prints medians and ratios; --json for
machine-readable output. The models (~2.5-3 GB each, and their Q8_0 copies) are kept in
models/bench/ for the next run.

    scripts/bench_architectures.py [--arch llama3,qwen2,qwen3,phi3] [--rounds 3] [--gen 32] [--json]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import import_llama_cpp, llama_decode, print_ratios, ratios, run_rounds  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QSPARSE = os.path.join(ROOT, "target", "release", "qsparse")
EXAMPLE = os.path.join(ROOT, "target", "release", "examples", "arch_model")
OUT_DIR = os.path.join(ROOT, "models", "bench")
PROMPT = "The capital of France is"

llama_cpp = import_llama_cpp()


def model_files(arch):
    """The F16 model and its Q8_0 copy, written if missing (atomically)."""
    os.makedirs(OUT_DIR, exist_ok=True)
    f16 = os.path.join(OUT_DIR, f"{arch}-1b-f16.gguf")
    q8 = os.path.join(OUT_DIR, f"{arch}-1b-q8_0.gguf")
    if not os.path.exists(f16):
        print(f"writing {f16}", file=sys.stderr)
        subprocess.check_call([EXAMPLE, arch, f16 + ".tmp", "--shape", "1b", "--f16"])
        os.replace(f16 + ".tmp", f16)
    if not os.path.exists(q8):
        print(f"quantizing {q8}", file=sys.stderr)
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0
        rc = llama_cpp.llama_model_quantize(f16.encode(), (q8 + ".tmp").encode(), params)
        if rc != 0:
            raise SystemExit(f"llama_model_quantize failed: {rc}")
        os.replace(q8 + ".tmp", q8)
    return f16, q8


def qsparse_decode(model, sparsity, gen):
    out = subprocess.run(
        [QSPARSE, "bench", "-m", model, "--weights", "int8", "--sparsity", str(sparsity),
         "--gen-tokens", str(gen), "--runs", "2", "--json"],
        check=True, capture_output=True, text=True).stdout
    return (json.loads(out)["decode_tok_s"],)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="llama3,qwen2,qwen3,phi3")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--gen", type=int, default=32)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    subprocess.check_call(["cargo", "build", "--release", "--quiet", "--examples", "--bins"], cwd=ROOT)
    report = {}
    for arch in a.arch.split(","):
        f16, q8 = model_files(arch)
        llm = llama_cpp.Llama(q8, n_ctx=256, n_threads=2, n_threads_batch=2, verbose=False)
        llama_decode(llm, PROMPT, 4)  # warm-up
        runs = {
            "llama.cpp Q8_0": lambda: llama_decode(llm, PROMPT, a.gen),
            "qsparse int8 S=0": lambda: qsparse_decode(f16, 0.0, a.gen),
            "qsparse int8 S=0.5": lambda: qsparse_decode(f16, 0.5, a.gen),
        }
        rounds = run_rounds(runs, a.rounds)
        decode = {k: [r[0] for r in v] for k, v in rounds.items()}
        pairs = {
            "qsparse int8 dense vs llama.cpp Q8_0": ("qsparse int8 S=0", "llama.cpp Q8_0"),
            "qsparse S=0.5 vs llama.cpp Q8_0": ("qsparse int8 S=0.5", "llama.cpp Q8_0"),
            "qsparse S=0.5 vs its dense": ("qsparse int8 S=0.5", "qsparse int8 S=0"),
        }
        of_medians, by_round = ratios(decode, pairs)
        med = {k: statistics.median(v) for k, v in decode.items()}
        report[arch] = {"median_decode_tok_s": med, "runs": decode, "ratios": of_medians,
                        "median_round_ratios": {k: statistics.median(v) for k, v in by_round.items()}}
        llm.close()  # frees the model before the next one is loaded
        if not a.json:
            print(f"== {arch}")
            for k, v in med.items():
                print(f"{k:<22} {v:7.1f} tok/s (median of {a.rounds})")
            print_ratios(of_medians, by_round)
    if a.json:
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
