"""Token-level dynamic top-k: exact ``q . k`` over every cached token, keep the best B.

The accuracy upper bound of dynamic selection (no clustering, no bound approximation) and
the cost worst case under MPC (a top-k over all T tokens and a T-row one-hot gather every
step, per layer).  GQA: ``per_head='group'`` (default) selects per KV head with the
group's scores summed, ``(sum_g q_g) . k`` -- one matmul; ``'query'`` lets every query head
pick its own B rows of its KV head.  ``dense_layers``: the first layers read everything."""
from __future__ import annotations

from .base import ScoredPolicy

__all__ = ["TokenTopK"]


class TokenTopK(ScoredPolicy):
    name = "topk"

    def __init__(self, budget=None, per_head: str = "group", dense_layers: int = 0,
                 fast: bool = True):
        super().__init__(budget, fast)
        if per_head not in ("group", "query"):
            raise ValueError("per_head must be 'group' or 'query'")
        self.per_head, self.dense_layers = per_head, int(dense_layers)

    def scores(self, cache, layer, query, n):
        if layer < self.dense_layers:
            return None
        keys = cache.keys(layer)
        nkv, hd = int(keys.shape[0]), int(keys.shape[2])
        qg = self.group_query(query, nkv)
        if self.per_head == "query":
            g = int(qg.shape[1])
            scores = (qg @ keys.transpose((0, 2, 1))).reshape(nkv * g, n)   # per query head
        else:
            qs = qg.sum(axis=1).reshape(nkv, 1, hd)
            scores = (qs @ keys.transpose((0, 2, 1))).reshape(nkv, n)
        return scores, self.B, n
