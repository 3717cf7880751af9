#!/usr/bin/env python3
"""Convert a yibuild fixture model folder (Llama, bf16 safetensors, byte-level
BPE tokenizer.json) to an F16 GGUF that llama-perplexity loads, for the
eval_cpu benchmark's comparison. Needs `pip install gguf numpy`.

convert_hf_to_gguf.py refuses the fixture's tokenizer (its pre-tokenizer hash
is unknown to it), so this writes the same layout directly: llama metadata,
Q/K rows permuted to llama.cpp's RoPE order, norms in F32, matrices in F16.

Usage: hf_to_gguf_f16.py MODEL_DIR OUT.gguf
"""
import json
import struct
import sys
from pathlib import Path

import numpy as np
import gguf


def tensors(model_dir: Path):
    for shard in sorted(model_dir.glob("*.safetensors")):
        raw = shard.read_bytes()
        (n,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8 : 8 + n])
        base = 8 + n
        for name, info in header.items():
            if name == "__metadata__":
                continue
            a, b = info["data_offsets"]
            data = raw[base + a : base + b]
            if info["dtype"] == "BF16":
                bits = np.frombuffer(data, dtype=np.uint16).astype(np.uint32) << 16
                arr = bits.view(np.float32)
            elif info["dtype"] == "F16":
                arr = np.frombuffer(data, dtype=np.float16).astype(np.float32)
            else:
                arr = np.frombuffer(data, dtype=np.float32)
            yield name, arr.reshape(info["shape"])


def permute(w, heads):
    rows, cols = w.shape
    hd = rows // heads
    return w.reshape(heads, 2, hd // 2, cols).swapaxes(1, 2).reshape(rows, cols)


def main(model_dir: str, out: str):
    model_dir = Path(model_dir)
    cfg = json.loads((model_dir / "config.json").read_text())
    tok = json.loads((model_dir / "tokenizer.json").read_text())
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    w = gguf.GGUFWriter(out, "llama")
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_rope_freq_base(cfg["rope_theta"])
    w.add_rope_dimension_count(cfg["hidden_size"] // heads)
    w.add_vocab_size(cfg["vocab_size"])
    w.add_file_type(1)  # MOSTLY_F16
    vocab = sorted(tok["model"]["vocab"].items(), key=lambda kv: kv[1])
    tokens = [t for t, _ in vocab]
    types = [3 if t in ("<unk>", "<s>", "</s>") else 1 for t in tokens]
    tokens += [f"[PAD{i}]" for i in range(len(tokens), cfg["vocab_size"])]
    types += [5] * (cfg["vocab_size"] - len(types))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in tok["model"]["merges"]])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(True)
    names = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    per_layer = {
        "input_layernorm": "attn_norm",
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "post_attention_layernorm": "ffn_norm",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
    }
    for name, arr in tensors(model_dir):
        if name in names:
            gname = names[name]
        else:
            _, _, layer, rest = name.split(".", 3)
            part = rest.rsplit(".", 1)[0]
            gname = f"blk.{layer}.{per_layer[part]}.weight"
            if part == "self_attn.q_proj":
                arr = permute(arr, heads)
            elif part == "self_attn.k_proj":
                arr = permute(arr, kv)
        arr = arr.astype(np.float32 if arr.ndim == 1 else np.float16)
        w.add_tensor(gname, np.ascontiguousarray(arr))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    main(*sys.argv[1:])
