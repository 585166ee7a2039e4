#!/usr/bin/env bash
# Fuzz the GGUF reader and the model loader (fuzz/fuzz_targets), SECONDS each (default 60).
# Installs cargo-fuzz when missing (exit 2 if it cannot: a skip, not a failure). The corpus
# each target finds is kept in fuzz/corpus/TARGET for the next run, a crashing input in
# fuzz/artifacts/TARGET; the seeds: fuzz/seeds (every GGUF value type) and a small bitnet model
# with SmolLM2's tokenizer (examples/bitnet_model.rs; `qsparse pull` first).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked || exit 2
fi
mkdir -p fuzz/corpus/gguf_reader fuzz/corpus/model_loader
cp -n fuzz/seeds/*.gguf fuzz/corpus/gguf_reader/
seed=fuzz/corpus/model_loader/small_bitnet.gguf
if [ ! -f "$seed" ]; then
    cargo run --release --quiet --example bitnet_model -- "$seed"
fi
cd fuzz
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for target in gguf_reader model_loader; do
    echo "== fuzzing $target for $seconds s"
    # RUSTC_BOOTSTRAP: cargo-fuzz's sanitizer flags on a stable toolchain.
    set +e
    RUSTC_BOOTSTRAP=1 cargo fuzz run -O "$target" -- -max_total_time="$seconds" \
        -print_final_stats=1 >"$log" 2>&1
    rc=$?
    set -e
    grep -E "^(Done|stat::number_of_executed_units|stat::peak_rss_mb)|ERROR|SUMMARY|panicked" "$log" || true
    if [ "$rc" -ne 0 ]; then
        tail -n 40 "$log"
        if grep -q "failed to build fuzz script" "$log"; then
            echo "the fuzz target $target does not build (see above)" >&2
        else
            echo "fuzzing $target failed (exit $rc); the input is in fuzz/artifacts/$target" >&2
        fi
        exit 1
    fi
done
