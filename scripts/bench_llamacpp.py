#!/usr/bin/env python3
"""Decode speed of qsparse next to llama.cpp on the same machine, interleaved round by round.

llama.cpp comes from the `llama-cpp-python` package (installed here if missing: it compiles
llama.cpp, a few minutes). The shipped Q4_1 model is also requantized to Q8_0 (llama.cpp's own
quantizer), the format the int8 path is compared with. Each round times, in turn: llama.cpp on
Q4_1 and Q8_0 (greedy decode, 2 threads, its own perf counters) and `qsparse bench` at
S = 0 and 0.5 (int8). Prints medians and ratios; --json for machine-readable output.

    scripts/bench_llamacpp.py [--rounds 5] [--gen 64] [--prompt-tokens N] [--json]

--prompt-tokens N decodes after an N-token prompt (the start of data/english.txt for llama.cpp,
`qsparse bench`'s own text for qsparse), where attention over the cache weighs more; prompt
evaluation speeds are then reported too. Ratios are given two ways: of the medians, and the
median of the per-round ratios (each pair timed within seconds; every other round runs in reverse
order), which the VM's drifting speed disturbs less.
"""

import argparse
import json
import os
import statistics
import subprocess

from benchlib import import_llama_cpp, llama_decode, print_ratios, ratios, run_rounds

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
QSPARSE = os.path.join(ROOT, "target", "release", "qsparse")
PROMPT = "The Declaration of Independence was signed in"

llama_cpp = import_llama_cpp()


def q8_0_copy():
    out = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q8_0.gguf")
    if not os.path.exists(out):
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0
        params.allow_requantize = True
        rc = llama_cpp.llama_model_quantize(MODEL.encode(), (out + ".tmp").encode(), params)
        if rc != 0:
            raise SystemExit(f"llama_model_quantize failed: {rc}")
        os.replace(out + ".tmp", out)
    return out


def qsparse_decode(sparsity, gen, prompt_tokens):
    out = subprocess.run(
        [QSPARSE, "bench", "--sparsity", str(sparsity), "--prompt-tokens", str(prompt_tokens),
         "--gen-tokens", str(gen), "--runs", "3", "--json"],
        check=True, capture_output=True, text=True).stdout
    j = json.loads(out)
    return j["decode_tok_s"], j["prefill_tok_s"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("--prompt-tokens", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if not os.path.exists(QSPARSE):
        subprocess.check_call(["cargo", "build", "--release", "--quiet"], cwd=ROOT)
    q8 = q8_0_copy()
    n_ctx = max(256, a.prompt_tokens + a.gen + 16)
    llms = {name: llama_cpp.Llama(path, n_ctx=n_ctx, n_threads=2, n_threads_batch=2,
                                  verbose=False)
            for name, path in [("llama.cpp Q4_1", MODEL), ("llama.cpp Q8_0", q8)]}
    prompt, q_prompt = PROMPT, 16
    if a.prompt_tokens:
        with open(os.path.join(ROOT, "data", "english.txt"), encoding="utf-8") as f:
            ids = next(iter(llms.values())).tokenize(f.read().encode())[:a.prompt_tokens]
        prompt = next(iter(llms.values())).detokenize(ids).decode("utf-8", errors="ignore")
        q_prompt = a.prompt_tokens
    for llm in llms.values():
        llama_decode(llm, PROMPT, 8)  # warm-up
    runs = {name: (lambda llm=llm: llama_decode(llm, prompt, a.gen)) for name, llm in llms.items()}
    runs["qsparse int8 S=0"] = lambda: qsparse_decode(0.0, a.gen, q_prompt)
    runs["qsparse int8 S=0.5"] = lambda: qsparse_decode(0.5, a.gen, q_prompt)
    rounds = run_rounds(runs, a.rounds)
    decode = {k: [r[0] for r in v] for k, v in rounds.items()}
    prefill = {k: [r[1] for r in v] for k, v in rounds.items()}
    pairs = {
        "qsparse_int8_dense_vs_llamacpp_q8_0": ("qsparse int8 S=0", "llama.cpp Q8_0"),
        "qsparse_int8_dense_vs_llamacpp_q4_1": ("qsparse int8 S=0", "llama.cpp Q4_1"),
        "qsparse_s05_vs_own_dense": ("qsparse int8 S=0.5", "qsparse int8 S=0"),
    }
    of_medians, by_round = ratios(decode, pairs)
    # Prompt evaluation, qsparse dense against llama.cpp Q8_0 (with a prompt).
    prompt_pair = {"prompt: qsparse int8 dense vs Q8_0": ("qsparse int8 S=0", "llama.cpp Q8_0")}
    prompt_of_medians, prompt_by_round = ratios(prefill, prompt_pair)
    med = {k: statistics.median(v) for k, v in decode.items()}
    med_prefill = {k: statistics.median(v) for k, v in prefill.items()}
    if a.json:
        print(json.dumps({"prompt_tokens": q_prompt, "median_decode_tok_s": med,
                          "median_prompt_tok_s": med_prefill, "runs": decode,
                          "prompt_runs": prefill, "ratios": of_medians, "round_ratios": by_round,
                          "median_round_ratios": {k: statistics.median(v)
                                                  for k, v in by_round.items()},
                          "prompt_round_ratios": (next(iter(prompt_by_round.values()))
                                                  if a.prompt_tokens else None)},
                         indent=2))
    else:
        for k, v in med.items():
            extra = f", prompt {med_prefill[k]:.1f} tok/s" if a.prompt_tokens else ""
            print(f"{k:<22} {v:7.1f} tok/s (median of {a.rounds}){extra}")
        print_ratios(of_medians, by_round)
        if a.prompt_tokens:
            print_ratios(prompt_of_medians, prompt_by_round)


if __name__ == "__main__":
    main()
