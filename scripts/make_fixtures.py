#!/usr/bin/env python3
"""Reference outputs of llama.cpp (through llama-cpp-python) for the real SmolLM2 model, saved as
tests/fixtures/smollm2_llamacpp.json so the test suite runs without llama.cpp.

    python3 scripts/make_fixtures.py            # installs llama-cpp-python (compiles llama.cpp) if needed

Holds: token ids of tricky strings.
"""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
OUT = os.path.join(ROOT, "tests", "fixtures", "smollm2_llamacpp.json")

TOKENIZE = [
    "Hello world",
    " leading space",
    "  two leading spaces",
    "trailing space ",
    "multiple   inner    spaces",
    "tabs\tand\nnewlines\n\n\nthree",
    "numbers 12345 and 3.14159, 1,000,000",
    "don't I'll we're they've it's",
    "Ünïcödé façade naïve café",
    "日本語のテキスト 中文 한국어",
    "emoji 🦀🚀 👍🏽 family 👨‍👩‍👧",
    "fn main() {\n    println!(\"hi {}\", x[0] + 1);\n}",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "https://example.com/path?q=1&r=two#frag",
    "   ",
    "a",
    "x" * 50,
]


def main():
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        subprocess.check_call([sys.executable, "-m", "pip", "install", "llama-cpp-python"])
    from llama_cpp import Llama

    if not os.path.exists(MODEL):
        subprocess.check_call(["cargo", "run", "--release", "--quiet", "--", "pull"], cwd=ROOT)
    vocab = Llama(MODEL, vocab_only=True, verbose=False)
    tokens = [{"text": t, "ids": vocab.tokenize(t.encode(), add_bos=False, special=True)} for t in TOKENIZE]
    import llama_cpp
    out = {"llama_cpp_python": llama_cpp.__version__, "model": os.path.basename(MODEL), "tokenize": tokens}
    with open(OUT, "w") as f:
        json.dump(out, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
