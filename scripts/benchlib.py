"""What the speed scripts next to llama.cpp share: llama.cpp through `llama-cpp-python` (installed
if missing: it compiles llama.cpp, a few minutes), its decode timed by its own counters, rounds
run in alternating order, and ratios two ways (of the medians, and the median of the per-round
ratios, each pair timed within seconds of each other, which the VM's drifting speed disturbs
less)."""

import json
import statistics
import subprocess
import sys

LLAMA_CPP_PYTHON = "llama-cpp-python==0.3.36"


def import_llama_cpp():
    try:
        import llama_cpp
    except ImportError:
        subprocess.check_call([sys.executable, "-m", "pip", "install", "--quiet", LLAMA_CPP_PYTHON])
        import llama_cpp
    return llama_cpp


def llama_decode(llm, prompt, gen):
    """(decode, prompt) tok/s as llama.cpp's own counters report them (generation excludes the
    prompt), so the Python binding's per-token overhead is not charged to llama.cpp."""
    import llama_cpp
    llm.reset()
    ctx = llm._ctx.ctx
    llama_cpp.llama_perf_context_reset(ctx)
    llm.create_completion(prompt, max_tokens=gen, temperature=0.0, top_k=1)
    perf = llama_cpp.llama_perf_context(ctx)
    return perf.n_eval / (perf.t_eval_ms / 1e3), perf.n_p_eval / (perf.t_p_eval_ms / 1e3)


def run_rounds(runs, rounds):
    """Each round calls every `runs[name]()` (returning a tuple whose first item is the decode
    tok/s), every other round in reverse order, so that a drift of the machine's speed within a
    round does not always favour the same side of a pair. Returns {name: [result per round]}."""
    results = {name: [] for name in runs}
    for r in range(rounds):
        order = list(runs.items())
        if r % 2:
            order.reverse()
        for name, run in order:
            results[name].append(run())
        print(f"round {r + 1}/{rounds}: "
              + ", ".join(f"{k} {v[-1][0]:.1f}" for k, v in results.items()), file=sys.stderr)
    return results


def ratios(values, pairs):
    """For {label: (a, b)}: a's median over b's, and the per-round ratios a/b."""
    of_medians = {k: statistics.median(values[a]) / statistics.median(values[b])
                  for k, (a, b) in pairs.items()}
    by_round = {k: [x / y for x, y in zip(values[a], values[b])] for k, (a, b) in pairs.items()}
    return of_medians, by_round


def print_ratios(of_medians, by_round, width=38):
    for k, v in of_medians.items():
        spread = ", ".join(f"{x:.2f}" for x in sorted(by_round[k]))
        print(f"{k:<{width}} {v:5.2f}x of medians, {statistics.median(by_round[k]):.2f}x "
              f"median of rounds ({spread})")


def write_fixture(path, obj):
    """A test fixture as the tests read it: indented JSON, non-ASCII kept, a final newline."""
    with open(path, "w") as f:
        json.dump(obj, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"wrote {path}")
