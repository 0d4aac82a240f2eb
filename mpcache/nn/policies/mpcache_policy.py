"""MPCache (arXiv 2501.06807): optional static eviction at prefill + clustered dynamic
selection.  Knob by knob (defaults first; ``PRESETS["paper"]`` is the paper's design):

* Static eviction (prefill, per layer): off by default (``static_keep=1.0``).
  ``static_keep < 1``: keep that fraction of the prompt by the attention the last
  ``static_window`` (20%) of prompt queries pay each token (``static_score="max"``: the
  maximum over those queries and all heads, "unimportant to all"; ``"mean"``).
  ``static_tau=t``: keep every token whose HEAD-MEAN attention from any of those queries is
  ``>= t`` (the authors' rule; the kept count is public).  The first ``sink`` and last
  ``2 * cluster`` tokens are always kept; kept rows stay in position order, compacted.
* Decode (every step): rows from ``origin`` on are grouped into clusters of ``cluster`` (4)
  neighbours; when a cluster fills up its per-dimension key extrema r_max, r_min are
  stored once, plus the bracket ``a r_max + (1 - a) r_min``, so the cluster score
  ``q . bracket`` is ONE matmul (``bound='linear'``); ``'exact_max'`` is Quest's
  ``q+ . r_max + q- . r_min``, ``'mean_key'`` scores ``q . mean(K_cluster)``;
  ``'token_max'`` is no bound but the cluster's exact score ``max_i q . k_i`` (one
  product over every key, then a max over each cluster's ``cluster`` scores: under MPC
  the fan-in-4 max tree, one level for 4-token clusters, compared on the attention's
  score-bound bits; no stored extrema; ``levels=1`` only).  Not the default: 2K n = 20
  per task +1.9 +- 2.1 points at 10%, +1.0 +- 2.5 at 5% for ~20% more rep3 bytes.
  ``levels=1`` (default): every fine cluster is scored and ONE top-k keeps the best;
  ``levels=2``: score the coarse clusters (``coarse`` = 16 tokens), keep ``coarse_keep``
  (half) of them (``None``: ``coarse_factor`` times the needed tokens), then the best fine
  clusters among those inside them and those after the last full coarse cluster.  One
  level was chosen from the 2K suite (n = 10 per task: +6.7 +- 3.1 points at 5%, -0.6 +-
  2.7 at 10% against two levels) and checked on the 4K suite (docs/mpcache-accuracy.md);
  it also costs fewer rounds and bytes under MPC (no coarse top-k).
* GQA: ``per_head='query'`` -- every query head selects its own clusters of its KV head
  (K/V come back per query head, ``[n_heads, B, d]``); ``'group'`` -- one selection per
  KV head with the group's scores SUMMED, ``(sum_g q_g) . bracket``: a third of the
  selection's MPC work for SmolLM2, 2.8-4.4 points less accurate on the 2K suite
  (docs/policies.md, "GQA choice").
* ``dilate`` (0): ``j > 0`` ranks each fine cluster by the best score of itself and the
  ``j`` clusters before it, so a chosen cluster's successors are read with it (one top-k,
  distinct clusters; under MPC ``j`` comparisons per cluster).  A documented knob, not the
  default (docs/mpcache-accuracy.md, top section).
* ``rest`` (None): ``'mean'`` also attends to every cluster it did not choose, as ONE
  weighted softmax entry (the cluster's mean key and mean value, weight ``cluster``; 0
  for a chosen cluster, whose rows are read exactly): a coarse view of the other 90-95%
  of the rows for ``nf = n / cluster`` more softmax entries (:meth:`_summaries`).  A
  documented knob, not the default (docs/mpcache-accuracy.md, top section).
* ``dense_layers`` (2): the first layers read everything (no eviction, no selection).
* ``share_layers``: off by default; ``'head'``: after the first two selecting layers each
  adjacent pair reuses the first layer's static keep set and per-step choice per head;
  ``'layer'``: one choice per pair for all heads.

Budget (exact, per selecting layer and head): attention reads ``B = round(budget *
T_prompt)`` rows per step, laid out by :meth:`MPCache.plan`: head rows (the sink, plus the
remainder under ``edges='cover'``), ``k`` selected clusters and the newest ``w`` rows.
``edges='cover'`` starts the window exactly where the last full cluster ends, so every row
before it is a candidate; ``'grid'`` (paper preset) leaves up to ``cluster - 1`` (one level)
or ``coarse - 1`` (two levels) rows before the window unreachable.  Dense layers are outside
the budget (docs/policies.md).
"""
from __future__ import annotations

import math

import numpy as np

from .. import functional as F
from .base import BIG, Policy, expand_heads, select, window_counts

__all__ = ["MPCache", "BOUNDS", "PRESETS"]

BOUNDS = ("linear", "exact_max", "mean_key", "token_max")


#: Knob sets by name (``make_policy("mpcache", b, preset="paper")``, ``mpcache:preset=paper``).
#: ``paper``: the paper's stated design as first implemented here (50% static keep by the
#: max rule, coarse stage keeping ``coarse_factor * k`` tokens' worth of coarse clusters,
#: group-summed scores, per-head sharing of layer pairs, sink = one cluster, grid edges).
#: ``code``: the authors' published code (half of the coarse clusters kept, threshold
#: static eviction on head-mean attention, one choice per query head, no sharing).
#: ``accurate``: the defaults with each cluster scored by its best key's exact score
#: (``bound='token_max'``) and the unchosen clusters attended as weighted means
#: (``rest='mean'``): on the 2K suite at 10%, n = 20 per task, -1.1 +- 1.7 points from
#: the full cache (the defaults -5.0 +- 2.3), for about the full cache's bytes and 1.2x
#: the defaults' rounds per step (docs/mpcache-accuracy.md, top section); not the default.
PRESETS = {
    "paper": dict(static_keep=0.5, static_tau=None, static_score="max", a=0.6,
                  bound="linear", levels=2, cluster=16, coarse=32, coarse_factor=2.0,
                  coarse_keep=None, sink=None, share_layers=True, per_head="group",
                  dense_layers=0, edges="grid", recent=None),
    "accurate": dict(bound="token_max", rest="mean"),
    "code": dict(static_keep=1.0, static_tau=1e-8, a=0.6, bound="linear", levels=2,
                 cluster=16, coarse=32, coarse_keep=0.5, sink=16, share_layers=False,
                 per_head="query", dense_layers=0, edges="cover", recent=None),
}


class MPCache(Policy):
    name = "mpcache"
    presets = PRESETS

    def __init__(self, budget=None, static_keep: float = 1.0, static_window: float = 0.2,
                 a: float = 0.6, bound: str = "linear", levels: int = 1, cluster: int = 4,
                 coarse: int = 16, coarse_factor: float = 2.0, sink: int | None = None,
                 share_layers: bool | str = False, static_score: str = "max",
                 static_tau: float | None = None, coarse_keep: float | None = 0.5,
                 per_head: str = "query", dense_layers: int = 2, edges: str = "cover",
                 recent: int | None = None, dilate: int = 0, rest: str | None = None,
                 fast: bool = True):
        super().__init__(budget, fast)
        if bound not in BOUNDS:
            raise ValueError(f"bound must be one of {BOUNDS}")
        if levels not in (1, 2):
            raise ValueError("levels must be 1 or 2")
        if bound == "token_max" and levels != 1:
            raise ValueError("bound='token_max' scores the fine clusters only: levels must be 1")
        if levels == 2 and coarse % cluster:
            raise ValueError("coarse cluster size must be a multiple of the fine one")
        if per_head not in ("group", "query"):
            raise ValueError("per_head must be 'group' or 'query'")
        if edges not in ("grid", "cover"):
            raise ValueError("edges must be 'grid' or 'cover'")
        if coarse_keep is not None and not 0.0 < float(coarse_keep) <= 1.0:
            raise ValueError("coarse_keep must be in (0, 1]")
        self.static_keep, self.static_window = float(static_keep), float(static_window)
        self.static_tau = None if static_tau in (None, "none", "off") else float(static_tau)
        self.a, self.bound, self.levels = float(a), bound, int(levels)
        self.cluster, self.coarse, self.coarse_factor = int(cluster), int(coarse), coarse_factor
        self.coarse_keep = None if coarse_keep is None else float(coarse_keep)
        self.sink = self.cluster if sink is None else int(sink)
        self.per_head, self.dense_layers, self.edges = per_head, int(dense_layers), edges
        self.recent = self.cluster if recent is None else max(1, int(recent))
        if int(dilate) < 0:
            raise ValueError("dilate must be >= 0")
        self.dilate = int(dilate)
        if rest in ("off", "none", False):
            rest = None
        if rest not in (None, "mean"):
            raise ValueError("rest must be None or 'mean'")
        self.rest = rest
        # grid origin: ``cover`` leaves one cluster after the sink as the edge zone where
        # the budget's remainder is read (see plan()); ``grid`` starts right at the sink
        self.origin = self.sink + (self.cluster if edges == "cover" else 0)
        modes = {True: "head", False: "off", "head": "head", "layer": "layer", "off": "off"}
        if share_layers not in modes:
            raise ValueError("share_layers must be True/'head', 'layer' or False/'off'")
        self.share_layers = modes[share_layers]
        if static_score not in ("max", "mean"):
            raise ValueError("static_score must be 'max' or 'mean'")
        self.static_score = static_score
        self.score_bound = None

    def __repr__(self):
        return (f"{type(self).__name__}(budget={self.budget}, static_keep={self.static_keep}, "
                f"static_tau={self.static_tau}, a={self.a}, bound={self.bound!r}, "
                f"levels={self.levels}, cluster={self.cluster}, coarse={self.coarse}, "
                f"coarse_keep={self.coarse_keep}, share={self.share_layers!r}, "
                f"per_head={self.per_head!r}, dense_layers={self.dense_layers}, "
                f"edges={self.edges!r}, sink={self.sink})")

    # ------------------------------------------------------------- bookkeeping
    def reset(self, cache, n_prompt):
        super().reset(cache, n_prompt)
        n = cache.n_layers
        self._static, self._dyn = [None] * n, [None] * n
        self._bnd = [{"n": 0, "nc": 0} for _ in range(n)]
        self._rest = [{"n": 0} for _ in range(n)]
        self._summary = [None] * n
        self.static_kept = [None] * n

    def dense(self, layer: int) -> bool:
        """The first ``dense_layers`` layers read the whole cache (no eviction, no
        selection; outside the budget, as Quest's reference runs its first two layers)."""
        return layer < self.dense_layers

    def leader(self, layer: int) -> int:
        """Layer whose selection ``layer`` uses: itself for the first two selecting
        layers; then pairs (2,3), (4,5), ... (shifted past the dense layers)."""
        first = self.dense_layers
        if self.share_layers == "off" or layer < first + 2:
            return layer
        return layer - ((layer - first) % 2)

    def _window(self, n):
        return min(n, max(1, math.ceil(self.static_window * n)))

    def _stat(self, n):
        w = self._window(n)
        if self.static_tau is not None:
            return ("hmeanmax", w)
        return ("max", w) if self.static_score == "max" else w

    def stat_windows(self, n_prompt):
        on = self.static_tau is not None or self.static_keep < 1.0
        return (self._stat(n_prompt),) if on else ()

    # ------------------------------------------------------------- static eviction
    def prefill_done(self, cache, layer, stats):
        if self.dense(layer) or not self.stat_windows(self.n_prompt):
            return
        n = cache.length(layer)
        lead = self.leader(layer)
        if lead == layer:
            w = self._window(n)
            if self.static_tau is not None:           # head-mean attention >= tau
                score = stats[self._stat(n)].reshape(n)
            elif self.static_score == "max":          # unimportant to ALL window queries
                score = F.max(stats[self._stat(n)], axis=0)                  # [n]
            else:                                     # mean attention of the window
                score = stats[w].sum(axis=0) * (1.0 / window_counts(n, w))
            force = np.zeros(n)
            force[:self.sink] = BIG
            force[max(0, n - 2 * self.cluster):] = BIG
            floor = min(n, self.sink + 2 * self.cluster)
            if self.static_tau is not None:
                m = max(self._count_at_least(score + force, self.static_tau), floor)
            else:
                m = max(int(round(self.static_keep * n)), floor)
            self.static_kept[layer] = m
            self._static[layer] = None if m >= n else \
                select((score + force).reshape(1, n), m, self.fast)
        sel = self._static[lead]
        self.static_kept[layer] = self.static_kept[lead]
        if sel is None:
            return
        if sel.index is not None:
            cache.keep(layer, sel.index[0])
            return
        oh = sel.onehot[0]                                                  # [m, n]
        m = int(oh.shape[0])
        pos = cache.positions(layer)
        if F.is_plain(oh):
            pos = np.rint(oh @ pos.astype(np.float64)).astype(np.int64)
        else:   # secret choice: positions unknown; decode steps never need them
            pos = np.arange(m, dtype=np.int64)
        cache.replace(layer, oh @ cache.keys(layer), oh @ cache.values(layer), pos)

    @staticmethod
    def _count_at_least(score, tau: float) -> int:
        """How many entries reach ``tau``: the kept COUNT is public (the authors print the
        remaining ratio); under MPC one comparison per token and one opening of the sum."""
        if F.is_plain(score):
            return int(np.sum(np.asarray(score) >= tau))
        bits = (score >= tau).sum()
        return int(round(float(np.asarray(bits.reveal()).reshape(-1)[0])))

    # ------------------------------------------------------------- cluster bounds
    def _update_bounds(self, layer, keys):
        """Extrema of every cluster that filled up since the last step (computed once)."""
        st, c, s = self._bnd[layer], self.cluster, self.origin
        nkv, n, d = int(keys.shape[0]), int(keys.shape[1]), int(keys.shape[2])
        full = max(0, (n - s) // c)
        if self.bound == "token_max":     # the keys themselves, grouped by cluster (a view)
            st["f"] = {"keys": keys[:, s:s + full * c].reshape(nkv, full, c, d)}
            st["n"] = full
            return
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
        elif self.bound == "exact_max":     # [r_max | r_min]: the bound is ONE product
            new["ext"] = F.concatenate([new["rmax"], new["rmin"]], axis=2)
        old = st.get(level)
        st[level] = new if old is None else {
            key: F.concatenate([old[key], new[key]], axis=1) for key in new}

    def _operands(self):
        return {"linear": ("lin",), "exact_max": ("ext",),
                "mean_key": ("mean",), "token_max": ("keys",)}[self.bound]

    def _score(self, qg, ops):
        """Cluster scores for grouped query ``qg`` [n_kv, g, d]: ``[n_kv, n]`` with the
        group's scores summed (``per_head='group'``), ``[n_kv * g, n]`` one row per query
        head (``'query'``).  ``ops`` hold bounds per KV head or, after a per-query-head
        coarse stage, per query head."""
        nkv, g, d = int(qg.shape[0]), int(qg.shape[1]), int(qg.shape[2])
        h = int(ops[self._operands()[0]].shape[0])
        if self.per_head == "query":
            q = qg if h == nkv else qg.reshape(h, (nkv * g) // h, d)
        else:
            q = qg.sum(axis=1).reshape(nkv, 1, d)
        if self.bound == "exact_max":
            qp = F.relu(q) if self.per_head == "query" else \
                F.relu(qg).sum(axis=1).reshape(nkv, 1, d)
            # q+ . r_max + q- . r_min as [q+ | q-] . [r_max | r_min]: one product (under
            # MPC one re-sharing and one truncation of the scores, not two)
            out = F.concatenate([qp, q - qp], axis=2) @ ops["ext"].transpose((0, 2, 1))
        elif self.bound == "token_max":        # every key, then each cluster's best score
            x = ops["keys"]                     # [n_kv, nf, c, d]
            nf, c = int(x.shape[1]), self.cluster
            sc = q @ x.reshape(int(x.shape[0]), nf * c, d).transpose((0, 2, 1))
            sb = self.score_bound               # a group's summed query: g times the bound
            if sb is not None and self.per_head != "query":
                sb *= g
            out = F.max(sc.reshape(int(sc.shape[0]), int(sc.shape[1]), nf, c), axis=-1,
                        bound=sb)
        else:
            out = q @ ops[self._operands()[0]].transpose((0, 2, 1))
        rows = int(out.shape[0]) * int(out.shape[1])
        return out.reshape(rows, int(out.shape[2]))

    def _dilated(self, sc, qg):
        """``dilate = j``: cluster ``i`` ranks by the best score among itself and the ``j``
        clusters before it, ``max(s_{i-j}, ..., s_i)``, so a top cluster's successors rank
        with it and the ONE top-k reads them too (a needle that straddles a cluster edge,
        a copied word's continuation).  The k chosen clusters stay distinct: no row is
        read twice.  Under MPC ``j`` comparisons per cluster (a fan-in-``j + 1`` max) on
        the score's bits: the attention's bound on ``|q . k|`` times ``2 sqrt(cluster)``
        for a bound's vector (a bracket's or extremum's norm is at most that of its
        cluster's keys together; ``exact_max`` pairs two), times the group for summed
        scores."""
        j = self.dilate
        if not j:
            return sc
        h, nf = int(sc.shape[0]), int(sc.shape[1])
        cols = [sc.reshape(h, nf, 1)]
        for t in range(1, min(j, nf - 1) + 1):   # pad with cluster 0's own score
            pad = F.concatenate([sc[:, :1]] * t + [sc[:, :nf - t]], axis=1)
            cols.append(pad.reshape(h, nf, 1))
        if len(cols) == 1:
            return sc
        sb = self.score_bound
        if sb is not None:       # a bound's vector: at most 2 sqrt(c) times a key's norm
            sb *= 1 if self.bound == "token_max" else 2 * math.sqrt(self.cluster)
            sb *= 1 if self.per_head == "query" else int(qg.shape[1])
        return F.max(F.concatenate(cols, axis=2), axis=-1, bound=sb)

    # ------------------------------------------------------------- dynamic selection
    def plan(self, n: int) -> dict:
        """Public layout of one decode step over ``n`` cached rows (no secrets involved):
        head rows ``hd`` (sink, plus the budget's remainder under ``edges='cover'``), ``k``
        clusters chosen among ``nf`` candidates starting at row ``origin``, newest ``w``
        rows; ``hd + k * cluster + w = B``."""
        b, c, o = self.B, self.cluster, self.origin
        if self.edges == "grid":
            s = min(self.sink, b)
            k = max(0, (b - s - c) // c)
            w = b - s - k * c
            nf = max(0, (n - w - o) // c)
            tail, hd = 0, s
        else:   # the window starts where the last full cluster ends: no unreachable rows
            nf = max(0, (n - o - self.recent) // c)
            w = n - o - nf * c
            s = min(self.sink, b)
            k = max(0, min(nf, (b - s - w) // c))
            if b - s - w < 0:
                w, nf = b - s, max(0, (n - (b - s) - o) // c)
            hd = b - w - k * c                   # sink + remainder (< cluster rows)
            tail = None
        p = {"s": hd, "k": k, "w": w, "nf": nf, "two": False}
        if self.levels == 2 and k > 0:
            m = self.coarse // c
            nc = nf // m
            rest = (nf - nc * m) if tail is None else 0   # fine clusters after the coarse
            if self.coarse_keep is not None:
                k1 = max(math.ceil(self.coarse_keep * nc), math.ceil(max(0, k - rest) / m))
            else:
                k1 = math.ceil(self.coarse_factor * k / m)
            k1 = min(nc, k1)
            if k1 * m + rest >= k and k1 < nc:
                p.update(two=True, nc=nc, k1=k1, m=m, rest=rest)
        return p

    def select(self, cache, layer, query):
        # the attention's public bound on |q . k|: token_max's comparisons use it
        self.score_bound = getattr(cache, "score_bound", None)
        keys, values = cache.keys(layer), cache.values(layer)
        n = int(keys.shape[1])
        self._summary[layer] = None
        if n <= self.B or self.dense(layer):
            return keys, values
        p = self.plan(n)
        lead = self.leader(layer)
        if lead == layer:
            self._dyn[layer] = (n, p, self._choose(layer, keys, query, p))
        n0, p, sel = self._dyn[lead]
        if n0 != n:
            raise RuntimeError("layers sharing a selection must hold the same rows")
        if self.rest and sel is not None:
            self._summary[layer] = self._summaries(layer, keys, values, p, sel)
        return self._gather(keys, p, sel), self._gather(values, p, sel)

    # ------------------------------------------------------------- the unchosen rows
    def summary(self, layer: int):
        """``rest='mean'``: what the last step of ``layer`` attends to besides its ``B``
        rows, ``(keys [n_kv, m, d], values [n_kv, m, d], weights [h, 1, m], weight
        bound)`` (see :meth:`_summaries`); None otherwise."""
        return self._summary[layer] if self.rest else None

    def _update_rest(self, layer, keys, values):
        """Mean key and mean value of every cluster that filled up since the last step
        (computed once per cluster, like the bounds)."""
        st, c, o = self._rest[layer], self.cluster, self.origin
        nkv, n, d = int(keys.shape[0]), int(keys.shape[1]), int(keys.shape[2])
        full = max(0, (n - o) // c)
        if full <= st["n"]:
            return
        lo = st["n"]
        new = {name: F.mean(x[:, o + lo * c: o + full * c].reshape(nkv, full - lo, c, d),
                            axis=2) for name, x in (("k", keys), ("v", values))}
        st.update({name: new[name] if lo == 0 else
                   F.concatenate([st[name], new[name]], axis=1) for name in new})
        st["n"] = full

    def _summaries(self, layer, keys, values, p, sel):
        """``rest='mean'`` (not the default): the rows the step does not read exactly are
        still attended, coarsely.  Each candidate cluster enters the softmax as ONE entry,
        its mean key and mean value, with weight ``cluster`` (it stands for that many
        rows) -- or 0 when the cluster was chosen (its rows are read exactly); rows that
        no cluster covers and the step does not read (the edge zone after the head rows;
        under grid edges the rows before the window) enter as themselves (weight 1).  So
        the step computes ``softmax`` over ``B + edge + nf`` entries with integer weights
        (``functions.approx.softmax(weights=)``) and ``p @ V`` over the same: nf = n /
        cluster more scores, a product per entry for the secret weights, and the means'
        table (persisted under add2, as the cache: only the left operands open).  A mean
        key's score lies within the attention's bound and below its cluster's best key's,
        so each row's max is an exact row (the weighted softmax's condition).  What a
        party learns: nothing new (means, the indicator's weights and the products are
        computed on secrets; ``nf``, ``cluster`` and the layout are public)."""
        self._update_rest(layer, keys, values)
        st, nf, s, o = self._rest[layer], p["nf"], p["s"], self.origin
        ind = sel.indicator(nf)                                         # [h, nf] 0/1
        h = int(ind.shape[0])
        w = ind * (-self.cluster) + self.cluster                        # integers, frac 0
        ks, vs, ws = [st["k"][:, :nf]], [st["v"][:, :nf]], [w]
        n, end = int(keys.shape[1]), o + nf * self.cluster
        # rows no step reads exactly and no cluster covers enter as themselves: the edge
        # zone after the head rows, and (grid edges) the rows between grid and window
        for lo, hi in ((s, o), (end, n - p["w"])):
            if hi > lo:
                ks.append(keys[:, lo:hi])
                vs.append(values[:, lo:hi])
                ws.append(np.ones((h, hi - lo), dtype=np.int64))
        cat = (lambda xs: xs[0]) if len(ks) == 1 else (lambda xs: F.concatenate(xs, axis=1))
        wt = cat(ws)
        return cat(ks), cat(vs), wt.reshape(h, 1, int(wt.shape[1])), float(self.cluster)

    def _choose(self, layer, keys, query, p):
        if p["k"] == 0:
            return None
        self._update_bounds(layer, keys)
        st = self._bnd[layer]
        qg = self.group_query(query, int(keys.shape[0]))
        names = self._operands()
        if self.share_layers == "layer" and layer >= self.dense_layers + 2:   # one choice
            def score(ops):
                sc = self._score(qg, ops)
                return sc.sum(axis=0).reshape(1, int(sc.shape[1]))
        else:
            def score(ops):
                return self._score(qg, ops)
        if not p["two"]:
            ops = {k: st["f"][k][:, :p["nf"]] for k in names}
            return self._select_fine(self._dilated(score(ops), qg), p, keys, query)
        nc, k1, m, rest = p["nc"], p["k1"], p["m"], p["rest"]
        sel_c = select(score({k: st["c"][k][:, :nc] for k in names}), k1, self.fast,
                       ordered=False)
        fine = self._dilated(score({k: st["f"][k][:, :p["nf"]] for k in names}), qg)
        return self._select_fine(fine + self._coarse_mask(sel_c, p), p, keys, query)

    def _select_fine(self, scores, p, keys, query):
        """The step's choice of ``k`` fine clusters (a set: unordered; factored where
        :meth:`step_factor` says so)."""
        factor = self.step_factor(scores, p["nf"], p["k"], self.cluster, keys, query)
        return select(scores, p["k"], self.fast, ordered=False, factor=factor)

    @staticmethod
    def _coarse_mask(sel_c, p):
        """Additive mask ``[h, nf]`` that leaves only the fine clusters inside the chosen
        coarse clusters (and the ``rest`` after the last full coarse one) in the running:
        0 there, ``-BIG`` elsewhere.  Built from the coarse choice's 0/1 indicator, so
        under MPC it is local (a sum of one-hot rows, a public repeat, a public scale):
        the fine stage scores every fine cluster (one output word per cluster) instead of
        gathering the chosen clusters' ``d``-dimensional bounds, and its top-k returns the
        one-hot over all fine clusters directly.  Same candidates as the gathered form
        (``k <= k1 m + rest``: the plan guarantees it), so the same choice."""
        nc, m, rest, nf = p["nc"], p["m"], p["rest"], p["nf"]
        ind = sel_c.indicator(nc)                                          # [h|1, nc]
        inside = ind[:, np.repeat(np.arange(nc), m)]                      # [h|1, nc m]
        parts = [(inside - 1) * int(BIG)]
        h = int(inside.shape[0])
        if rest:
            parts.append(np.zeros((h, rest), dtype=np.int64))
        if nf > nc * m + rest:                # grid edges: rows no coarse cluster covers
            parts.append(np.full((h, nf - nc * m - rest), -int(BIG), dtype=np.int64))
        return parts[0] if len(parts) == 1 else F.concatenate(parts, axis=1)

    def _gather(self, x, p, sel):
        """head rows + chosen clusters (one one-hot matmul over all ``nf`` fine clusters:
        a two-level choice is already a fine one-hot, see :meth:`_coarse_mask`) + newest
        ``w`` rows.  A per-query-head selection reads its KV head's rows (sink and newest
        rows are copied to every query head of the group)."""
        nkv, n, d = int(x.shape[0]), int(x.shape[1]), int(x.shape[2])
        s, c, o = p["s"], self.cluster, self.origin
        heads = nkv if sel is None else max(nkv, sel.heads)
        parts = [expand_heads(x[:, :s], heads)]
        if sel is not None:
            blocks = x[:, o:o + p["nf"] * c].reshape(nkv, p["nf"], c * d)
            mid = sel.gather(blocks)
            parts.append(mid.reshape(int(mid.shape[0]), p["k"] * c, d))
        parts.append(expand_heads(x[:, n - p["w"]:], heads))
        return F.concatenate(parts, axis=1)
