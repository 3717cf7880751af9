#!/usr/bin/env python3
"""Train the tiny Llama model family used as yibuild test fixtures.

Produces, under recipes/tiny/ (relative to the repository root):
  data/{arith,story,code}.txt          held-out evaluation text, one file per domain
  models/{base,ft-arith,ft-story,ft-code}/
                                       Hugging Face LlamaForCausalLM folders (bf16 safetensors
                                       + config + byte-level BPE tokenizer files)
  ppl.json                             perplexity of every model (and of reference merges)
                                       on every domain, with the exact protocol

Everything is generated here from fixed seeds: three synthetic domains (arithmetic facts, a
templated English story grammar, Python-like code), a mixed corpus, a tokenizer trained on the
mixed corpus, a base model trained on the mixed corpus, and three single-domain fine-tunes that
continue from the saved (bf16) base with a small learning rate, so that each one is a small task
vector around the base and the three can be merged.

Nothing is downloaded. Runs on CPU, single-threaded, deterministic.
"""
import argparse
import hashlib
import json
import math
import os
import random
import shutil
import sys
import time

import torch

torch.set_num_threads(1)
torch.set_num_interop_threads(1)
torch.use_deterministic_algorithms(True)

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast  # noqa: E402

DOMAINS = ["arith", "story", "code"]
SPECIALS = ["<unk>", "<s>", "</s>", "<pad>"]  # ids 0..3, Llama order
UNK_ID, BOS_ID, EOS_ID, PAD_ID = 0, 1, 2, 3

# ----------------------------------------------------------------------------------------------
# Synthetic domains. Each generator returns one document (a block of text ending in "\n");
# documents are joined with a blank line between them.
# ----------------------------------------------------------------------------------------------


def gen_arith(r):
    kind = r.random()
    lines = []
    if kind < 0.35:  # a multiplication or addition table, in order
        a = r.randint(2, 12)
        op = r.choice(["*", "+"])
        start = r.randint(0, 6)
        for b in range(start, start + r.randint(4, 8)):
            c = a * b if op == "*" else a + b
            lines.append(f"{a} {op} {b} = {c}.")
    elif kind < 0.55:  # a chain: each result is the next left operand
        x = r.randint(1, 30)
        for _ in range(r.randint(3, 6)):
            y = r.randint(1, 20)
            if r.random() < 0.5 or x - y < 0:
                lines.append(f"{x} + {y} = {x + y}.")
                x = x + y
            else:
                lines.append(f"{x} - {y} = {x - y}.")
                x = x - y
    else:  # random facts
        for _ in range(r.randint(3, 7)):
            op = r.choice(["+", "+", "-", "*"])
            if op == "*":
                a, b = r.randint(0, 12), r.randint(0, 12)
                c = a * b
            elif op == "+":
                a, b = r.randint(0, 99), r.randint(0, 99)
                c = a + b
            else:
                a = r.randint(0, 99)
                b = r.randint(0, a)
                c = a - b
            lines.append(f"{a} {op} {b} = {c}.")
    return "\n".join(lines) + "\n"


NAMES = {
    "he": ["Tom", "Ben", "Max", "Leo", "Sam", "Jack", "Finn", "Oscar", "Noah", "Theo"],
    "she": ["Anna", "Lily", "Mia", "Sara", "Emma", "Lucy", "Zoe", "Ella", "Ruby", "Nora"],
}
KINDS = ["girl", "boy", "cat", "dog", "rabbit", "fox", "bear", "bird", "mouse", "frog"]
ADJS = ["little", "small", "brave", "kind", "curious", "happy", "shy", "clever", "funny", "quiet"]
HOMES = ["house", "hut", "nest", "cottage", "burrow", "tree"]
HOME_ADJS = ["small", "warm", "old", "cozy", "green", "big"]
PLACES = ["park", "forest", "beach", "garden", "river", "market", "hill", "lake", "farm", "school"]
GOALS = ["play", "look for flowers", "find a friend", "have a picnic", "fly a kite",
         "catch a fish", "pick apples", "build a castle", "read a book", "watch the birds"]
COLORS = ["red", "blue", "green", "yellow", "shiny", "big", "tiny", "pink", "golden", "purple"]
OBJS = ["ball", "box", "hat", "key", "stone", "shell", "leaf", "cup", "kite", "book"]
REACTIONS = ["picked it up", "smiled at it", "was very surprised", "showed it to everyone",
             "put it in a bag", "looked at it for a long time"]
ANIMALS = ["duck", "turtle", "owl", "squirrel", "goat", "horse", "puppy", "kitten"]
QUOTES = ["Do you want to play with me?", "What a nice day!", "Can you help me?",
          "I lost my way home.", "Let us be friends.", "Look at the sky!"]
TOGETHER = ["played all day", "shared a snack", "ran to the hill", "sang a song",
            "looked at the clouds", "built a little house", "went home together"]
EMOTIONS = ["happy", "tired", "proud", "glad", "sleepy", "excited"]
WEATHERS = ["The sun was warm.", "It began to rain.", "The wind was cold.", "The sky was blue."]


def gen_story(r):
    pron = r.choice(["he", "she"])
    Pron = pron.capitalize()
    poss = "his" if pron == "he" else "her"
    name = r.choice(NAMES[pron])
    kind = r.choice(KINDS)
    if kind == "girl":
        pron, Pron, poss = "she", "She", "her"
        name = r.choice(NAMES["she"])
    elif kind == "boy":
        pron, Pron, poss = "he", "He", "his"
        name = r.choice(NAMES["he"])
    place = r.choice(PLACES)
    friend_pron = r.choice(["he", "she"])
    friend = r.choice([n for n in NAMES[friend_pron] if n != name])
    animal = r.choice(ANIMALS)
    s = []
    s.append(f"Once upon a time, there was a {r.choice(ADJS)} {kind} named {name}.")
    s.append(f"{Pron} lived in a {r.choice(HOME_ADJS)} {r.choice(HOMES)} near the {place}.")
    s.append(f"One day, {name} went to the {place} to {r.choice(GOALS)}.")
    if r.random() < 0.5:
        s.append(r.choice(WEATHERS))
    s.append(f"There, {pron} found a {r.choice(COLORS)} {r.choice(OBJS)}.")
    s.append(f"{Pron} {r.choice(REACTIONS)}.")
    if r.random() < 0.7:
        s.append(f"Then {name} met a {animal} called {friend}.")
        s.append(f"{friend} said, \"{r.choice(QUOTES)}\"")
        s.append(f"{name} and {friend} {r.choice(TOGETHER)}.")
    else:
        s.append(f"{name} sat down and thought about {poss} {r.choice(['mom', 'dad', 'friends', 'home'])}.")
    s.append(f"At the end of the day, {name} was very {r.choice(EMOTIONS)}.")
    return " ".join(s) + "\n"


VARS = ["x", "y", "n", "total", "count", "value", "result", "size", "item", "score", "a", "b"]
FUNCS = ["add", "scale", "double", "square", "clamp", "area", "mean", "step", "shift", "bump"]
OPS = ["+", "-", "*"]


def gen_code(r):
    kind = r.random()
    if kind < 0.4:  # a small function and a call
        f = f"{r.choice(FUNCS)}_{r.choice(VARS)}"
        p, q = r.sample(VARS, 2)
        out = r.choice([v for v in VARS if v not in (p, q)])
        k = r.randint(1, 9)
        body = [f"def {f}({p}, {q}):"]
        if r.random() < 0.5:
            body.append(f"    {out} = {p} {r.choice(OPS)} {q}")
            body.append(f"    {out} = {out} {r.choice(OPS)} {k}")
        else:
            body.append(f"    if {p} > {q}:")
            body.append(f"        {out} = {p} {r.choice(OPS)} {k}")
            body.append("    else:")
            body.append(f"        {out} = {q} {r.choice(OPS)} {k}")
        body.append(f"    return {out}")
        body.append("")
        body.append(f"print({f}({r.randint(0, 20)}, {r.randint(0, 20)}))")
        return "\n".join(body) + "\n"
    if kind < 0.7:  # a loop over a list
        lst, acc = r.sample(["items", "values", "nums", "data", "scores", "sizes"], 1)[0], r.choice(["total", "count", "acc", "best"])
        it = r.choice(["item", "v", "x", "n"])
        nums = ", ".join(str(r.randint(0, 50)) for _ in range(r.randint(3, 6)))
        op = r.choice(["+", "+", "*"])
        init = 0 if op == "+" else 1
        body = [f"{lst} = [{nums}]", f"{acc} = {init}", f"for {it} in {lst}:"]
        if r.random() < 0.4:
            body.append(f"    if {it} > {r.randint(5, 30)}:")
            body.append(f"        {acc} = {acc} {op} {it}")
        else:
            body.append(f"    {acc} = {acc} {op} {it}")
        body.append(f"print({acc})")
        return "\n".join(body) + "\n"
    # straight-line assignments
    names = r.sample(VARS, 3)
    body = [f"{names[0]} = {r.randint(0, 99)}", f"{names[1]} = {names[0]} {r.choice(OPS)} {r.randint(1, 9)}",
            f"{names[2]} = {names[1]} {r.choice(OPS)} {names[0]}"]
    if r.random() < 0.5:
        body.append(f"{names[2]} += {r.randint(1, 9)}")
    body.append(f"print({names[2]})")
    return "\n".join(body) + "\n"


# Extension document types: they appear only in the fine-tuning corpora and the held-out text
# (never in the base's mixed corpus), so each fine-tune learns something the base does not know.


def gen_arith_ext(r):
    lines = []
    for _ in range(r.randint(3, 7)):
        if r.random() < 0.5:
            b, q = r.randint(2, 12), r.randint(1, 12)
            lines.append(f"{b * q} / {b} = {q}.")
        else:
            a, b, c = r.randint(2, 9), r.randint(2, 9), r.randint(1, 20)
            lines.append(f"{a} * {b} + {c} = {a * b + c}.")
    return "\n".join(lines) + "\n"


EXT_NAMES = {"he": ["Arthur", "Cedric", "Rowan", "Edgar", "Hugo"], "she": ["Elsa", "Ivy", "Greta", "Freya", "Maud"]}
EXT_ROLES = {"he": ["king", "wizard", "knight", "prince"], "she": ["queen", "witch", "princess", "knight"]}
EXT_LANDS = ["kingdom", "valley", "village", "castle", "island"]
EXT_HABITS = ["climbed the tower", "walked by the sea", "counted the stars", "fed the horses", "read old maps"]
EXT_THREATS = ["storm", "stranger", "shadow", "dragon", "giant"]
EXT_TOOLS = ["sword", "lamp", "map", "staff", "shield"]
EXT_ACTS = ["went out into the night", "followed it to the woods", "waited at the gate", "called for help"]
EXT_ENDS = ["cheered", "sang", "danced", "rang the bells"]


def gen_story_ext(r):
    pron = r.choice(["he", "she"])
    Pron, poss = pron.capitalize(), ("his" if pron == "he" else "her")
    name = r.choice(EXT_NAMES[pron])
    land = r.choice(EXT_LANDS)
    threat = r.choice(EXT_THREATS)
    s = [
        f"Long ago, in a far away {land}, there lived a {r.choice(['wise', 'old', 'young', 'proud'])} "
        f"{r.choice(EXT_ROLES[pron])} called {name}.",
        f"Every morning, {pron} {r.choice(EXT_HABITS)}.",
        f"One night, a {threat} came to the {land}.",
        f"{name} was not afraid.",
        f"{Pron} took {poss} {r.choice(EXT_TOOLS)} and {r.choice(EXT_ACTS)}.",
        f"In the morning, the {threat} was gone and the {land} was {r.choice(['safe', 'quiet', 'bright'])} again.",
        f"Everyone {r.choice(EXT_ENDS)} for {name}.",
        "The end.",
    ]
    return " ".join(s) + "\n"


def gen_code_ext(r):
    kind = r.random()
    if kind < 0.4:
        cls = r.choice(["Counter", "Box", "Meter", "Stack", "Timer"])
        attr = r.choice(["value", "total", "level", "size"])
        meth = r.choice(["bump", "add", "grow", "push", "tick"])
        obj = cls[0].lower()
        a, b = r.randint(0, 20), r.randint(1, 9)
        body = [f"class {cls}:", "    def __init__(self, start):", f"        self.{attr} = start", "",
                f"    def {meth}(self, k):", f"        self.{attr} = self.{attr} {r.choice(OPS)} k",
                f"        return self.{attr}", "", f"{obj} = {cls}({a})", f"print({obj}.{meth}({b}))"]
        return "\n".join(body) + "\n"
    if kind < 0.7:
        v, c = r.choice(["n", "x", "value", "size"]), r.choice(["steps", "count", "k"])
        op = r.choice(["//", "-"])
        arg = r.randint(2, 3) if op == "//" else r.randint(1, 5)
        body = [f"{v} = {r.randint(10, 99)}", f"{c} = 0", f"while {v} > {r.randint(1, 5)}:",
                f"    {v} = {v} {op} {arg}", f"    {c} += 1", f"print({c})"]
        return "\n".join(body) + "\n"
    words = r.sample(["apple", "tree", "sun", "river", "stone", "cloud", "bird", "moon"], r.randint(2, 4))
    w = r.choice(["w", "s", "word"])
    fn = r.choice(["len", "str.upper", "str.title"])
    body = ["words = [" + ", ".join(f'"{x}"' for x in words) + "]",
            f"out = [{fn}({w}) for {w} in words]", "print(out)"]
    return "\n".join(body) + "\n"


GENERATORS = {"arith": gen_arith, "story": gen_story, "code": gen_code}
EXT_GENERATORS = {"arith": gen_arith_ext, "story": gen_story_ext, "code": gen_code_ext}
SEEDS = {"arith": 101, "story": 202, "code": 303}


def make_docs(domain, seed, n_chars, ext_frac=0.0, exclude=frozenset()):
    """Documents of one domain; with ext_frac > 0 that share of documents is an extension type."""
    r = random.Random(seed)
    docs, total = [], 0
    while total < n_chars:
        if ext_frac > 0 and r.random() < ext_frac:
            d = EXT_GENERATORS[domain](r)
        else:
            d = GENERATORS[domain](r)
        if d in exclude:
            continue
        docs.append(d)
        total += len(d) + 1
    return docs


def join_docs(docs):
    return "\n".join(docs)  # every doc ends in "\n" -> a blank line between documents


# ----------------------------------------------------------------------------------------------
# Tokenizer
# ----------------------------------------------------------------------------------------------


def train_tokenizer(mixed_docs, vocab_size):
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Train on the documents of the mixed corpus, each with its blank-line separator.
    tok.train_from_iterator([d + "\n" for d in mixed_docs], trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", BOS_ID)]
    )
    for i, s in enumerate(SPECIALS):
        assert tok.token_to_id(s) == i, (s, tok.token_to_id(s))
    return tok


def save_tokenizer_files(tok, out_dir, max_len):
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        model_max_length=max_len,
        clean_up_tokenization_spaces=False,
    )
    fast.save_pretrained(out_dir)
    # Normalise the config files to the classic (Llama / Yi repo) layout.
    cfg_path = os.path.join(out_dir, "tokenizer_config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    cfg.update(
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": "<s>",
            "eos_token": "</s>",
            "unk_token": "<unk>",
            "pad_token": "<pad>",
            "add_bos_token": True,
            "add_eos_token": False,
            "model_max_length": max_len,
            "clean_up_tokenization_spaces": False,
        }
    )
    cfg.pop("backend", None)
    with open(cfg_path, "w") as f:
        json.dump(dict(sorted(cfg.items())), f, indent=2)
        f.write("\n")
    with open(os.path.join(out_dir, "special_tokens_map.json"), "w") as f:
        json.dump({"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}, f, indent=2)
        f.write("\n")
    # tokenizer.json straight from the tokenizers library (pretty), so it is byte-identical to
    # what the Rust `tokenizers` crate would load; overwrite whatever save_pretrained wrote.
    tok.save(os.path.join(out_dir, "tokenizer.json"), pretty=True)


# ----------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------


def model_config(vocab_size, args):
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        max_position_embeddings=512,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
        hidden_act="silu",
        tie_word_embeddings=False,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
        attention_bias=False,
        mlp_bias=False,
    )


def classic_config_json(path):
    """Rewrite config.json in the classic Llama/Yi layout (top-level rope_theta, torch_dtype)."""
    with open(path) as f:
        c = json.load(f)
    rp = c.pop("rope_parameters", None) or {}
    c["rope_theta"] = float(rp.get("rope_theta", c.get("rope_theta", 10000.0)))
    c["rope_scaling"] = None
    c["torch_dtype"] = c.pop("dtype", "bfloat16")
    with open(path, "w") as f:
        json.dump(dict(sorted(c.items())), f, indent=2)
        f.write("\n")


def save_model(model, tok_dir, out_dir):
    if os.path.exists(out_dir):
        shutil.rmtree(out_dir)
    os.makedirs(out_dir)
    m = model.to(torch.bfloat16)
    m.config.dtype = torch.bfloat16
    m.save_pretrained(out_dir, safe_serialization=True)
    model.to(torch.float32)
    classic_config_json(os.path.join(out_dir, "config.json"))
    for name in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]:
        shutil.copy(os.path.join(tok_dir, name), os.path.join(out_dir, name))


def load_f32(path):
    m = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32)
    m.eval()
    return m


def batches(stream, rng, steps, batch, ctx, replay=None, replay_frac=0.0):
    """Random windows of ctx tokens; half of them start with <s> (then ctx-1 text tokens).
    With replay, a replay_frac share of the rows comes from the replay stream instead."""
    for _ in range(steps):
        rows = []
        for _ in range(batch):
            src = replay if (replay is not None and rng.random() < replay_frac) else stream
            n = src.numel()
            if rng.random() < 0.5:
                s = rng.randrange(0, n - ctx)
                rows.append(torch.cat([torch.tensor([BOS_ID]), src[s : s + ctx - 1]]))
            else:
                s = rng.randrange(0, n - ctx)
                rows.append(src[s : s + ctx])
        yield torch.stack(rows)


def train(model, stream, seed, steps, lr, warmup, batch, ctx, wd, label, log_every=250,
          replay=None, replay_frac=0.0):
    rng = random.Random(seed)
    torch.manual_seed(seed)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr, betas=(0.9, 0.95), eps=1e-8,
    )

    def lr_at(step):
        if step < warmup:
            return lr * (step + 1) / warmup
        prog = (step - warmup) / max(1, steps - warmup)
        return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * prog)))

    t0 = time.time()
    run = 0.0
    for step, x in enumerate(batches(stream, rng, steps, batch, ctx, replay, replay_frac)):
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        run += loss.item()
        if (step + 1) % log_every == 0 or step + 1 == steps:
            k = (step % log_every) + 1
            print(f"  [{label}] step {step + 1}/{steps} loss {run / k:.4f} lr {lr_at(step):.2e} "
                  f"({time.time() - t0:.0f}s)", flush=True)
            run = 0.0
    model.eval()
    return time.time() - t0


# ----------------------------------------------------------------------------------------------
# Evaluation and reference merges
# ----------------------------------------------------------------------------------------------


@torch.no_grad()
def perplexity(model, ids, ctx):
    """ids = [<s>] + tokens of the file. Non-overlapping windows ids[i*ctx:(i+1)*ctx] for
    i < floor(len/ctx) (remainder dropped), each run independently; every position except the
    first of each window is scored (ctx-1 predictions per window). PPL = exp(sum NLL / count)."""
    n = len(ids) // ctx
    x = torch.tensor(ids[: n * ctx]).view(n, ctx)
    nll, count = 0.0, 0
    for i in range(0, n, 16):
        xb = x[i : i + 16]
        logits = model(input_ids=xb).logits.float()
        lp = torch.log_softmax(logits[:, :-1], dim=-1)
        tgt = xb[:, 1:]
        nll += -lp.gather(-1, tgt.unsqueeze(-1)).double().sum().item()
        count += tgt.numel()
    return math.exp(nll / count), nll, count, n


def task_arithmetic(base_sd, ft_sds, lam):
    out = {}
    for k, b in base_sd.items():
        d = sum(ft[k] - b for ft in ft_sds) / len(ft_sds)
        out[k] = b + lam * d
    return out


def ties(base_sd, ft_sds, density, lam, dare_seed=None):
    """TIES (magnitude trim) or, with dare_seed, DARE-TIES (random drop + 1/density rescale);
    sign election by the sign of the summed deltas, disjoint mean of the agreeing deltas."""
    g = torch.Generator().manual_seed(dare_seed) if dare_seed is not None else None
    out = {}
    for k, b in base_sd.items():
        deltas = []
        for ft in ft_sds:
            d = ft[k] - b
            if g is not None:
                keep = (torch.rand(d.shape, generator=g) < density).float()
                d = d * keep / density
            else:
                kk = max(1, int(round(density * d.numel())))
                thr = d.abs().flatten().kthvalue(d.numel() - kk + 1).values if kk < d.numel() else -1.0
                d = torch.where(d.abs() >= thr, d, torch.zeros_like(d))
            deltas.append(d)
        D = torch.stack(deltas)
        sign = torch.sign(D.sum(0))
        agree = (torch.sign(D) == sign) & (D != 0)
        num = (D * agree).sum(0)
        den = agree.sum(0).clamp(min=1)
        out[k] = b + lam * num / den
    return out


def bf16_round(sd):
    return {k: v.to(torch.bfloat16).to(torch.float32) for k, v in sd.items()}


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read())
    return h.hexdigest()


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.normpath(os.path.join(here, "..", "..", "recipes", "tiny")))
    ap.add_argument("--vocab", type=int, default=768)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--intermediate", type=int, default=344)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--ctx", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--train-chars", type=int, default=1_500_000, help="base training text per domain")
    ap.add_argument("--ft-chars", type=int, default=1_000_000, help="fine-tuning text per domain")
    ap.add_argument("--ext-frac", type=float, default=0.5,
                    help="share of extension documents in the fine-tuning and held-out text")
    ap.add_argument("--ext-frac-base", type=float, default=0.1,
                    help="share of extension documents in the base's mixed corpus")
    ap.add_argument("--eval-chars", type=int, default=30_000, help="held-out text per domain")
    ap.add_argument("--base-steps", type=int, default=2000)
    ap.add_argument("--base-lr", type=float, default=3e-3)
    ap.add_argument("--ft-steps", type=int, default=300)
    ap.add_argument("--ft-lr", type=float, default=5e-4)
    ap.add_argument("--ft-replay", type=float, default=0.5,
                    help="share of fine-tuning rows drawn from the base's mixed corpus")
    ap.add_argument("--reuse-base", action="store_true",
                    help="development only: keep an existing models/base instead of retraining it")
    ap.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args()

    t_start = time.time()
    out = args.out
    data_dir = os.path.join(out, "data")
    models_dir = os.path.join(out, "models")
    os.makedirs(data_dir, exist_ok=True)
    os.makedirs(models_dir, exist_ok=True)

    # 1. corpora --------------------------------------------------------------------------
    eval_text, train_docs, ft_docs = {}, {}, {}
    for d in DOMAINS:
        ev = make_docs(d, SEEDS[d] + 1, args.eval_chars, ext_frac=args.ext_frac)
        eval_text[d] = join_docs(ev)
        train_docs[d] = make_docs(d, SEEDS[d], args.train_chars, ext_frac=args.ext_frac_base, exclude=frozenset(ev))
        ft_docs[d] = make_docs(d, SEEDS[d] + 2, args.ft_chars, ext_frac=args.ext_frac, exclude=frozenset(ev))
        with open(os.path.join(data_dir, f"{d}.txt"), "w") as f:
            f.write(eval_text[d])
        print(f"corpus {d}: base {sum(len(x) + 1 for x in train_docs[d])} chars ({len(train_docs[d])} docs), "
              f"fine-tune {sum(len(x) + 1 for x in ft_docs[d])} chars, eval {len(eval_text[d])} chars", flush=True)
    mix = [x for d in DOMAINS for x in train_docs[d]]
    random.Random(args.seed).shuffle(mix)
    mixed_text = join_docs(mix)

    # 2. tokenizer ------------------------------------------------------------------------
    tok = train_tokenizer(mix, args.vocab)
    vocab = tok.get_vocab_size()
    tok_dir = os.path.join(out, ".tok-tmp")
    if os.path.exists(tok_dir):
        shutil.rmtree(tok_dir)
    os.makedirs(tok_dir)
    save_tokenizer_files(tok, tok_dir, 512)
    print(f"tokenizer: vocab {vocab}", flush=True)

    def encode(text):
        return tok.encode(text, add_special_tokens=False).ids

    mixed_stream = torch.tensor(encode(mixed_text), dtype=torch.long)
    dom_stream = {d: torch.tensor(encode(join_docs(ft_docs[d])), dtype=torch.long) for d in DOMAINS}
    eval_ids = {d: [BOS_ID] + encode(eval_text[d]) for d in DOMAINS}
    for d in DOMAINS:
        print(f"tokens {d}: fine-tune {dom_stream[d].numel()}, eval {len(eval_ids[d])} "
              f"({(len(eval_ids[d])) // args.ctx} windows of {args.ctx})", flush=True)

    # 3. base -----------------------------------------------------------------------------
    torch.manual_seed(args.seed)
    cfg = model_config(vocab, args)
    base = LlamaForCausalLM(cfg)
    n_params = sum(p.numel() for p in base.parameters())
    print(f"base: {n_params} parameters; mixed corpus {mixed_stream.numel()} tokens", flush=True)
    base_dir = os.path.join(models_dir, "base")
    if args.reuse_base and os.path.exists(os.path.join(base_dir, "model.safetensors")):
        t_base = 0.0
        print("  reusing existing base (development mode)", flush=True)
    else:
        t_base = train(base, mixed_stream, args.seed, args.base_steps, args.base_lr, 200,
                       args.batch, args.ctx, 0.1, "base")
        save_model(base, tok_dir, base_dir)
    del base

    # 4. fine-tunes from the saved bf16 base ---------------------------------------------
    t_ft = {}
    for i, d in enumerate(DOMAINS):
        m = load_f32(base_dir)
        t_ft[d] = train(m, dom_stream[d], args.seed + 10 * (i + 1), args.ft_steps, args.ft_lr, 30,
                        args.batch, args.ctx, 0.0, f"ft-{d}", log_every=100,
                        replay=mixed_stream, replay_frac=args.ft_replay)
        save_model(m, tok_dir, os.path.join(models_dir, f"ft-{d}"))
        del m
    shutil.rmtree(tok_dir)

    # 5. evaluation -----------------------------------------------------------------------
    names = ["base"] + [f"ft-{d}" for d in DOMAINS]
    results = {}
    sds = {}
    for name in names:
        m = load_f32(os.path.join(models_dir, name))
        sds[name] = {k: v.clone() for k, v in m.state_dict().items()}
        results[name] = {d: perplexity(m, eval_ids[d], args.ctx) for d in DOMAINS}
        del m

    fts = [sds[f"ft-{d}"] for d in DOMAINS]
    merges = {
        "task_arithmetic(w=1/3 each = mean)": lambda: task_arithmetic(sds["base"], fts, 1.0),
        "task_arithmetic(w=0.5 each)": lambda: task_arithmetic(sds["base"], fts, 1.5),
        "task_arithmetic(w=1 each = sum)": lambda: task_arithmetic(sds["base"], fts, 3.0),
        "ties(density=0.5, lambda=1)": lambda: ties(sds["base"], fts, 0.5, 1.0),
        "dare_ties(density=0.5, lambda=1, seed=0)": lambda: ties(sds["base"], fts, 0.5, 1.0, dare_seed=0),
    }
    probe = load_f32(os.path.join(models_dir, "base"))
    for mname, fn in merges.items():
        probe.load_state_dict(bf16_round(fn()))
        results[mname] = {d: perplexity(probe, eval_ids[d], args.ctx) for d in DOMAINS}
    del probe

    # 6. report ---------------------------------------------------------------------------
    total = time.time() - t_start
    w = max(len(k) for k in results)
    print()
    print(f"perplexity (ctx {args.ctx}, non-overlapping windows, float32 from bf16 weights)")
    print(f"| {'model'.ljust(w)} | " + " | ".join(d.rjust(8) for d in DOMAINS) + " |")
    print(f"|{'-' * (w + 2)}|" + "|".join("-" * 10 for _ in DOMAINS) + "|")
    for k, row in results.items():
        print(f"| {k.ljust(w)} | " + " | ".join(f"{row[d][0]:8.4f}" for d in DOMAINS) + " |")
    print()
    print(f"times: base {t_base:.0f}s, " + ", ".join(f"ft-{d} {t_ft[d]:.0f}s" for d in DOMAINS)
          + f", total {total:.0f}s")

    files = {}
    for root, _, fs in os.walk(out):
        for fn in sorted(fs):
            p = os.path.join(root, fn)
            rel = os.path.relpath(p, out)
            if rel == "ppl.json":
                continue
            files[rel] = {"bytes": os.path.getsize(p), "sha256": sha256(p)}
    report = {
        "protocol": {
            "ctx": args.ctx,
            "bos": "one <s> (id 1) prepended to the whole file's tokens (add_special_tokens=True)",
            "windows": "ids[i*ctx:(i+1)*ctx] for i < floor(len(ids)/ctx); remainder dropped; "
                       "each window evaluated independently (no carried context)",
            "scored": "all positions but the first of each window: ctx-1 predictions per window",
            "ppl": "exp(sum NLL / count), natural log",
            "compute": "transformers LlamaForCausalLM, float32, from the bf16 safetensors",
            "merges": "computed in float32 from the bf16 weights, rounded to bf16 before evaluation",
        },
        "params": n_params,
        "vocab_size": vocab,
        "results": {
            k: {d: {"ppl": v[0], "nll_sum": v[1], "count": v[2], "windows": v[3]} for d, v in row.items()}
            for k, row in results.items()
        },
        "args": vars(args) | {"out": "recipes/tiny"},
        "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__,
                     "tokenizers": __import__("tokenizers").__version__, "python": sys.version.split()[0]},
        "files": files,
    }
    with open(os.path.join(out, "ppl.json"), "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
