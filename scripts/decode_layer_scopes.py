"""Per-scope rounds and bytes of ONE SmolLM2 decoder layer's decoding step over S cached
rows (full cache), with the model's own nn.layers modules and scopes (norm, linear, rope,
attn_scores, softmax, attn_context, mlp_act), plus the sample (argmax over the 49152-word
vocabulary and the reveal of the id); both protocols.  Random weights at SmolLM2's shapes,
both norms prescaled by 1/2, the cache prefix persisted as `bench decode` does.  Rounds
and bytes do not depend on the values, so x 30 layers (+ final norm, LM head, embed) is a
SmolLM2 step; memory stays small (one layer), unlike a full-model run at S = 2048.

    python scripts/decode_layer_scopes.py 2048 out.json [BOUND_LOG2 [ACT_LOG2 LOGIT_LOG2
        [COL_LOG2]]]

BOUND_LOG2 (optional): the attention scores' public bound exponent the private model
announces (SmolLM2: 11, ``nn.private.score_bound_exponent``); without it the softmax
compares on 64 bits.  ACT_LOG2, LOGIT_LOG2 (optional): the MLP pre-activation's and the
logits' exponents (SmolLM2: 8 and 9, ``nn.private.act_bound_exponent``); without them
SiLU and the vocabulary argmax compare on 64 bits.  COL_LOG2 (optional): the column-norm
bound of the norm-fed linears (SmolLM2: 4, ``nn.private.col_bound_exponent``): each norm
is then folded into its linear (``nn.layers.norm_then``).  The layer gets its attention
norm's prescaled input from the previous layer and makes the next one's (twins, as in a
model whose norms all prescale by 1/2).
"""
import json
import sys

import numpy as np

import mpcache
from mpcache.nn import layers as L
from mpcache.nn.kv_cache import KVCache
from mpcache.nn.transformer import Block

S = int(sys.argv[1])
BOUND = None if len(sys.argv) < 4 else 2.0 ** int(sys.argv[3])
ACT = None if len(sys.argv) < 6 else 2.0 ** int(sys.argv[4])
LOGIT = None if len(sys.argv) < 6 else 2.0 ** int(sys.argv[5])
COL = None if len(sys.argv) < 7 else 2.0 ** int(sys.argv[6])
H, NH, NKV, HD, M, V = 576, 9, 3, 64, 1536, 49152
rng = np.random.default_rng(0)
W = {n: rng.normal(size=s) / np.sqrt(s[0]) for n, s in
     dict(q=(H, NH * HD), k=(H, NKV * HD), v=(H, NKV * HD), o=(NH * HD, H),
          gate=(H, M), up=(H, M), down=(M, H)).items()}
G = {n: 1 + 0.1 * rng.normal(size=H) for n in ("n1", "n2")}
KV = rng.normal(size=(2, NKV, S, HD))
x0 = rng.normal(size=(1, H))
logits = rng.normal(size=(1, V))


def job(p):
    sh = lambda a: p.share(a if p.id == 1 else None, 1)  # noqa: E731
    w = {n: sh(a).persist() if a.ndim == 2 else sh(a) for n, a in W.items()}
    g = {n: sh(a) for n, a in G.items()}
    kv = sh(KV)
    x = p.share(x0 if p.id == 0 else None, 0)
    z = p.share(logits if p.id == 0 else None, 0)
    rope = L.RoPE(HD, max_positions=S + 8)
    attn = L.Attention(L.Linear(w["q"]), L.Linear(w["k"]), L.Linear(w["v"]), L.Linear(w["o"]),
                       NH, NKV, HD, rope=rope)
    attn.score_bound = BOUND
    blk = Block(L.RMSNorm(g["n1"], prescale=0.5), attn, L.RMSNorm(g["n2"], prescale=0.5),
                L.SwiGLU(L.Linear(w["gate"]), L.Linear(w["up"]), L.Linear(w["down"])))
    blk.mlp.act_bound = ACT
    blk.col_bound = COL
    if attn.qkv is not None:            # as Decoder._fold_norm_gains (setup, not measured)
        L.fold_norm_gain(blk.attn_norm, attn.qkv)
        L.fold_norm_gain(blk.mlp_norm, blk.mlp.gate_up)
    cache = KVCache(1)
    cache.append(0, kv[0], kv[1], np.arange(S))
    cache.persist()                     # as bench decode: the prefix persisted (add2)
    xs = x * 0.5                        # the previous layer made it beside its down-proj
    with p.scope("layer"):              # (a steady-state layer: twins in and out)
        y, _ = blk(x, np.array([S]), cache, 0, xs=xs, next_k=1)
    with p.scope("sample"):
        tok = z.argmax(axis=-1, bound=LOGIT)
        p.reveal(tok @ np.arange(V), to=0)
    return p.reveal(y, to=0)


out = {}
for proto in ("rep3", "add2"):
    res = mpcache.Session(proto).run(job)
    rows = {}
    for sub, c in res.breakdown_under("layer").items():
        rows[sub] = {k: c[k] for k in ("rounds", "bytes_sent", "offline_bytes_sent")}
    for name in ("layer", "sample"):
        c = res.scope(name)
        rows[name] = {k: c[k] for k in ("rounds", "bytes_sent", "offline_bytes_sent")}
    out[proto] = rows
    print(proto, json.dumps(rows))
json.dump(out, open(sys.argv[2], "w"), indent=1)
