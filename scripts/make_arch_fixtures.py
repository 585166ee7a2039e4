#!/usr/bin/env python3
"""llama.cpp's references for the architectures and tokenizers qsparse runs beside `llama`, saved
as tests/fixtures/architectures_llamacpp.json so the test suite runs without llama.cpp.

    python3 scripts/make_arch_fixtures.py     # installs llama-cpp-python (compiles llama.cpp) if needed

- Models: for each small random model `--example arch_model` writes (llama3, llama-linear, qwen2,
  qwen3, phi3, phi3-longrope: qsparse::synthetic::write_architecture, SmolLM2's tokenizer), its sha256 (the test
  checks the file it writes against it) and, per prompt, the prompt's ids, the top-10 logits after
  it and the greedy 32-token continuation (llama.cpp's CPU backend, 2 threads).
- Tokenizers: for llama.cpp's vocabularies of Llama 3, Llama 2 / Mistral, Qwen2, Phi-3
  (scripts/fetch_vocabs.sh), the ids llama.cpp gives texts with special tokens and its BOS rule
  (`add_bos=True, special=True`, as a chat prompt is tokenized).
- Chat templates: the prompt Python's jinja2 renders (as Hugging Face does: trim_blocks,
  lstrip_blocks) from the templates of those models (the vocabularies' own, and llama.cpp's
  models/templates copies) for one conversation.
"""
import hashlib
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import import_llama_cpp, write_fixture  # noqa: E402
from make_fixtures import logits_and_greedy  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "architectures_llamacpp.json")
VOCABS = os.environ.get("QSPARSE_VOCABS") or os.path.expanduser("~/.cache/qsparse/vocabs")
TEMPLATES = os.path.join(VOCABS, "templates")

ARCHITECTURES = ["llama3", "llama-linear", "qwen2", "qwen3", "phi3", "phi3-longrope"]
PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "<|im_start|>user\nWhat is the largest planet?<|im_end|>\n<|im_start|>assistant\n",
]
VOCAB_NAMES = ["llama-bpe", "llama-spm", "qwen2", "phi-3"]
TEXTS = [
    "Hello world",
    " Hello, world! 123 4567",
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "<s>[INST] Hi there [/INST]",
    "<|user|>\nHi there<|end|>\n<|assistant|>\n",
]
# The sdist's models/templates copies of the models' chat templates (file names as llama.cpp has
# them), and the vocabularies that carry their own.
TEMPLATE_FILES = [
    "meta-llama-Llama-3.1-8B-Instruct.jinja",
    "meta-llama-Llama-3.2-3B-Instruct.jinja",
    "Qwen-Qwen2.5-7B-Instruct.jinja",
    "Qwen-Qwen3-0.6B.jinja",
    "microsoft-Phi-3.5-mini-instruct.jinja",
    "mistralai-Mistral-Nemo-Instruct-2407.jinja",
]
MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is 2 + 2?"},
    {"role": "assistant", "content": "4."},
    {"role": "user", "content": "And 3 + 3?"},
]
# Templates that print today's date get this one (qsparse's test passes the same).
DATE = "07 Dec 2026"


def render(source, bos, eos):
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(msg):
        raise jinja2.exceptions.TemplateError(msg)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: DATE
    return env.from_string(source).render(messages=MESSAGES, add_generation_prompt=True,
                                          bos_token=bos, eos_token=eos)


def main():
    llama_cpp = import_llama_cpp()
    import gguf

    subprocess.check_call(["cargo", "run", "--release", "--quiet", "--", "pull"], cwd=ROOT)
    subprocess.check_call([os.path.join(ROOT, "scripts", "fetch_vocabs.sh")])
    out = {"llama_cpp_python": llama_cpp.__version__, "models": {}, "tokenize": {},
           "templates": [], "date": DATE}
    with tempfile.TemporaryDirectory() as tmp:
        for name in ARCHITECTURES:
            path = os.path.join(tmp, f"{name}.gguf")
            subprocess.check_call(["cargo", "run", "--release", "--quiet", "--example", "arch_model",
                                   "--", name, path], cwd=ROOT)
            with open(path, "rb") as f:
                sha = hashlib.sha256(f.read()).hexdigest()
            out["models"][name] = {"sha256": sha, "prompts": logits_and_greedy(path, PROMPTS, greedy=32)}
            print(f"{name}: done", flush=True)
    for vocab in VOCAB_NAMES:
        path = os.path.join(VOCABS, f"ggml-vocab-{vocab}.gguf")
        llm = llama_cpp.Llama(path, vocab_only=True, verbose=False)
        out["tokenize"][vocab] = [{"text": t, "ids": llm.tokenize(t.encode(), add_bos=True, special=True)}
                                  for t in TEXTS]
        reader = gguf.GGUFReader(path)
        field = reader.fields.get("tokenizer.chat_template")
        if field is not None:
            tokens = reader.fields["tokenizer.ggml.tokens"].contents()
            bos = tokens[reader.fields["tokenizer.ggml.bos_token_id"].contents()]
            eos = tokens[reader.fields["tokenizer.ggml.eos_token_id"].contents()]
            src = field.contents()
            out["templates"].append({"name": f"ggml-vocab-{vocab}.gguf", "bos": bos,
                                     "eos": eos, "prompt": render(src, bos, eos)})
    for fname in TEMPLATE_FILES:
        path = os.path.join(TEMPLATES, fname)
        with open(path) as f:
            src = f.read()
        bos, eos = ("<|begin_of_text|>", "<|eot_id|>") if "llama" in fname.lower() else ("<s>", "</s>")
        out["templates"].append({"name": f"templates/{fname}", "bos": bos, "eos": eos,
                                 "prompt": render(src, bos, eos)})
    write_fixture(OUT, out)


if __name__ == "__main__":
    main()
