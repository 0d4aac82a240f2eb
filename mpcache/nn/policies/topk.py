"""Token-level dynamic top-k: exact ``q . k`` over every cached token, keep the best B.

The accuracy upper bound of dynamic selection (no clustering, no bound approximation) and
the cost worst case under MPC (a top-k over all T tokens and a T-row one-hot gather every
step, per layer).  GQA: per KV head, scores summed over the group's query heads, which is
``(sum_g q_g) . k`` -- one matmul."""
from __future__ import annotations

from .base import Policy, select

__all__ = ["TokenTopK"]


class TokenTopK(Policy):
    name = "topk"

    def select(self, cache, layer, query):
        keys, values = cache.keys(layer), cache.values(layer)
        n = int(keys.shape[1])
        if n <= self.B:
            return keys, values
        nkv, hd = int(keys.shape[0]), int(keys.shape[2])
        qs = self.group_query(query, nkv).sum(axis=1).reshape(nkv, 1, hd)
        scores = (qs @ keys.transpose((0, 2, 1))).reshape(nkv, n)
        sel = select(scores, self.B, self.fast, ordered=False)
        return sel.gather(keys), sel.gather(values)
