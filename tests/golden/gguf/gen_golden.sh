#!/usr/bin/env bash
# Regenerates the golden quantization vectors with llama.cpp's ggml.
#
# The committed vectors were made with the llama.cpp of llama-cpp-python 0.3.36 (ggml 0.25.3).
# LLAMA_CPP defaults to /work/tools/llama.cpp: the llama.cpp sources vendored in
# llama-cpp-python's source distribution (`pip download --no-deps --no-binary :all:
# llama-cpp-python`, then `vendor/llama.cpp`), configured and built with
#   cmake -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF -DBUILD_SHARED_LIBS=ON
#   cmake --build build --target llama-quantize llama-perplexity llama-simple
# ggml-base (which holds the reference quantizers) is compiled without FMA or
# fast-math, so its float arithmetic is the plain IEEE order the Rust port follows.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
LLAMA_CPP="${LLAMA_CPP:-/work/tools/llama.cpp}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
cc -O2 -std=c11 -o "$tmp/gen_golden" "$here/gen_golden.c" \
    -I "$LLAMA_CPP/ggml/include" -L "$LLAMA_CPP/build/bin" -lggml-base -lm \
    -Wl,-rpath,"$LLAMA_CPP/build/bin"
cd "$here"
"$tmp/gen_golden"
ls -l "$here"
