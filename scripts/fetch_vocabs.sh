#!/usr/bin/env bash
# llama.cpp's tokenizer vocabularies with its own test cases (ggml-vocab-NAME.gguf + .inp/.out)
# and its copies of models' chat templates (templates/*.jinja), taken from the llama-cpp-python source package on PyPI (checked by sha256), into
# $QSPARSE_VOCABS (default ~/.cache/qsparse/vocabs). tests/vocab_cases.rs reads them.
set -euo pipefail
VERSION=0.3.36
# Bumped when what is extracted changes.
LAYOUT=2
SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
dest=${QSPARSE_VOCABS:-$HOME/.cache/qsparse/vocabs}
[ -f "$dest/.complete-$VERSION-$LAYOUT" ] && exit 0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --disable-pip-version-check --no-deps \
    --no-binary llama-cpp-python --dest "$tmp" "llama-cpp-python==$VERSION"
echo "$SHA256  $tmp/llama_cpp_python-$VERSION.tar.gz" | sha256sum -c --quiet
mkdir -p "$tmp/out"
tar -xzf "$tmp/llama_cpp_python-$VERSION.tar.gz" -C "$tmp/out" --strip-components=4 \
    --wildcards "llama_cpp_python-$VERSION/vendor/llama.cpp/models/ggml-vocab-*" \
    "llama_cpp_python-$VERSION/vendor/llama.cpp/models/templates/*.jinja"
mkdir -p "$dest/templates"
mv "$tmp"/out/ggml-vocab-* "$dest"/
mv "$tmp"/out/templates/*.jinja "$dest/templates/"
touch "$dest/.complete-$VERSION-$LAYOUT"
echo "llama.cpp vocabularies in $dest"
