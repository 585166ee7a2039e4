#!/usr/bin/env bash
# Run the kernels' tests (scalar and NEON paths) for aarch64 under qemu-user.
# Exit 2 when the target or the cross tools cannot be installed (the caller reports a skip).
set -uo pipefail
cd "$(dirname "$0")/.."

if ! rustup target add aarch64-unknown-linux-gnu >/dev/null 2>&1; then
    echo "cannot install the aarch64-unknown-linux-gnu Rust target"; exit 2
fi
if ! command -v aarch64-linux-gnu-gcc >/dev/null || ! command -v qemu-aarch64 >/dev/null; then
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user; } >/dev/null 2>&1; then
        echo "cannot install gcc-aarch64-linux-gnu / qemu-user with apt-get"; exit 2
    fi
fi
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu"
set -e
cargo test -p qsparse-kernels --release --target aarch64-unknown-linux-gnu
