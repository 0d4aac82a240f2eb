"""Quest-style page selection (Tang et al. 2024): exact max bound per page, no eviction.

The whole prompt stays; every decode step scores each full page of ``page`` (16) tokens by
sum_i max(q_i r_max_i, q_i r_min_i) (per KV head, group summed) and reads the top pages
plus the newest ``W`` rows (covering the partial page), ``B`` rows in all.  It is MPCache's
selection with the knobs Quest uses: no static eviction, one level, exact bound, no sink,
no cross-layer sharing -- so the two differ only where the papers differ."""
from __future__ import annotations

from .mpcache_policy import MPCache

__all__ = ["Quest"]


class Quest(MPCache):
    name = "quest"

    def __init__(self, budget=None, page: int = 16, fast: bool = True):
        super().__init__(budget, static_keep=1.0, bound="exact_max", levels=1, cluster=page,
                         sink=0, share_layers=False, fast=fast)
