"""MPCache (arXiv 2501.06807): static eviction at prefill + clustered dynamic selection.

Prefill (static, once per layer): each prompt token is scored by the MEAN attention the last
``static_window`` (20%) of prompt queries pay it (mean over the window queries that can see
it, so tokens inside the window are not penalised for having fewer observers), summed over
all heads ("unimportant to all"); the lowest are evicted, ``static_keep`` (50%) of the prompt
stays, always including the first ``sink`` tokens and the last ``2 * cluster``.  The kept
rows stay in position order (top-k one-hot rows are ascending), then are compacted.

Decode (every step, per KV head): rows after the sink are grouped into clusters of
``cluster`` (16) neighbours; when a cluster fills up its per-dimension key extrema
r_max, r_min are stored once, plus the linearised bracket ``a r_max + (1 - a) r_min``
(``a`` = 0.6), so the cluster score ``q . bracket`` is ONE matmul (``bound='linear'``).
Ablations: ``bound='exact_max'`` is Quest's sum_i max(q_i r_max_i, q_i r_min_i), written as
``q+ . r_max + q- . r_min`` (two matmuls and a ReLU of q, still no comparison of keys);
``'mean_key'`` scores ``q . mean(K_cluster)``.  ``levels=2``: first choose coarse clusters
of ``coarse`` (32) tokens, ``coarse_factor`` (2) times as many tokens as needed, then the
fine clusters inside them.  GQA: one selection per KV head with the group's query heads'
scores SUMMED -- for the linear bound that is ``(sum_g q_g) . bracket``, still one matmul,
and a KV row chosen for the group serves every query head that reads it (max over heads
would need comparisons under MPC).  ``share_layers``: layers 0 and 1 select alone, then
each adjacent pair (2,3), (4,5)... reuses the first layer's static keep set and per-step
selection (half the selection cost).

Budget (exact): attention reads ``B = round(budget * T_prompt)`` rows per step: the sink
(``sink`` rows), ``k`` selected clusters and the newest ``W`` rows, with
``k = (B - sink - cluster) // cluster`` and ``W = B - sink - k * cluster`` in
[cluster, 2 cluster) -- the recent window always covers the newest (partial) cluster, and
only clusters entirely before it compete.  Static eviction does not spend the budget: it
shrinks the pool the dynamic selection scans (cost), ``static_keep * T`` rows.
"""
from __future__ import annotations

import math

import numpy as np

from .. import functional as F
from .base import BIG, Policy, select, window_counts

__all__ = ["MPCache", "BOUNDS"]

BOUNDS = ("linear", "exact_max", "mean_key")


class MPCache(Policy):
    name = "mpcache"

    def __init__(self, budget=None, static_keep: float = 0.5, static_window: float = 0.2,
                 a: float = 0.6, bound: str = "linear", levels: int = 2, cluster: int = 16,
                 coarse: int = 32, coarse_factor: float = 2.0, sink: int | None = None,
                 share_layers: bool = True, static_score: str = "max", fast: bool = True):
        super().__init__(budget, fast)
        if bound not in BOUNDS:
            raise ValueError(f"bound must be one of {BOUNDS}")
        if levels not in (1, 2):
            raise ValueError("levels must be 1 or 2")
        if levels == 2 and coarse % cluster:
            raise ValueError("coarse cluster size must be a multiple of the fine one")
        self.static_keep, self.static_window = float(static_keep), float(static_window)
        self.a, self.bound, self.levels = float(a), bound, int(levels)
        self.cluster, self.coarse, self.coarse_factor = int(cluster), int(coarse), coarse_factor
        self.sink = self.cluster if sink is None else int(sink)
        modes = {True: "head", False: "off", "head": "head", "layer": "layer", "off": "off"}
        if share_layers not in modes:
            raise ValueError("share_layers must be True/'head', 'layer' or False/'off'")
        self.share_layers = modes[share_layers]
        if static_score not in ("max", "mean"):
            raise ValueError("static_score must be 'max' or 'mean'")
        self.static_score = static_score

    def __repr__(self):
        return (f"{type(self).__name__}(budget={self.budget}, static_keep={self.static_keep}, "
                f"a={self.a}, bound={self.bound!r}, levels={self.levels}, "
                f"cluster={self.cluster}, coarse={self.coarse}, share={self.share_layers!r})")

    # ------------------------------------------------------------- bookkeeping
    def reset(self, cache, n_prompt):
        super().reset(cache, n_prompt)
        n = cache.n_layers
        self._static, self._dyn = [None] * n, [None] * n
        self._bnd = [{"n": 0, "nc": 0} for _ in range(n)]

    def leader(self, layer: int) -> int:
        """Layer whose selection ``layer`` uses: itself for 0, 1; then pairs (2,3), ..."""
        if self.share_layers == "off" or layer < 2:
            return layer
        return layer - (layer % 2)

    def _window(self, n):
        return min(n, max(1, math.ceil(self.static_window * n)))

    def _stat(self, n):
        w = self._window(n)
        return ("max", w) if self.static_score == "max" else w

    def stat_windows(self, n_prompt):
        return (self._stat(n_prompt),) if self.static_keep < 1.0 else ()

    # ------------------------------------------------------------- static eviction
    def prefill_done(self, cache, layer, stats):
        n = cache.length(layer)
        m = max(int(round(self.static_keep * n)), min(n, self.sink + 2 * self.cluster))
        if m >= n:
            return
        lead = self.leader(layer)
        if lead == layer:
            w = self._window(n)
            if self.static_score == "max":            # unimportant to ALL window queries
                score = F.max(stats[self._stat(n)], axis=0)                  # [n]
            else:                                     # mean attention of the window
                score = stats[w].sum(axis=0) * (1.0 / window_counts(n, w))
            force = np.zeros(n)
            force[:self.sink] = BIG
            force[n - 2 * self.cluster:] = BIG
            self._static[layer] = select((score + force).reshape(1, n), m, self.fast)
        sel = self._static[lead]
        if sel.index is not None:
            cache.keep(layer, sel.index[0])
            return
        oh = sel.onehot[0]                                                  # [m, n]
        pos = cache.positions(layer)
        if F.is_plain(oh):
            pos = np.rint(oh @ pos.astype(np.float64)).astype(np.int64)
        else:   # secret choice: positions unknown; decode steps never need them
            pos = np.arange(m, dtype=np.int64)
        cache.replace(layer, oh @ cache.keys(layer), oh @ cache.values(layer), pos)

    # ------------------------------------------------------------- cluster bounds
    def _update_bounds(self, layer, keys):
        """Extrema of every cluster that filled up since the last step (computed once)."""
        st, c, s = self._bnd[layer], self.cluster, self.sink
        nkv, n, d = int(keys.shape[0]), int(keys.shape[1]), int(keys.shape[2])
        full = max(0, (n - s) // c)
        if full > st["n"]:
            blk = keys[:, s + st["n"] * c: s + full * c].reshape(nkv, full - st["n"], c, d)
            new = {"rmax": F.max(blk, axis=2), "rmin": -F.max(-blk, axis=2)}
            if self.bound == "mean_key":
                new["mean"] = F.mean(blk, axis=2)
            self._append(st, "f", new)
            st["n"] = full
        m = self.coarse // c
        if self.levels == 2 and st["n"] // m > st["nc"]:
            lo, hi = st["nc"], st["n"] // m
            def sub(x):
                return x[:, lo * m: hi * m].reshape(nkv, hi - lo, m, d)
            new = {"rmax": F.max(sub(st["f"]["rmax"]), axis=2),
                   "rmin": -F.max(-sub(st["f"]["rmin"]), axis=2)}
            if self.bound == "mean_key":
                new["mean"] = F.mean(sub(st["f"]["mean"]), axis=2)
            self._append(st, "c", new)
            st["nc"] = hi

    def _append(self, st, level, new):
        if self.bound == "linear":
            new["lin"] = new["rmax"] * self.a + new["rmin"] * (1.0 - self.a)
        old = st.get(level)
        st[level] = new if old is None else {
            key: F.concatenate([old[key], new[key]], axis=1) for key in new}

    def _operands(self):
        return {"linear": ("lin",), "exact_max": ("rmax", "rmin"),
                "mean_key": ("mean",)}[self.bound]

    def _score(self, qg, ops):
        """Cluster scores ``[n_kv, n]`` for grouped query ``qg`` [n_kv, g, d]."""
        nkv, d = int(qg.shape[0]), int(qg.shape[2])
        qs = qg.sum(axis=1).reshape(nkv, 1, d)
        if self.bound == "exact_max":
            qp = F.relu(qg).sum(axis=1).reshape(nkv, 1, d)
            out = qp @ ops["rmax"].transpose((0, 2, 1)) + \
                (qs - qp) @ ops["rmin"].transpose((0, 2, 1))
        else:
            out = qs @ ops[self._operands()[0]].transpose((0, 2, 1))
        return out.reshape(nkv, int(out.shape[2]))

    # ------------------------------------------------------------- dynamic selection
    def plan(self, n: int) -> dict:
        """Public layout of one decode step over ``n`` cached rows (no secrets involved)."""
        b, c = self.B, self.cluster
        s = min(self.sink, b)
        k = max(0, (b - s - c) // c)
        w = b - s - k * c
        end = n - w
        p = {"s": s, "k": k, "w": w, "nf": max(0, (end - self.sink) // c), "two": False}
        if self.levels == 2 and k > 0:
            m = self.coarse // c
            nc = (end - self.sink) // self.coarse
            k1 = min(nc, math.ceil(self.coarse_factor * k / m))
            if k1 * m >= k and k1 < nc:
                p.update(two=True, nc=nc, k1=k1, m=m)
        return p

    def select(self, cache, layer, query):
        keys, values = cache.keys(layer), cache.values(layer)
        n = int(keys.shape[1])
        if n <= self.B:
            return keys, values
        p = self.plan(n)
        lead = self.leader(layer)
        if lead == layer:
            self._dyn[layer] = (n, p) + self._choose(layer, keys, query, p)
        n0, p, sel_c, sel_f = self._dyn[lead]
        if n0 != n:
            raise RuntimeError("layers sharing a selection must hold the same rows")
        return self._gather(keys, p, sel_c, sel_f), self._gather(values, p, sel_c, sel_f)

    def _choose(self, layer, keys, query, p):
        if p["k"] == 0:
            return None, None
        self._update_bounds(layer, keys)
        st = self._bnd[layer]
        qg = self.group_query(query, int(keys.shape[0]))
        names = self._operands()
        if self.share_layers == "layer" and layer >= 2:     # one choice for all heads
            def score(ops):
                sc = self._score(qg, ops)
                return sc.sum(axis=0).reshape(1, int(sc.shape[1]))
        else:
            def score(ops):
                return self._score(qg, ops)
        if not p["two"]:
            ops = {k: st["f"][k][:, :p["nf"]] for k in names}
            return None, select(score(ops), p["k"], self.fast, ordered=False)
        nc, k1, m = p["nc"], p["k1"], p["m"]
        sel_c = select(score({k: st["c"][k][:, :nc] for k in names}), k1, self.fast,
                       ordered=False)
        nkv, d = int(qg.shape[0]), int(qg.shape[2])
        fine = {}
        for k in names:                      # fine extrema inside the chosen coarse clusters
            x = st["f"][k][:, :nc * m].reshape(nkv, nc, m * d)
            fine[k] = sel_c.gather(x).reshape(nkv, k1 * m, d)   # [1,k1,n] one-hot broadcasts
        return sel_c, select(score(fine), p["k"], self.fast, ordered=False)

    def _gather(self, x, p, sel_c, sel_f):
        """sink rows + chosen clusters (one or two one-hot matmuls) + newest ``w`` rows."""
        nkv, n, d = int(x.shape[0]), int(x.shape[1]), int(x.shape[2])
        s, c, parts = p["s"], self.cluster, [x[:, :p["s"]]]
        if sel_f is not None:
            if sel_c is not None:
                nc, k1, m = p["nc"], p["k1"], p["m"]
                blocks = x[:, s:s + nc * self.coarse].reshape(nkv, nc, self.coarse * d)
                blocks = sel_c.gather(blocks).reshape(nkv, k1 * m, c * d)
            else:
                blocks = x[:, s:s + p["nf"] * c].reshape(nkv, p["nf"], c * d)
            parts.append(sel_f.gather(blocks).reshape(nkv, p["k"] * c, d))
        parts.append(x[:, n - p["w"]:])
        return F.concatenate(parts, axis=1)
