#!/usr/bin/env bash
# End-to-end check against llama.cpp itself (not run in CI):
#  1. converts a tiny fixture model to F32, Q8_0 and Q4_K_M GGUF with yibuild;
#  2. loads the Q8_0 and Q4_K_M files in llama.cpp (`llama-simple`), which must
#     tokenize, evaluate and sample from them;
#  3. re-quantizes yibuild's F32 file with llama-quantize to Q4_K_M, Q6_K, Q3_K_M
#     and Q2_K and checks every tensor (type, shape and bytes) equals yibuild's
#     own output for the same preset;
#  4. reads yibuild's Q4_K_M file with the independent `gguf` Python package
#     (GGUFReader + its numpy dequantizers) and compares with the F32 file.
#
# Needs llama.cpp built under $LLAMA_CPP and a Python with `pip install gguf numpy`
# ($PYTHON, default /tmp/gguf-venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."
LLAMA_CPP="${LLAMA_CPP:-/work/tools/llama.cpp}"
PYTHON="${PYTHON:-/tmp/gguf-venv/bin/python}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
cargo bench --bench gguf_quantize --no-run 2>/dev/null
BIN="$(ls -t target/release/deps/gguf_quantize-* | grep -v '\.d$' | head -1)"
"$BIN" fixture "$WORK/tiny" tiny
for t in F32 Q8_0 Q4_K_M Q6_K Q3_K_M Q2_K; do
    "$BIN" convert "$WORK/tiny" "$WORK/yb-$t.gguf" "$t" 2 > /dev/null
done
for t in Q8_0 Q4_K_M; do
    echo "== llama-simple on yibuild's $t file"
    "$LLAMA_CPP/build/bin/llama-simple" -m "$WORK/yb-$t.gguf" -n 8 "the cat sat on" 2> "$WORK/simple-$t.log" \
        || { tail -20 "$WORK/simple-$t.log"; exit 1; }
    echo
    grep -E 'decoded|load_tensors|file type' "$WORK/simple-$t.log" | head -5 || true
done
for t in Q4_K_M Q6_K Q3_K_M Q2_K; do
    echo "== llama-quantize F32 -> $t vs yibuild $t"
    "$LLAMA_CPP/build/bin/llama-quantize" "$WORK/yb-F32.gguf" "$WORK/lq-$t.gguf" "$t" 2 > "$WORK/lq-$t.log" 2>&1
    "$BIN" compare "$WORK/yb-$t.gguf" "$WORK/lq-$t.gguf"
done
echo "== gguf-py reads yibuild's Q4_K_M file"
"$PYTHON" - "$WORK/yb-Q4_K_M.gguf" "$WORK/yb-F32.gguf" <<'PY'
import sys
import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize
q, f = GGUFReader(sys.argv[1]), GGUFReader(sys.argv[2])
arch = q.get_field("general.architecture").contents()
print("architecture:", arch, "| tensors:", len(q.tensors), "| tokens:", len(q.get_field("tokenizer.ggml.tokens").contents()))
for key in ["llama.context_length", "llama.embedding_length", "llama.block_count", "llama.attention.head_count_kv", "general.file_type"]:
    print(f"  {key} = {q.get_field(key).contents()}")
ref = {t.name: t for t in f.tensors}
for t in q.tensors:
    x = np.asarray(ref[t.name].data, dtype=np.float32).reshape(-1)
    y = dequantize(t.data, t.tensor_type).reshape(-1)
    rel = float(np.sqrt(((x - y) ** 2).sum() / (x ** 2).sum()))
    assert rel < 0.2, (t.name, t.tensor_type.name, rel)
    print(f"  {t.name:28s} {t.tensor_type.name:5s} {list(t.shape)} rel. RMSE {rel:.4f}")
PY
echo "all checks passed"
