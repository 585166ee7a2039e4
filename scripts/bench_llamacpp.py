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
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
QSPARSE = os.path.join(ROOT, "target", "release", "qsparse")
PROMPT = "The Declaration of Independence was signed in"

try:
    import llama_cpp
except ImportError:
    subprocess.check_call([sys.executable, "-m", "pip", "install", "--quiet", "llama-cpp-python==0.3.36"])
    import llama_cpp


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


def llama_decode(llm, gen, prompt):
    """(decode, prompt) tok/s as llama.cpp's own counters report them (generation excludes the
    prompt), so the Python binding's per-token overhead is not charged to llama.cpp."""
    llm.reset()
    ctx = llm._ctx.ctx
    llama_cpp.llama_perf_context_reset(ctx)
    llm.create_completion(prompt, max_tokens=gen, temperature=0.0, top_k=1)
    perf = llama_cpp.llama_perf_context(ctx)
    return perf.n_eval / (perf.t_eval_ms / 1e3), perf.n_p_eval / (perf.t_p_eval_ms / 1e3)


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
    results = {name: [] for name in [*llms, "qsparse int8 S=0", "qsparse int8 S=0.5"]}
    prefill = {name: [] for name in results}
    for name, llm in llms.items():
        llama_decode(llm, 8, PROMPT)  # warm-up
    for r in range(a.rounds):
        runs = {name: (lambda llm=llm: llama_decode(llm, a.gen, prompt)) for name, llm in llms.items()}
        runs["qsparse int8 S=0"] = lambda: qsparse_decode(0.0, a.gen, q_prompt)
        runs["qsparse int8 S=0.5"] = lambda: qsparse_decode(0.5, a.gen, q_prompt)
        order = list(runs.items())
        if r % 2:
            # Every other round in reverse, so a drift of the machine's speed within a round
            # does not always favour the same side of a pair.
            order.reverse()
        for name, run in order:
            dec, pre = run()
            results[name].append(dec)
            prefill[name].append(pre)
        print(f"round {r + 1}/{a.rounds}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in results.items()),
              file=sys.stderr)
    med = {k: statistics.median(v) for k, v in results.items()}
    med_prefill = {k: statistics.median(v) for k, v in prefill.items()}
    pairs = {
        "qsparse_int8_dense_vs_llamacpp_q8_0": ("qsparse int8 S=0", "llama.cpp Q8_0"),
        "qsparse_int8_dense_vs_llamacpp_q4_1": ("qsparse int8 S=0", "llama.cpp Q4_1"),
        "qsparse_s05_vs_own_dense": ("qsparse int8 S=0.5", "qsparse int8 S=0"),
    }
    ratios = {k: med[a_] / med[b] for k, (a_, b) in pairs.items()}
    # The same ratios round by round (both sides timed within seconds of each other), then their
    # median: steadier than a ratio of medians when the machine's speed drifts between rounds.
    round_ratios = {k: [x / y for x, y in zip(results[a_], results[b])] for k, (a_, b) in pairs.items()}
    med_round_ratios = {k: statistics.median(v) for k, v in round_ratios.items()}
    # Prompt evaluation, qsparse dense against llama.cpp Q8_0, round by round (with a prompt).
    prompt_rounds = [x / y for x, y in zip(prefill["qsparse int8 S=0"], prefill["llama.cpp Q8_0"])]
    if a.json:
        print(json.dumps({"prompt_tokens": q_prompt, "median_decode_tok_s": med,
                          "median_prompt_tok_s": med_prefill, "runs": results,
                          "prompt_runs": prefill, "ratios": ratios, "round_ratios": round_ratios,
                          "median_round_ratios": med_round_ratios,
                          "prompt_round_ratios": prompt_rounds if a.prompt_tokens else None},
                         indent=2))
    else:
        for k, v in med.items():
            extra = f", prompt {med_prefill[k]:.1f} tok/s" if a.prompt_tokens else ""
            print(f"{k:<22} {v:7.1f} tok/s (median of {a.rounds}){extra}")
        for k, v in ratios.items():
            spread = ", ".join(f"{x:.2f}" for x in sorted(round_ratios[k]))
            print(f"{k:<38} {v:5.2f}x of medians, {med_round_ratios[k]:.2f}x median of rounds ({spread})")
        if a.prompt_tokens:
            spread = ", ".join(f"{x:.2f}" for x in sorted(prompt_rounds))
            print(f"{'prompt: qsparse int8 dense vs Q8_0':<38} "
                  f"{statistics.median(prompt_rounds):.2f}x median of rounds ({spread})")


if __name__ == "__main__":
    main()
