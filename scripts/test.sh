#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what the tests need (the Python `gguf`
# package, used as an interop oracle), fetches the real model through `qsparse pull` (verified by
# sha256), then runs every test of the workspace in release mode and prints the total.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! python3 -c "import gguf" 2>/dev/null; then
    python3 -m pip install --quiet --disable-pip-version-check "gguf==0.19.0"
fi
cargo run --release --quiet -- pull
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --release 2>&1 | tee "$log"
scripts/count-tests.sh "$log"
