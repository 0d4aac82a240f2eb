"""Quest-style page selection (Tang et al. 2024): exact max bound per page, no eviction.

The whole prompt stays; every decode step scores each full page of ``page`` (16) tokens by
sum_i max(q_i r_max_i, q_i r_min_i) and reads the top pages plus the newest rows (from the
end of the last full page: no page is ever out of reach), ``B`` rows in all.  As Quest's
reference runs it: the first ``dense_layers`` (2) layers read the whole cache (outside the
budget), and every QUERY head picks its own pages of its KV head (``per_head='query'``;
``'group'`` sums the group's bounds, one choice per KV head).  It is MPCache's selection
with Quest's knobs: no static eviction, one level, exact bound, no sink, no cross-layer
sharing -- so the two differ only where the papers differ."""
from __future__ import annotations

from .mpcache_policy import MPCache

__all__ = ["Quest"]


class Quest(MPCache):
    name = "quest"
    presets = {}

    def __init__(self, budget=None, page: int = 16, dense_layers: int = 2,
                 per_head: str = "query", edges: str = "cover", fast: bool = True):
        super().__init__(budget, static_keep=1.0, bound="exact_max", levels=1, cluster=page,
                         sink=0, share_layers=False, dense_layers=dense_layers,
                         per_head=per_head, edges=edges, fast=fast)
