"""Seconds of a SmolLM2 decoding step's pair of MPCache top-ks at 2048 cached tokens, in
process (rep3): 9 query heads choosing 64 of 128 coarse and 51 of 512 fine clusters,
unordered, ``policies.base.DECODE_TOPK_BUDGET`` comparisons per level; best of 3 x 4
pairs, the slowest party.

    python scripts/time_topk_pair.py [CONTEXT]
"""
import sys
import time

import numpy as np

import mpcache
from mpcache.functions.topk import top_k
from mpcache.nn.policies.base import DECODE_TOPK_BUDGET as B

n = int(sys.argv[1]) if len(sys.argv) > 1 else 2048
rng = np.random.default_rng(0)
coarse, fine = rng.normal(size=(9, n // 16)), rng.normal(size=(9, n // 4))
kc, kf = n // 32, round(0.1 * n / 4)


def job(p):
    A = p.share(coarse if p.id == 0 else None, 0)
    F = p.share(fine if p.id == 0 else None, 0)
    top_k(A, kc, ordered=False, budget=B), top_k(F, kf, ordered=False, budget=B)   # warm
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(4):
            top_k(A, kc, ordered=False, budget=B), top_k(F, kf, ordered=False, budget=B)
        best = min(best, (time.perf_counter() - t) / 4)
    return best


print(f"context {n}: a pair of top-ks {1000 * max(mpcache.Session('rep3').run(job).outputs):.1f} ms")
