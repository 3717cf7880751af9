#!/usr/bin/env bash
# Q4_K_M of a ~0.49 B-parameter bf16 Llama fixture: yibuild (from the
# safetensors folder) against llama-quantize (from the same weights as a BF16
# GGUF, the usual llama.cpp workflow), with wall time and peak RSS of each,
# then a tensor-by-tensor byte comparison of the two outputs.
#
#   benches/gguf_vs_llama_quantize.sh            # THREADS=2 WORK=/tmp/yibuild-gguf-bench
#
# Needs llama.cpp built under $LLAMA_CPP (see tests/golden/gguf/gen_golden.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
LLAMA_CPP="${LLAMA_CPP:-/work/tools/llama.cpp}"
WORK="${WORK:-/tmp/yibuild-gguf-bench}"
THREADS="${THREADS:-2}"
cargo bench --bench gguf_quantize --no-run 2>/dev/null
BIN="$(ls -t target/release/deps/gguf_quantize-* | grep -v '\.d$' | head -1)"
mkdir -p "$WORK"
if [ ! -f "$WORK/model/config.json" ]; then
    "$BIN" fixture "$WORK/model" bench
fi
# llama-quantize's input: the same weights as a BF16 GGUF (what
# `convert_hf_to_gguf.py --outtype bf16` produces; written here by yibuild).
[ -f "$WORK/model-BF16.gguf" ] || "$BIN" convert "$WORK/model" "$WORK/model-BF16.gguf" BF16 "$THREADS"
cat "$WORK"/model/*.safetensors "$WORK/model-BF16.gguf" > /dev/null   # warm the page cache for both

measure() { # name, command...
    local name="$1"; shift
    /usr/bin/time -v "$@" > "$WORK/$name.log" 2>&1
    local wall rss
    wall="$(grep 'Elapsed (wall clock)' "$WORK/$name.log" | awk '{print $NF}')"
    rss="$(grep 'Maximum resident set size' "$WORK/$name.log" | awk '{print $NF}')"
    printf '%-16s wall %8s   peak RSS %6d MiB\n' "$name" "$wall" "$((rss / 1024))"
}
echo "Q4_K_M, $THREADS threads, $(nproc) cores, model $(du -sh "$WORK/model" | cut -f1) of bf16 safetensors"
measure yibuild "$BIN" convert "$WORK/model" "$WORK/yibuild-Q4_K_M.gguf" Q4_K_M "$THREADS"
measure llama-quantize "$LLAMA_CPP/build/bin/llama-quantize" "$WORK/model-BF16.gguf" "$WORK/llama-Q4_K_M.gguf" Q4_K_M "$THREADS"
"$BIN" compare "$WORK/yibuild-Q4_K_M.gguf" "$WORK/llama-Q4_K_M.gguf"
