"""Non-linear cases of ``mpcache bench ops`` (registered on import by bench/ops.py).

Inputs are drawn inside each function's documented range; references are float64 numpy.
One-hot outputs (argmax, top-k, gather from indices) compare exactly (error 0 or 1).
"""
from __future__ import annotations

import numpy as np

import mpcache

from .ops import Case, register


def _softmax(x):
    z = np.exp(x - x.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def _topk_ref(x, k):
    idx = np.sort(np.argsort(-x, kind="stable")[:k])
    out = np.zeros((k, x.size))
    out[np.arange(k), idx] = 1
    return out


def _onehot(n, idx):
    out = np.zeros((idx.size, n))
    out[np.arange(idx.size), idx] = 1
    return out


def _gelu(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


register(Case("lt", "64", lambda r: (r.uniform(-100, 100, 64), r.uniform(-100, 100, 64)),
              lambda p, a, b: a < b, lambda a, b: (a < b).astype(float)))
register(Case("max", "64", lambda r: (r.uniform(-100, 100, 64),),
              lambda p, a: a.max(axis=-1), lambda a: a.max(axis=-1)))
# with a public bound |x| <= 2^11 (SmolLM2's attention scores): 32-bit comparisons
register(Case("max", "64_bound2^11", lambda r: (r.uniform(-100, 100, 64),),
              lambda p, a: a.max(axis=-1, bound=2.0 ** 11), lambda a: a.max(axis=-1)))
register(Case("argmax", "1024", lambda r: (r.uniform(-100, 100, 1024),),
              lambda p, a: a.argmax(axis=-1), lambda a: _onehot(1024, np.array([a.argmax()]))[0]))
# with SmolLM2's public logit bound 2^9 (nn.private.act_bound_exponent): 30-bit comparisons
register(Case("argmax", "1024_bound2^9", lambda r: (r.uniform(-100, 100, 1024),),
              lambda p, a: a.argmax(axis=-1, bound=2.0 ** 9),
              lambda a: _onehot(1024, np.array([a.argmax()]))[0]))
for n in (1024, 4096):
    register(Case("top_k", f"{n}_k64", lambda r, n=n: (r.uniform(-100, 100, n),),
                  lambda p, a: a.top_k(64, axis=-1), lambda a: _topk_ref(a, 64)))
register(Case("onehot_gather", "k64_N1024_d64",
              lambda r: (r.integers(0, 1024, 64), r.uniform(-4, 4, (1024, 64))),
              lambda p, i, X: mpcache.gather(mpcache.one_hot(i, 1024), X),
              lambda i, X: X[i], integer=(0,)))
register(Case("gather_onehot", "k64_N1024_d64",
              lambda r: (_onehot(1024, r.integers(0, 1024, 64)).astype(np.int64),
                         r.uniform(-4, 4, (1024, 64))),
              lambda p, h, X: mpcache.gather(h, X), lambda h, X: h @ X, integer=(0,)))
register(Case("exp", "1024", lambda r: (r.uniform(-14, 0, 1024),),
              lambda p, a: a.exp(), np.exp))
register(Case("reciprocal", "1024", lambda r: (r.uniform(0.01, 100, 1024),),
              lambda p, a: a.reciprocal(), lambda a: 1 / a))
register(Case("rsqrt", "1024", lambda r: (r.uniform(0.001, 1e4, 1024),),
              lambda p, a: a.rsqrt(), lambda a: 1 / np.sqrt(a)))
# 12 x 102 and 12 x 2049: a gpt2 decoding step's rows at 2048 tokens with MPCache's 5% (its
# selected rows) and with the full cache; short rows are round-bound, long ones data-bound
for rows, n in ((1, 1024), (12, 1024), (12, 102), (12, 2049)):
    register(Case("softmax", f"{rows}x{n}", lambda r, rows=rows, n=n: (r.uniform(-20, 20, (rows, n)),),
                  lambda p, a: a.softmax(axis=-1), _softmax))
# SmolLM2's decoding step at 2048 cached tokens (9 query heads), unbounded and with the
# scores' public bound 2^11 (nn.private.score_bound_exponent): the row max and exp's clip
# on 32-bit comparisons
for bound in (None, 2.0 ** 11):
    register(Case("softmax", "9x2049" + ("" if bound is None else "_bound2^11"),
                  lambda r: (r.uniform(-20, 20, (9, 2049)),),
                  lambda p, a, bound=bound: a.softmax(axis=-1, score_bound=bound), _softmax))
register(Case("gelu", "3072", lambda r: (r.uniform(-8, 8, 3072),), lambda p, a: a.gelu(), _gelu))
register(Case("silu", "1536", lambda r: (r.uniform(-8, 8, 1536),), lambda p, a: a.silu(),
              lambda a: a / (1 + np.exp(-a))))
# SmolLM2's MLP with its public pre-activation bound 2^8 (nn.private.act_bound_exponent):
# 28-bit coarse threshold signs
register(Case("silu", "1536_bound2^8", lambda r: (r.uniform(-8, 8, 1536),),
              lambda p, a: a.silu(bound=2.0 ** 8), lambda a: a / (1 + np.exp(-a))))
