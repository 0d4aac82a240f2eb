"""H2O (Zhang et al. 2023): heavy hitters by accumulated attention + a recent window.

Per KV head (scores summed over the group's query heads), the cache read at each decode
step is the ``R = round(recent_ratio * B)`` newest tokens plus the ``B - R`` older tokens
with the largest attention accumulated so far (prefill: column sums over ALL prompt
queries; decode: every step's probabilities are added).  Eviction is permanent, as in H2O's
greedy one-token-per-step rule: re-selecting the top ``B - R`` among the survivors plus the
token that just left the recent window drops exactly the minimum, and evicted tokens are
masked out for good.  The mask is a multiplication, not a branch, so it runs on secrets."""
from __future__ import annotations

import numpy as np

from .. import functional as F
from .base import ScoredPolicy

__all__ = ["H2O"]


class H2O(ScoredPolicy):
    name = "h2o"

    def __init__(self, budget=None, recent_ratio: float = 0.5, fast: bool = True):
        super().__init__(budget, fast)
        self.recent_ratio = float(recent_ratio)

    def reset(self, cache, n_prompt):
        super().reset(cache, n_prompt)
        n = cache.n_layers
        self.acc, self.evicted, self._sel = [None] * n, [None] * n, [None] * n

    def stat_windows(self, n_prompt):
        return (n_prompt,)                               # every prompt query

    def prefill_done(self, cache, layer, stats):
        acc = stats[self.n_prompt]
        self.acc[layer] = acc
        self.evicted[layer] = np.zeros(acc.shape)

    def _grow(self, layer, n):
        acc = self.acc[layer]
        extra = n - int(acc.shape[1])
        if extra > 0:
            z = np.zeros((int(acc.shape[0]), extra))
            self.acc[layer] = F.concatenate([acc, z], axis=1)
            self.evicted[layer] = F.concatenate([self.evicted[layer], z], axis=1)

    def select(self, cache, layer, query):
        self._grow(layer, cache.length(layer))           # bookkeeping for every cached row
        return super().select(cache, layer, query)

    def scores(self, cache, layer, query, n):
        r = min(self.B, max(1, int(round(self.recent_ratio * self.B))))
        c = n - r                                        # candidates: rows [0, c)
        acc, ev = self.acc[layer][:, :c], self.evicted[layer][:, :c]
        return acc * (1.0 - ev) - ev, self.B - r, c      # acc >= 0; evicted -> -1

    def chosen(self, layer, sel, c):
        if sel is not None:
            self.evicted[layer] = F.concatenate(
                [1.0 - sel.indicator(c), self.evicted[layer][:, c:]], axis=1)
        self._sel[layer] = None if sel is None else (sel, c)

    def after_step(self, cache, layer, probs):
        p = probs.sum(axis=1)                            # [n_kv, rows]: group summed
        acc = self.acc[layer]
        if self._sel[layer] is None:
            self.acc[layer] = acc + p
            return
        sel, c = self._sel[layer]
        h = sel.k
        self.acc[layer] = F.concatenate(
            [acc[:, :c] + sel.scatter(p[:, :h], c), acc[:, c:] + p[:, h:]], axis=1)
