"""StreamingLLM (Xiao et al. 2023): attention sinks + a sliding window of recent tokens.

Which tokens are kept depends only on positions (public), so this policy needs no secret
selection at all under MPC: it slices.  Budget: ``sink`` first tokens + ``B - sink`` most
recent tokens (prompt or generated), exactly ``B`` rows per decode step.  The prompt is
physically evicted to that set at prefill (later steps slice the newest rows)."""
from __future__ import annotations

import numpy as np

from .. import functional as F
from .base import Policy

__all__ = ["StreamingLLM"]


class StreamingLLM(Policy):
    name = "streaming"

    def __init__(self, budget=None, sink: int = 4, fast: bool = True):
        super().__init__(budget, fast)
        self.sink = int(sink)

    def _rows(self, n: int):
        s = min(self.sink, self.B)
        return np.concatenate([np.arange(s), np.arange(n - (self.B - s), n)]).astype(np.int64)

    def prefill_done(self, cache, layer, stats):
        n = cache.length(layer)
        if n > self.B:
            cache.keep(layer, self._rows(n))

    def select(self, cache, layer, query):
        n = cache.length(layer)
        k, v = cache.keys(layer), cache.values(layer)
        if n <= self.B:
            return k, v
        s = min(self.sink, self.B)
        r = n - (self.B - s)
        return (F.concatenate([k[:, :s], k[:, r:]], axis=1),
                F.concatenate([v[:, :s], v[:, r:]], axis=1))
