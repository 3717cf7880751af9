#!/bin/sh
# Perplexity throughput, yibuild's CPU backend vs llama-perplexity, on the same
# ~0.46 B model (bf16 safetensors for yibuild, converted to F16 GGUF for
# llama.cpp), context 512, same thread count and number of chunks.
#
# Usage: benches/eval_vs_llama_cpp.sh [LLAMA_BIN_DIR] [PYTHON]
#   LLAMA_BIN_DIR  directory with llama-perplexity (default /work/tools/llama.cpp/build/bin)
#   PYTHON         a python with `gguf` and `numpy` installed (default python3)
# Env: YIBUILD_BENCH_THREADS (default 2), YIBUILD_BENCH_CHUNKS (default 4).
set -eu
BIN=${1:-/work/tools/llama.cpp/build/bin}
PY=${2:-python3}
DIR=target/bench-eval
THREADS=${YIBUILD_BENCH_THREADS:-2}
CHUNKS=${YIBUILD_BENCH_CHUNKS:-4}
export YIBUILD_BENCH_THREADS=$THREADS YIBUILD_BENCH_CHUNKS=$CHUNKS
cargo bench --bench eval_cpu -- "$DIR"
[ -f "$DIR/model-0.5b-f16.gguf" ] || "$PY" benches/hf_to_gguf_f16.py "$DIR/model-0.5b" "$DIR/model-0.5b-f16.gguf"
# CPU seconds as well as wall time: on a shared machine only the former compares.
TIME=""
[ -x /usr/bin/time ] && TIME="/usr/bin/time -f llama-perplexity:%Us_user_%Ss_system_%es_wall"
$TIME "$BIN/llama-perplexity" -m "$DIR/model-0.5b-f16.gguf" -f "$DIR/text.txt" -c 512 -b 512 \
    -t "$THREADS" --chunks "$CHUNKS" 2>&1 | grep -E "seconds per pass|Final estimate|llama-perplexity:"
