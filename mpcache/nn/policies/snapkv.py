"""SnapKV (Li et al. 2024): the last ``window`` prompt queries vote, prefill only.

Per KV head (group summed), each prefix token is scored by the attention the observation
window pays it, smoothed by a 1-D pooling (``kernel``, max or avg) so neighbours of a hit
survive together.  Scores are fixed after prefill.  Budget: attention reads the window, all
generated tokens, and the best ``B - window - n_generated`` prefix tokens (nested as the
answer grows), so exactly ``B`` rows per step.  The window is capped at ``B // 2``."""
from __future__ import annotations

from .. import functional as F
from .base import ScoredPolicy, budget_tokens

__all__ = ["SnapKV"]


def pool1d(x, kernel: int, mode: str = "max"):
    """Same-length 1-D pooling along the last axis (edges padded by repetition)."""
    if kernel <= 1:
        return x
    n, pad = int(x.shape[-1]), kernel // 2
    left = [x[:, :1]] * pad
    right = [x[:, n - 1:]] * (kernel - 1 - pad)
    padded = F.concatenate(left + [x] + right, axis=1)
    shifts = [padded[:, i:i + n] for i in range(kernel)]
    if mode == "max":
        return F.max(F.stack(shifts, axis=0), axis=0)
    if mode == "avg":
        return F.stack(shifts, axis=0).sum(axis=0) * (1.0 / kernel)
    raise ValueError(f"pool mode {mode!r}")


class SnapKV(ScoredPolicy):
    name = "snapkv"

    def __init__(self, budget=None, window: int = 32, kernel: int = 7, pool: str = "max",
                 fast: bool = True):
        super().__init__(budget, fast)
        self.window, self.kernel, self.pool = int(window), int(kernel), pool

    def _w(self, n_prompt):
        return max(1, min(self.window, budget_tokens(self.budget, n_prompt) // 2, n_prompt - 1))

    def reset(self, cache, n_prompt):
        super().reset(cache, n_prompt)
        self.score = [None] * cache.n_layers

    def stat_windows(self, n_prompt):
        return (self._w(n_prompt),)

    def prefill_done(self, cache, layer, stats):
        w = self._w(self.n_prompt)
        self.score[layer] = pool1d(stats[w][:, :self.n_prompt - w], self.kernel, self.pool)

    def _prefix(self) -> int:
        return self.n_prompt - self._w(self.n_prompt)     # prefix rows [0, p) compete

    def select(self, cache, layer, query):
        n = cache.length(layer)
        if n > self.B and self.B - (n - self._prefix()) <= 0:   # the answer outgrew the
            return cache.keys(layer)[:, n - self.B:], cache.values(layer)[:, n - self.B:]
        return super().select(cache, layer, query)              # budget: the newest B rows

    def scores(self, cache, layer, query, n):
        p = self._prefix()
        return self.score[layer], self.B - (n - p), p
