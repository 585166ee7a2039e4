#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what the tests need (the Python `gguf` and
# `openai` packages, used as oracles; PyTorch, which `qsparse finetune` trains with), fetches the real model through `qsparse pull` (verified by
# sha256) and llama.cpp's tokenizer vocabularies (scripts/fetch_vocabs.sh), then runs every test of the workspace in release mode and prints the total.
set -euo pipefail
cd "$(dirname "$0")/.."

# Python oracles: gguf-py (GGUF interop) and the official openai client (the server tests).
if ! python3 -c "import gguf" 2>/dev/null; then
    python3 -m pip install --quiet --disable-pip-version-check "gguf==0.19.0"
fi
if ! python3 -c "import openai" 2>/dev/null; then
    python3 -m pip install --quiet --disable-pip-version-check "openai==2.8.1"
fi
# `qsparse finetune` trains with PyTorch (CPU); its tests train small models.
if ! python3 -c "import torch" 2>/dev/null; then
    python3 -m pip install --quiet --disable-pip-version-check "torch==2.15.0"
fi
# `sweep --plot` lays its text out with a TrueType font (tests draw an SVG).
if ! ls /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf /usr/share/fonts/TTF/DejaVuSans.ttf \
    /usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf >/dev/null 2>&1 \
    && [ -z "${QSPARSE_FONT:-}" ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    apt-get install -y -qq fonts-dejavu-core >/dev/null || echo "note: could not install a font"
fi
cargo run --release --quiet -- pull
# llama.cpp's tokenizer vocabularies and test cases (tests/vocab_cases.rs).
scripts/fetch_vocabs.sh
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --release 2>&1 | tee "$log"
scripts/count-tests.sh "$log"
