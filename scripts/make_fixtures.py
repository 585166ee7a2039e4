#!/usr/bin/env python3
"""Reference outputs of llama.cpp (through llama-cpp-python) for the real SmolLM2 model, saved as
tests/fixtures/smollm2_llamacpp.json so the test suite runs without llama.cpp.

    python3 scripts/make_fixtures.py            # installs llama-cpp-python (compiles llama.cpp) if needed

Holds: token ids of tricky strings; for a set of prompts, the top-10 logits after the prompt and
the greedy 32-token continuation (llama.cpp's CPU backend, 2 threads).
"""
import os
import subprocess

from benchlib import import_llama_cpp, write_fixture

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


PROMPTS = [
    "The capital of France is",
    "Once upon a time, there was a",
    "def fibonacci(n):",
    "The three primary colors are",
    "<|im_start|>user\nWhat is the largest planet in the solar system?<|im_end|>\n<|im_start|>assistant\n",
    "In 1969, Neil Armstrong",
    "Water boils at a temperature of",
    "1, 2, 3, 4, 5,",
]


def logits_and_greedy(model_path, prompts=PROMPTS, greedy=32):
    """Per prompt: its token ids, the top-10 logits after it, and the greedy continuation of
    `greedy` tokens (key "greedy<N>")."""
    import numpy as np
    from llama_cpp import Llama

    llm = Llama(model_path, n_ctx=512, n_threads=2, logits_all=True, verbose=False)
    out = []
    for prompt in prompts:
        toks = llm.tokenize(prompt.encode(), add_bos=False, special=True)
        llm.reset()
        llm.eval(toks)
        logits = np.array(llm.scores[len(toks) - 1], dtype=np.float64)
        top = np.argsort(-logits)[:10]
        continuation = []
        for _ in range(greedy):
            nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            continuation.append(nxt)
            llm.eval([nxt])
        out.append({
            "prompt": prompt,
            "prompt_ids": toks,
            "top10": [[int(i), float(logits[i])] for i in top],
            f"greedy{greedy}": continuation,
        })
    return out


PPL_TEXT = os.path.join(ROOT, "data", "english.txt")
PPL_CTX = 256


def perplexity(model_path):
    """qsparse's definition: non-overlapping windows of PPL_CTX tokens, each from an empty cache,
    every one of the ctx-1 next-token predictions scored with log-softmax in f64."""
    import numpy as np
    from llama_cpp import Llama

    llm = Llama(model_path, n_ctx=PPL_CTX, n_threads=2, logits_all=True, verbose=False)
    with open(PPL_TEXT, "rb") as f:
        toks = llm.tokenize(f.read(), add_bos=False, special=False)
    nll, n, windows = 0.0, 0, []
    for start in range(0, len(toks) - PPL_CTX + 1, PPL_CTX):
        window = toks[start:start + PPL_CTX]
        llm.reset()
        llm.eval(window)
        w = 0.0
        for i in range(PPL_CTX - 1):
            logits = np.array(llm.scores[i], dtype=np.float64)
            m = logits.max()
            lse = np.log(np.exp(logits - m).sum()) + m
            w -= logits[window[i + 1]] - lse
        windows.append(w / (PPL_CTX - 1))
        nll += w
        n += PPL_CTX - 1
    return {"ctx": PPL_CTX, "n_predictions": n, "mean_nll": nll / n, "ppl": float(np.exp(nll / n)),
            "window_mean_nll": windows}


def f32_copy(model_path, out_path):
    """The same model with every tensor dequantized to F32 (metadata copied), so llama.cpp runs it
    with f32 activations: the exact reference for qsparse's `--weights f32` path."""
    import numpy as np
    from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter
    from gguf.quants import dequantize

    r = GGUFReader(model_path)
    arch = r.fields["general.architecture"].contents()
    w = GGUFWriter(out_path, arch)
    for name, field in r.fields.items():
        if name.startswith("GGUF.") or name in ("general.architecture", "general.file_type"):
            continue
        vtype = field.types[0]
        sub = field.types[1] if vtype == GGUFValueType.ARRAY and len(field.types) > 1 else None
        w.add_key_value(name, field.contents(), vtype, sub_type=sub)
    w.add_file_type(0)
    for t in r.tensors:
        data = dequantize(t.data, t.tensor_type).astype(np.float32)
        shape = [int(d) for d in reversed(t.shape)]
        w.add_tensor(t.name, data.reshape(shape), raw_dtype=GGMLQuantizationType.F32)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


CHAT = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"},
     {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "  Tell me a joke.  "}],
]


def chat_renders(model_path):
    """The model's chat template rendered by jinja2 as Hugging Face does (trim_blocks,
    lstrip_blocks), with add_generation_prompt."""
    import jinja2
    from gguf import GGUFReader

    template = GGUFReader(model_path).fields["tokenizer.chat_template"].contents()
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    t = env.from_string(template)
    return [{"messages": m, "text": t.render(messages=m, add_generation_prompt=True)} for m in CHAT]


def main():
    llama_cpp = import_llama_cpp()
    from llama_cpp import Llama

    if not os.path.exists(MODEL):
        subprocess.check_call(["cargo", "run", "--release", "--quiet", "--", "pull"], cwd=ROOT)
    vocab = Llama(MODEL, vocab_only=True, verbose=False)
    tokens = [{"text": t, "ids": vocab.tokenize(t.encode(), add_bos=False, special=True)} for t in TOKENIZE]
    out = {
        "llama_cpp_python": llama_cpp.__version__,
        "model": os.path.basename(MODEL),
        "tokenize": tokens,
        "prompts": logits_and_greedy(MODEL),
        "perplexity": perplexity(MODEL),
        "chat": chat_renders(MODEL),
    }
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        f32_path = os.path.join(tmp, "smollm2-f32.gguf")
        f32_copy(MODEL, f32_path)
        out["prompts_f32"] = logits_and_greedy(f32_path)
        out["perplexity_f32"] = perplexity(f32_path)
    write_fixture(OUT, out)


if __name__ == "__main__":
    main()
