#!/usr/bin/env python3
"""Decode and prompt speed of a ternary model at BitNet b1.58 2B4T's shapes: qsparse (`--weights
t2`, dense, S = 0.5 and S = 0.6125, the paper's inference-optimal ratio for 1.58-bit models, also
with the 4-bit lm_head) next to llama.cpp on the same model as TQ2_0 and bitnet.cpp on it as I2_S, interleaved round by round.

No real ternary model can be fetched, so the model is written here with random ternary weights:
architecture `bitnet`, 30 blocks, d_model 2560, FFN 6912, 20 heads sharing 5 kv heads, SiLU (the
only activation llama-cpp-python's llama.cpp reads for `bitnet`), SmolLM2's tokenizer (vocab
49152; 2B4T's Llama-3 vocabulary of 128256 would make the head 2.6x larger). The writer is
`qsparse::synthetic` (`--example bitnet_model`), whose small model tests/bitnet.rs checks
against llama.cpp's logits.

    scripts/bench_bitnet.py [--rounds 5] [--gen 32] [--prompt 128] [--bitnet-cpp DIR] [--json]

llama.cpp is timed by its own counters (2 threads, greedy); bitnet.cpp by its `llama-bench`
(2 threads; built by scripts/build_bitnet_cpp.sh, default ../peers/bitnet.cpp; left out with a
note when absent); qsparse by `qsparse bench`. Each run decodes `--gen` tokens after a
`--prompt`-token prompt, whose evaluation speed is reported too. Ratios are given of the
medians and as the median of the per-round ratios. The same random model is written twice
(TQ2_0 and I2_S files hold the same ternary values; tests/bitnet.rs checks that qsparse gives
the same logits on both).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

from benchlib import import_llama_cpp, llama_decode, print_ratios, ratios, run_rounds

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, "models", "bitnet-2b4t-shaped.tq2_0.gguf")
MODEL_I2S = os.path.join(ROOT, "models", "bitnet-2b4t-shaped.i2_s.gguf")
BITNET_CPP = os.path.join(os.path.dirname(ROOT), "peers", "bitnet.cpp", "build-i2s", "bin")
QSPARSE = os.path.join(ROOT, "target", "release", "qsparse")
PROMPT = "The Declaration of Independence was signed in"

import_llama_cpp()


def write_model(path, extra):
    if os.path.exists(path):
        return
    subprocess.check_call(["cargo", "run", "--release", "--quiet", "--", "pull"], cwd=ROOT)
    subprocess.check_call(["cargo", "run", "--release", "--quiet", "--example", "bitnet_model", "--",
                           path + ".tmp", "--shape", "2b4t", *extra], cwd=ROOT)
    os.replace(path + ".tmp", path)


def qsparse_run(sparsity, gen, prompt, head_bits=8):
    out = subprocess.run(
        [QSPARSE, "bench", "-m", MODEL, "--weights", "t2", "--sparsity", str(sparsity),
         "--lm-head-bits", str(head_bits),
         "--prompt-tokens", str(prompt), "--gen-tokens", str(gen), "--runs", "3", "--json"],
        check=True, capture_output=True, text=True).stdout
    j = json.loads(out)
    return j["decode_tok_s"], j["prefill_tok_s"], j["weight_bytes_per_token"]


def bitnet_cpp_run(bench, gen, prompt):
    """bitnet.cpp's llama-bench: (decode, prompt) tok/s, 2 threads."""
    out = subprocess.run([bench, "-m", MODEL_I2S, "-p", str(prompt), "-n", str(gen), "-t", "2",
                          "-r", "2", "-o", "json"], check=True, capture_output=True, text=True).stdout
    rows = json.loads(out)
    tg = next(r["avg_ts"] for r in rows if r["n_gen"] > 0)
    pp = next(r["avg_ts"] for r in rows if r["n_prompt"] > 0)
    return tg, pp


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--gen", type=int, default=32)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--bitnet-cpp", default=BITNET_CPP, help="directory of bitnet.cpp's binaries")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    subprocess.check_call(["cargo", "build", "--release", "--quiet"], cwd=ROOT)
    write_model(MODEL, [])
    bench = os.path.join(a.bitnet_cpp, "llama-bench")
    have_peer = os.path.exists(bench)
    if have_peer:
        write_model(MODEL_I2S, ["--i2s"])
    else:
        print(f"note: no bitnet.cpp at {a.bitnet_cpp} (scripts/build_bitnet_cpp.sh builds it); "
              "measuring without it", file=sys.stderr)
    import llama_cpp
    llm = llama_cpp.Llama(MODEL, n_ctx=a.prompt + a.gen + 16, n_threads=2, n_threads_batch=2,
                          verbose=False)
    with open(os.path.join(ROOT, "data", "english.txt"), encoding="utf-8") as f:
        ids = llm.tokenize(f.read().encode())[:a.prompt]
    prompt_text = llm.detokenize(ids).decode("utf-8", errors="ignore")
    llama_decode(llm, PROMPT, 4)  # warm-up: maps the file
    runs = {"llama.cpp TQ2_0": lambda: llama_decode(llm, prompt_text, a.gen)}
    if have_peer:
        runs["bitnet.cpp I2_S"] = lambda: bitnet_cpp_run(bench, a.gen, a.prompt)
    for s in ["0", "0.5", "0.6125"]:
        runs[f"qsparse t2 S={s}"] = lambda s=s: qsparse_run(float(s), a.gen, a.prompt)
    # The lighter head (`--lm-head-bits 4`), at the paper's ratio for 1.58-bit models.
    runs["qsparse t2 S=0.6125 head4"] = lambda: qsparse_run(0.6125, a.gen, a.prompt, 4)
    rounds = run_rounds(runs, a.rounds)
    results = {k: [r[0] for r in v] for k, v in rounds.items()}
    prompts = {k: [r[1] for r in v] for k, v in rounds.items()}
    bytes_per_token = {k: v[-1][2] for k, v in rounds.items() if k.startswith("qsparse")}
    med = {k: statistics.median(v) for k, v in results.items()}
    med_prompt = {k: statistics.median(v) for k, v in prompts.items()}
    pairs = {
        "qsparse_t2_dense_vs_llamacpp_tq2_0": ("qsparse t2 S=0", "llama.cpp TQ2_0"),
        "qsparse_t2_s05_vs_llamacpp_tq2_0": ("qsparse t2 S=0.5", "llama.cpp TQ2_0"),
        "qsparse_t2_s0.6125_vs_llamacpp_tq2_0": ("qsparse t2 S=0.6125", "llama.cpp TQ2_0"),
        "qsparse_t2_s05_vs_own_dense": ("qsparse t2 S=0.5", "qsparse t2 S=0"),
        "qsparse_t2_s0.6125_vs_own_dense": ("qsparse t2 S=0.6125", "qsparse t2 S=0"),
        "qsparse_t2_s0.6125_head4_vs_llamacpp_tq2_0": ("qsparse t2 S=0.6125 head4", "llama.cpp TQ2_0"),
        "qsparse_t2_s0.6125_head4_vs_own_dense": ("qsparse t2 S=0.6125 head4", "qsparse t2 S=0"),
    }
    prompt_pairs = {"prompt: qsparse t2 dense vs llama.cpp TQ2_0": ("qsparse t2 S=0", "llama.cpp TQ2_0")}
    if have_peer:
        pairs["qsparse_t2_dense_vs_bitnetcpp_i2_s"] = ("qsparse t2 S=0", "bitnet.cpp I2_S")
        pairs["bitnetcpp_i2_s_vs_llamacpp_tq2_0"] = ("bitnet.cpp I2_S", "llama.cpp TQ2_0")
        prompt_pairs["prompt: qsparse t2 dense vs bitnet.cpp I2_S"] = ("qsparse t2 S=0", "bitnet.cpp I2_S")
    of_medians, by_round = ratios(results, pairs)
    p_of_medians, p_by_round = ratios(prompts, prompt_pairs)
    if a.json:
        print(json.dumps({"prompt_tokens": a.prompt, "gen_tokens": a.gen,
                          "median_decode_tok_s": med, "median_prompt_tok_s": med_prompt,
                          "runs": results, "prompt_runs": prompts, "ratios": of_medians,
                          "round_ratios": by_round, "prompt_ratios": p_of_medians,
                          "prompt_round_ratios": p_by_round,
                          "weight_bytes_per_token": bytes_per_token}, indent=2))
    else:
        for k, v in med.items():
            b = bytes_per_token.get(k)
            extra = f", {b / 1e6:.1f} MB of weights a token" if b else ""
            print(f"{k:<20} decode {v:6.1f} tok/s, prompt {med_prompt[k]:6.1f} tok/s "
                  f"(medians of {a.rounds}){extra}")
        print_ratios(of_medians, by_round, width=38)
        print_ratios(p_of_medians, p_by_round, width=46)


if __name__ == "__main__":
    main()
