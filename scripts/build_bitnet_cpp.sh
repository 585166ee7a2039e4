#!/usr/bin/env bash
# Builds bitnet.cpp (microsoft/BitNet) as a measured peer for scripts/bench_bitnet.py, outside
# this repository: its October 2024 release (commit c82b5e6, llama.cpp fork
# Eddie-Wang1120/llama.cpp 406a5036), the I2_S kernels (x86), with clang as it requires.
#
#     scripts/build_bitnet_cpp.sh [DIR]      # default: ../peers/bitnet.cpp
#
# The sources come from $BITNET_SRC and $BITNET_LLAMA_SRC (git repositories holding those
# commits) when set, else from GitHub. Needs cmake and clang >= 18 (apt: clang-19).
set -euo pipefail
BITNET_COMMIT=c82b5e6
LLAMA_COMMIT=406a5036f9a8aaee9ec5e96e652f61691340fe95
dir=${1:-$(cd "$(dirname "$0")/../.." && pwd)/peers/bitnet.cpp}
cc=$(command -v clang-19 || command -v clang-18 || command -v clang || true)
cxx=$(command -v clang++-19 || command -v clang++-18 || command -v clang++ || true)
[ -n "$cc" ] && [ -n "$cxx" ] || { echo "bitnet.cpp needs clang >= 18 (apt-get install clang-19)" >&2; exit 1; }
command -v cmake >/dev/null || python3 -m pip install --quiet cmake
if [ ! -f "$dir/CMakeLists.txt" ]; then
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    src=${BITNET_SRC:-}
    llama=${BITNET_LLAMA_SRC:-}
    if [ -z "$src" ]; then
        git clone -q https://github.com/microsoft/BitNet "$tmp/bitnet"
        src=$tmp/bitnet
    fi
    if [ -z "$llama" ]; then
        git clone -q https://github.com/Eddie-Wang1120/llama.cpp "$tmp/llama"
        llama=$tmp/llama
    fi
    mkdir -p "$dir.part/3rdparty/llama.cpp"
    git -C "$src" archive "$BITNET_COMMIT" | tar x -C "$dir.part"
    # The fork's vocabulary files are not needed (and may be absent from a snapshot).
    git -C "$llama" archive "$LLAMA_COMMIT" -- . ':(exclude)models' ':(exclude)media' \
        | tar x -C "$dir.part/3rdparty/llama.cpp"
    # As its setup_env.py does for x86: the preset kernel header of a supported model.
    cp "$dir.part/preset_kernels/bitnet_b1_58-3B/bitnet-lut-kernels-tl2.h" "$dir.part/include/bitnet-lut-kernels.h"
    cp "$dir.part/preset_kernels/bitnet_b1_58-3B/kernel_config_tl2.ini" "$dir.part/include/kernel_config.ini"
    mv "$dir.part" "$dir"
fi
cmake -S "$dir" -B "$dir/build-i2s" -DBITNET_X86_TL2=OFF -DLLAMA_CURL=OFF \
    -DCMAKE_C_COMPILER="$cc" -DCMAKE_CXX_COMPILER="$cxx" >/dev/null
cmake --build "$dir/build-i2s" --config Release --target llama-bench llama-cli -j"$(nproc)"
echo "bitnet.cpp ($BITNET_COMMIT, llama.cpp $LLAMA_COMMIT) in $dir/build-i2s/bin"
