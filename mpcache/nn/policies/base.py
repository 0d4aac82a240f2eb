"""The eviction / selection policy interface shared by MPCache and its baselines.

One policy object plugs into :class:`~mpcache.nn.kv_cache.KVCache` (``decoder.prefill(ids,
policy=p)``) and is called by the SAME decoder code at two moments:

* **prefill** (the prompt, one multi-token call): :meth:`Policy.view` returns the whole
  cache (prefill attention is exact), then :meth:`Policy.observe` receives the attention
  probabilities, reduces them to the column sums the policy asked for
  (:meth:`Policy.stat_windows`) and calls :meth:`Policy.prefill_done` -- the place for
  static eviction (``cache.keep`` / ``cache.replace``).
* **decode** (one token per call): :meth:`Policy.view` calls :meth:`Policy.select`, the
  dynamic selection, which returns the keys/values attention reads this step (exactly
  ``budget_tokens`` rows once the cache is larger); :meth:`Policy.after_step` sees the
  probabilities (H2O accumulates them).

Budget: ``budget`` is kept tokens / prompt tokens (0.05 = 5%); the number of rows attention
reads per decode step is ``B = round(budget * T_prompt)`` for every policy (``None`` or
``>= 1``: no limit).  B, the cache length, cluster counts and k are public; WHICH tokens are
chosen is not.  So data-dependent choices go through :func:`select` (top-k -> one-hot [k, n],
gather = one-hot @ X, both matmuls, backend-neutral); ``fast=True`` swaps in the provably
identical numpy index path (same ``top_k_indices`` contract, ``X[idx]``) for plaintext speed.

For accuracy sweeps, :class:`PrefillRecorder` runs ONE prefill for many policies: it keeps
the union of the attention statistics they need and hands each a private copy of the cache
through :meth:`Policy.attach` -- the same ``prefill_done`` code runs as in the direct path.
"""
from __future__ import annotations

import numpy as np

from .. import functional as F
from ..kv_cache import KVCache

__all__ = ["BIG", "Policy", "ScoredPolicy", "Selection", "select", "budget_tokens",
           "attention_stats", "stat_key", "window_counts", "expand_heads", "clone_cache",
           "PrefillRecorder"]

#: Public additive constant used to force-keep / exclude rows in a score vector.  Finite
#: (fixed point holds it) and far above any attention score or key bound of a real model.
BIG = 1.0e4


def budget_tokens(budget, n_prompt: int) -> int:
    """Rows attention may read per decode step: ``round(budget * n_prompt)`` (>= 1)."""
    if budget is None or budget >= 1.0:
        return 1 << 62
    if budget <= 0:
        raise ValueError("budget must be > 0")
    return max(1, int(round(float(budget) * int(n_prompt))))


class Selection:
    """A per-head top-k choice over n rows: one-hot ``[h, k, n]`` or (fast) indices ``[h, k]``.

    Both forms follow :func:`~mpcache.nn.functional.top_k_onehot`'s contract (ascending row
    order; a decoding step's selection may be unordered, ``select(ordered=False)``, and
    then is used only through the methods below, which agree for any row order)."""

    def __init__(self, onehot=None, index=None):
        self.onehot, self.index = onehot, index

    @property
    def k(self) -> int:
        if self.onehot is not None:
            return int(self.onehot.shape[-2])
        return int(self.index.shape[-1])

    @property
    def heads(self) -> int:
        return int((self.onehot if self.onehot is not None else self.index).shape[0])

    def gather(self, x):
        """``x`` [h, n, w] (or [n, w] shared by heads) -> [h, k, w].  A per-query-head
        selection (``h`` = a multiple of x's KV heads) reads query head j's rows from KV
        head ``j // (h / h_x)`` (:func:`expand_heads`)."""
        if self.onehot is not None:
            if len(x.shape) == 3 and self.heads > int(x.shape[0]):
                x = expand_heads(x, self.heads)
            return self.onehot @ x
        idx = self.index
        if len(x.shape) == 2:
            return x[idx]
        h, hx = int(idx.shape[0]), int(x.shape[0])
        if h == 1 and hx != 1:
            return x[:, idx[0]]
        src = np.arange(h) if h == hx else np.repeat(np.arange(hx), h // hx)
        return x[src[:, None], idx]

    def indicator(self, n: int):
        """0/1 ``[h, n]``: which rows are selected (``ones @ onehot``)."""
        if self.onehot is not None:
            return self.onehot.sum(axis=-2)
        out = np.zeros(self.index.shape[:-1] + (n,))
        np.put_along_axis(out, self.index, 1.0, axis=-1)
        return out

    def scatter(self, vals, n: int):
        """Per-selected-row values ``[h, k]`` back onto the n rows (zeros elsewhere)."""
        if self.onehot is not None:
            h, k = vals.shape[0], vals.shape[1]
            if hasattr(self.onehot, "scatter"):         # two small one-hots (factored)
                return self.onehot.scatter(vals.reshape(h, 1, k)).reshape(h, n)
            return (vals.reshape(h, 1, k) @ self.onehot).reshape(h, n)
        out = np.zeros(self.index.shape[:-1] + (n,), dtype=np.asarray(vals).dtype)
        np.put_along_axis(out, self.index, vals, axis=-1)
        return out


#: A decoding step's secret top-k (``ordered=False``) compares each candidate with this
#: many pivots' worth per selection level (``top_k(budget=)``): fewer levels, and a level
#: is 4-6 rounds.  Measured ([9, 512] scores, k = 48, both protocols, 4 seeds; bytes per
#: party): budget 1 26-37 rounds, 0.33 MB; 4: 20-26, 0.57 MB; 8: 20, 0.87 MB; 16: 15,
#: 1.23 MB.  SmolLM2 at 2048 tokens, MPCache at 10% (56 top-ks per step, rep3): the
#: top-k scope went from 1678 rounds / 11.5 MB to 993 rounds / 29.2 MB.  In the launch
#: presets (LAN 1 Gbit/s, 0.5 ms RTT; WAN 100 Mbit/s, 40 ms) 685 rounds are 0.34 / 27 s,
#: 18 MB 0.14 / 1.4 s: fewer rounds win on both.  Static eviction (ordered, once per prompt) keeps budget 1.
DECODE_TOPK_BUDGET = 8.0


def select(scores, k: int, fast: bool = True, ordered: bool = True,
           factor: int | None = None) -> Selection:
    """Top-``k`` along the last axis of ``scores`` [h, n] (k public).  ``ordered=False``
    (a decoding step's choice, used only through this Selection's gather / scatter /
    indicator): the rows may come in any order (:func:`~mpcache.nn.functional.top_k_onehot`;
    under MPC a cheaper top-k).  Static eviction keeps ``ordered=True``: it compacts the
    cache, whose neighbouring tokens must stay neighbours.  ``factor`` (unordered only): the
    one-hot as two small one-hots (:func:`~mpcache.nn.functional.top_k_onehot`), for the
    fast path as for the others."""
    if fast and F.is_plain(scores) and factor is None:
        return Selection(index=F.top_k_indices(scores, k, axis=-1))
    budget = 1.0 if ordered else DECODE_TOPK_BUDGET
    return Selection(onehot=F.top_k_onehot(scores, k, axis=-1, ordered=ordered, budget=budget,
                                           factor=factor))


def expand_heads(x, heads: int):
    """``x`` [h_kv, ...] -> [heads, ...]: query head j gets KV head ``j // (heads / h_kv)``
    (GQA's mapping; a public index, so a local copy on secret tensors)."""
    h = int(x.shape[0])
    if h == heads:
        return x
    if heads % h:
        raise ValueError(f"{heads} query heads over {h} KV heads")
    return x[np.repeat(np.arange(h), heads // h)]


def window_counts(n: int, w: int) -> np.ndarray:
    """How many of the last ``w`` queries (causal) can see key j: ``min(w, n - j)``."""
    return np.minimum(w, n - np.arange(n)).astype(np.float64)


def stat_key(spec, t_q: int):
    """Normalise a statistic request: ``w`` (int: column SUM over the last w queries),
    ``("max", w)`` (column MAX over the last w queries and the group's heads) or
    ``("hmeanmax", w)`` (for each of the last w queries the MEAN over all heads of the
    layer, then the MAX over those queries: ``[1, S]``)."""
    kind, w = ("sum", spec) if not isinstance(spec, tuple) else spec
    w = min(max(int(w), 1), int(t_q))
    return w if kind == "sum" else (kind, w)


def attention_stats(probs, t_q: int, windows) -> dict:
    """Column statistics of the attention of the last ``w`` queries, per KV head.

    ``probs`` is ``[n_kv, group * T, S]`` (rows ordered (group, T), as Attention makes them).
    ``w`` -> column sums with the group's query heads SUMMED (GQA: a KV row is worth what it
    is worth to all the query heads that read it); ``("max", w)`` -> the column maximum over
    those queries and heads.  Returns ``{key: [n_kv, S]}`` keyed by :func:`stat_key`."""
    nkv, rows, s = probs.shape
    g = rows // t_q
    p = probs.reshape(nkv, g, t_q, s)
    out = {}
    for key in {stat_key(w, t_q) for w in windows}:
        if isinstance(key, tuple) and key[0] == "hmeanmax":
            w = key[1]
            hm = p[:, :, t_q - w:, :].sum(axis=1).sum(axis=0) * (1.0 / (nkv * g))   # [w, S]
            out[key] = F.max(hm, axis=0).reshape(1, s)
        elif isinstance(key, tuple):
            w = key[1]
            out[key] = F.max(p[:, :, t_q - w:, :].reshape(nkv, g * w, s), axis=1)
        else:
            out[key] = p[:, :, t_q - key:, :].sum(axis=2).sum(axis=1)
    return out


def clone_cache(cache: KVCache, policy=None) -> KVCache:
    """An independent copy of a (plaintext) cache, e.g. to fork one prefill many ways."""
    c = KVCache(cache.n_layers, policy=policy)
    for layer in range(cache.n_layers):
        c.replace(layer, np.array(cache.keys(layer)), np.array(cache.values(layer)),
                  cache.positions(layer).copy())
    c.n_seen = cache.n_seen
    return c


class Policy:
    """Base class: no eviction, full view.  Subclasses override the four hooks
    (:meth:`stat_windows`, :meth:`prefill_done`, :meth:`select`, :meth:`after_step`).

    ``budget``: kept tokens / prompt tokens (``None``: full).  ``fast``: numpy index path
    instead of one-hot matmuls (plaintext only; results identical)."""

    name = "full"

    def __init__(self, budget=None, fast: bool = True):
        self.budget = budget
        self.fast = bool(fast)
        self._cache = None
        self.n_prompt = 0
        self.B = 0
        self._tq = 0

    def __repr__(self):
        return f"{type(self).__name__}(budget={self.budget})"

    # ------------------------------------------------------------- subclass hooks
    def reset(self, cache, n_prompt: int) -> None:
        """New prompt: forget all state (called before any other hook)."""
        self._cache, self.n_prompt = cache, int(n_prompt)
        self.B = budget_tokens(self.budget, n_prompt)
        self.prefilled = False

    def stat_windows(self, n_prompt: int) -> tuple:
        """Prefill attention statistics wanted: numbers of LAST queries to sum over."""
        return ()

    def prefill_done(self, cache, layer: int, stats: dict) -> None:
        """Static eviction for ``layer`` right after its prefill attention."""

    def select(self, cache, layer: int, query):
        """Decode-step keys, values (``[n_kv, rows, hd]``) attention reads."""
        return cache.keys(layer), cache.values(layer)

    def after_step(self, cache, layer: int, probs) -> None:
        """Decode-step attention probabilities ``[n_kv, group, rows]``."""

    # ------------------------------------------------------------- KVCache hook
    def view(self, cache, layer, query):
        t_q = int(query.shape[1])
        if cache is not self._cache:
            if t_q == 1 and cache.n_seen > 0:
                raise RuntimeError("policy attached to a cache it did not prefill; use attach()")
            self.reset(cache, t_q)
        self._tq = t_q
        if t_q > 1:
            if self.prefilled or cache.n_seen > 0:
                raise NotImplementedError("policies support one prompt chunk, then decoding")
            return cache.keys(layer), cache.values(layer), cache.positions(layer)
        keys, values = self.select(cache, layer, query)
        return keys, values, None

    def observe(self, cache, layer, probs):
        if self._tq > 1:
            wins = self.stat_windows(self.n_prompt)
            stats = attention_stats(probs, self._tq, wins) if wins else {}
            self.prefill_done(cache, layer, stats)
            if layer == cache.n_layers - 1:
                self.prefilled = True
        else:
            self.after_step(cache, layer, probs)

    def attach(self, cache, stats_per_layer, n_prompt: int) -> None:
        """Take over a cache prefilled elsewhere (see :class:`PrefillRecorder`)."""
        cache.policy = self
        self.reset(cache, n_prompt)
        for layer in range(cache.n_layers):
            stats = stats_per_layer[layer]
            need = {stat_key(w, n_prompt) for w in self.stat_windows(n_prompt)}
            self.prefill_done(cache, layer, {w: stats[w] for w in need})
        self.prefilled = True

    # ------------------------------------------------------------- helpers
    #: ``(scores, n, k, cluster, d, rows) -> n2 | None``: whether a decoding step's one-hot
    #: comes as two small one-hots (functions/factored.py) -- set by the MPC glue
    #: (:func:`mpcache.nn.mpc_policies.instrument`: add2's lazy selections); None: dense.
    onehot_factor = None

    def step_factor(self, scores, n: int, k: int, cluster: int, keys, query):
        """:attr:`onehot_factor`'s answer for a step choosing ``k`` of ``n`` candidates of
        ``cluster`` rows (``scores`` [one-hot heads, n]; the query rows per one-hot head
        and the head dim follow from ``query`` and ``keys``), or None."""
        rule = self.onehot_factor
        if rule is None:
            return None
        return rule(scores, n, k, cluster, int(keys.shape[2]),
                    rows=max(1, int(query.shape[0]) // int(scores.shape[0])))

    @staticmethod
    def group_query(query, n_kv: int):
        """Decode query ``[n_heads, 1, hd]`` -> ``[n_kv, group, hd]`` (GQA grouping)."""
        nh, _, hd = query.shape
        return query.reshape(n_kv, nh // n_kv, hd)


class ScoredPolicy(Policy):
    """A decode step that keeps the best-scored rows (as kvpress's ScorerPress): the step
    H2O, SnapKV and token top-k share, written once.

    While the cache holds at most ``B`` rows attention reads them all.  Otherwise the
    subclass scores the first ``c`` rows (:meth:`scores`: ``[h, c]``, the number ``k`` to
    keep, ``c``), :func:`select` picks the ``k`` best (secret top-k -> one-hot,
    ``ordered=False``), and attention reads those ``k`` gathered rows followed by the tail
    rows ``[c, n)`` as they are (H2O's recent window, SnapKV's window and answer; none for
    token top-k).  :meth:`chosen` sees each step's choice (H2O's eviction bookkeeping)."""

    def scores(self, cache, layer: int, query, n: int):
        """``(scores [h, c], k, c)`` for a cache of ``n > B`` rows, or None: read all rows."""
        raise NotImplementedError

    def chosen(self, layer: int, sel, c: int) -> None:
        """This step's :class:`Selection` over rows ``[0, c)``; ``sel`` None: all rows read."""

    def select(self, cache, layer, query):
        keys, values = cache.keys(layer), cache.values(layer)
        n = int(keys.shape[1])
        plan = self.scores(cache, layer, query, n) if n > self.B else None
        if plan is None:
            self.chosen(layer, None, n)
            return keys, values
        scores, k, c = plan
        factor = self.step_factor(scores, c, k, 1, keys, query)
        sel = select(scores, k, self.fast, ordered=False, factor=factor)
        self.chosen(layer, sel, c)
        return self._rows(sel, keys, c), self._rows(sel, values, c)

    def _rows(self, sel, x, c: int):
        """The rows of ``x[:, :c]`` that ``sel`` chose, then ``x[:, c:]`` (the MPC glue
        hands attention a lazy :class:`~mpcache.nn.selected_rows.SelectedRows` instead)."""
        return _chosen_then_tail(sel, x, c)


def _chosen_then_tail(sel: Selection, x, c: int):
    """The rows of ``x[:, :c]`` that ``sel`` chose, then ``x[:, c:]``."""
    if c == int(x.shape[1]):
        return sel.gather(x)
    return F.concatenate([sel.gather(x[:, :c]), x[:, c:]], axis=1)


class PrefillRecorder(Policy):
    """Runs one prefill for several policies: records the union of their prefill statistics
    (per layer) without evicting, then :meth:`fork` gives each policy its own cache copy."""

    name = "recorder"

    def __init__(self, policies):
        super().__init__(None)
        self.policies = list(policies)
        self.stats = []

    def reset(self, cache, n_prompt):
        super().reset(cache, n_prompt)
        self.stats = [None] * cache.n_layers

    def stat_windows(self, n_prompt):
        return tuple({w for p in self.policies for w in p.stat_windows(n_prompt)})

    def prefill_done(self, cache, layer, stats):
        self.stats[layer] = stats

    def fork(self, cache, policy) -> KVCache:
        """A private copy of the prefilled ``cache`` with ``policy`` attached and its static
        eviction applied (identical to having prefilled with ``policy`` itself)."""
        c = clone_cache(cache)
        policy.attach(c, self.stats, self.n_prompt)
        return c


def ceil_div(a: int, b: int) -> int:
    return -(-int(a) // int(b))

