"""Attention over cluster rows chosen by a secret one-hot, gathered or not (issue 7).

MPCache's decode step reads ``B = s + k c + w`` rows per KV head: the ``s`` sink rows and
the newest ``w`` rows (public positions: slices) and ``k`` clusters of ``c`` rows chosen by
a secret one-hot ``G`` ``[h, k, NC]`` over the ``NC`` candidate clusters of the *pool*
(``P = NC c`` rows after the sink).  The direct way gathers them, ``G @ blocks``, for K
and for V.  Under MPC a product costs its output: rep3 re-shares it, and under add2 the
fresh product is not persisted, so the attention matmul that reads it opens it.  Either
way that is about ``2 k c d`` ring words per KV head and layer (d = head dim).

Attention only needs ``q K_sel^T`` and ``p V_sel``, and ``G`` is linear (Quest and the
MPCache paper's "token gathering" leave this implicit):

    scores_sel = G (q K_pool^T)         select the pool's score columns, cluster-wise
    p V_sel    = (G^T p_sel) V_pool     scatter the probabilities back onto the pool

so the selection can act on the ``r`` score columns of each pool row (``r`` = query rows
of the KV head's group: ``group`` at decode) instead of on its ``d`` key dimensions:
about ``2 r P`` words per KV head and layer.  :meth:`SelectedRows.lazy` takes the cheaper
of the two by that public count (``r P < k c d``): gpt2-small (r = 1) at 2048 tokens with
50% static eviction reads P ~ 1000 score words instead of 4096 K words per head.

Exactness: ``G`` is 0/1 in the ring, so the selected scores are the very ring values the
gathered path computes before its truncation; the lazy path keeps ``q K^T`` at ``2f``
fractional bits (``rescale=False``), selects, and truncates the ``B`` selected scores
once.  Both paths give the same scores and the same context (a test checks tokens and
values against the gathered path).  What each party learns: nothing new -- only products,
re-sharings and truncations of secrets; ``k``, ``NC``, ``c`` and the path taken are
public (they follow from the public budget and shapes).

Rounds per layer: gathered 1 (gather) + 2 (fused product) for the scores and the same for
the context; lazy 1 + 1 + truncation (rep3 2, add2 1) for the scores, 1 + 2 for the
context.  The gathers and selections are counted in cost scope ``gather``.

add2 opens a product's operands, so the lazy path's selection opens ``G`` itself (``k NC``
words per one-hot head, once: :meth:`SelectedRows._onehot_right`).  A ``G`` that comes as
two small one-hots (:class:`~mpcache.functions.factored.FactoredOneHot`, chosen by
:func:`gather_factor`) opens ``k (n1 + n2)`` words for them and ``k r c n1`` per
intermediate instead, for one more round in the scores and one in the context.
"""
from __future__ import annotations

import numpy as np

from ..functions.factored import FactoredOneHot, block_width, opened_words
from . import functional as F

__all__ = ["SelectedRows", "attention_scores", "attention_context", "gather_factor",
           "lazy_pays"]


def lazy_pays(r: int, n_clusters: int, cluster: int, k: int, d: int) -> bool:
    """Whether selecting score columns moves fewer words than gathering rows: ``r P < k c
    d`` (``P = n_clusters cluster`` pool rows, ``r`` query rows per one-hot head, head dim
    ``d``).  A public decision on public sizes."""
    return r * n_clusters * cluster < k * cluster * d


def gather_factor(scores, n: int, k: int, cluster: int, d: int, rows: int = 1) -> int | None:
    """The block width ``n2`` for a top-k of ``k`` among ``n`` candidate clusters whose
    one-hot will select ``rows x cluster`` score columns (``rows``: query rows per one-hot
    head -- 1 for a choice per query head at decode, the group for one per KV head; head
    dim ``d``), or None for the dense one-hot.  Factored
    (functions/factored.py) when the protocol's products cost their operands (add2), the
    attention takes the lazy path (:func:`lazy_pays`; the gathered path would multiply the
    factors out) and the factored selection opens fewer words, ``n1 + n2 + 2 w n1 < n``
    per row with ``w = rows x cluster`` (the factors once, the intermediates of the score
    selection and of the context scatter); rep3 and plaintext keep the dense form.  Public
    sizes only."""
    if F.is_plain(scores) or not scores.party.protocol.products_open_operands:
        return None
    if not lazy_pays(rows, n, cluster, k, d):
        return None
    w = int(rows) * int(cluster)
    n2 = block_width(n, w)
    return n2 if opened_words(n, n2, w) < int(n) else None


class SelectedRows:
    """Rows ``[head | G @ pool clusters | tail]`` of a cache tensor ``x`` [h, n, d], kept as
    the recipe rather than the rows (see the module docstring).  ``onehot`` is ``G``
    ``[h|1, k, NC]``; the pool is ``x[:, start : start + NC * cluster]``; the head is the
    first ``head`` rows (default ``start``; fewer when rows between the head and the pool
    are not read); the tail is the last ``tail`` rows.  A one-hot per QUERY head (``h`` a
    multiple of x's KV heads, a group's query heads consecutive) reads its KV head's rows:
    the products run per KV head with the group's one-hots (and queries) stacked, so the
    cache is never copied per query head (the same products, bytes and rounds).  ``lazy``:
    True selects score columns, False gathers rows, None (default) takes the one that
    moves fewer words (:meth:`lazy`)."""

    def __init__(self, x, onehot, start: int, n_clusters: int, cluster: int, tail: int,
                 lazy: bool | None = None, head: int | None = None):
        hx, ho = int(x.shape[0]), int(onehot.shape[0])
        if ho > 1 and ho % hx:
            raise ValueError(f"{ho} one-hot heads over {hx} KV heads")
        self.g = max(1, ho // hx)       # one-hots (query heads) per KV head; 1: broadcast
        self.x, self.onehot, self.mode = x, onehot, lazy
        self.start, self.nc, self.c, self.w = int(start), int(n_clusters), int(cluster), int(tail)
        self.head = self.start if head is None else int(head)
        if not 0 <= self.head <= self.start:
            raise ValueError("head rows must end before the pool")
        self.k = int(onehot.shape[-2])
        if int(onehot.shape[-1]) != self.nc:
            raise ValueError(f"one-hot over {int(onehot.shape[-1])} clusters, pool has {self.nc}")
        if self.start + self.nc * self.c > int(x.shape[1]) - self.w:
            raise ValueError("the pool overlaps the recent window")
        self._rows = None

    def _onehot_right(self):
        """``G`` [h, k, NC] persisted, for the lazy products written with G (or G^T) as
        the RIGHT operand: ``(G pool)^T = pool^T G^T`` and ``(G^T p)^T = p^T G``.  add2
        then opens ``G - B`` once per step for both (the K rows' scores and the V rows'
        context share the one-hot object, so it is persisted in place) instead of
        ``G - A`` in each Beaver product: the one-hot is k NC words per head, the other
        operands r P and r k c.  rep3: nothing changes (its products cost their
        outputs)."""
        if not F.is_plain(self.onehot):
            self.onehot.persist()             # in place: a no-op once persisted
        return self.onehot

    @property
    def factored(self) -> bool:
        """Whether ``G`` came as two small one-hots (:func:`gather_factor`): the lazy
        selection and scatter then run as two products each
        (:meth:`FactoredOneHot.contract` / :meth:`~FactoredOneHot.scatter`)."""
        return isinstance(self.onehot, FactoredOneHot)

    def _dense(self):
        """``G`` as dense rows (the gathered path; a factored ``G`` is multiplied out)."""
        return self.onehot.dense() if self.factored else self.onehot

    @property
    def shape(self) -> tuple:
        h, _, d = (int(v) for v in self.x.shape)
        return (h * self.g, self.head + self.k * self.c + self.w, d)

    def _per_query_head(self, part):
        """A [hx, m, d] slice of the cache repeated for each one-hot head (small parts
        only: the head and tail rows)."""
        if self.g == 1:
            return part
        return part[np.repeat(np.arange(int(self.x.shape[0])), self.g)]

    def _grouped(self, t):
        """[hx g, r, m] -> [hx, g r, m]: a group's query heads stacked per KV head."""
        h, r, m = (int(v) for v in t.shape)
        return t.reshape(h // self.g, self.g * r, m)

    def lazy(self, r: int) -> bool:
        """Whether to select score columns instead of gathering rows: the ``lazy`` given at
        construction, or (None) whether that moves fewer words, ``r P < k c d`` -- a public
        decision on public sizes."""
        if self.mode is not None:
            return bool(self.mode)
        return lazy_pays(r, self.nc, self.c, self.k, int(self.x.shape[2]))

    def _parts(self):
        n, pe = int(self.x.shape[1]), self.start + self.nc * self.c
        return self.x[:, :self.head], self.x[:, self.start:pe], self.x[:, n - self.w:]

    def rows(self):
        """The selected rows themselves, ``[h, B, d]``: one gather of whole clusters."""
        if self._rows is None:
            head, pool, tail = self._parts()
            hx, d = int(self.x.shape[0]), int(self.x.shape[2])
            with F.scope(self.onehot, "gather"):
                mid = self._grouped(self._dense()) @ pool.reshape(hx, self.nc, self.c * d)
            self._rows = F.concatenate([self._per_query_head(head),
                                        mid.reshape(hx * self.g, self.k * self.c, d),
                                        self._per_query_head(tail)], axis=1)
        return self._rows

    def _gap(self) -> int:
        """Rows between the pool and the recent window (the start of the partial cluster
        the window begins in): never read; the lazy path multiplies the whole cache ``x``
        (no copy of ``[head | pool | tail]``) and drops or zero-weights these columns."""
        return int(self.x.shape[1]) - self.w - (self.start + self.nc * self.c)

    def scores(self, q):
        """``q @ rows().T`` for ``q`` [h, r, d] -> [h, r, B], by the cheaper path."""
        h, r = int(q.shape[0]), int(q.shape[1])
        if not self.lazy(r):
            return q @ self.rows().transpose((0, 2, 1))
        s, nc, c, k = self.start, self.nc, self.c, self.k
        full = _exact_matmul(self._grouped(q), self.x.transpose((0, 2, 1)))  # 2f bits
        full = full.reshape(h, r, int(self.x.shape[1]))
        pool = full[:, :, s:s + nc * c].reshape(h, r, nc, c)                 # [h, r, nc, c]
        with F.scope(self.onehot, "gather"):                                 # (G pool)^T
            cols = pool.transpose((0, 1, 3, 2)).reshape(h, r * c, nc)
            g = self._onehot_right()
            mid = g.contract(cols) if self.factored else \
                cols @ g.transpose((0, 2, 1))                               # [h, r c, k]
        mid = mid.reshape(h, r, c, k).transpose((0, 1, 3, 2)).reshape(h, r, k * c)
        tail = full[:, :, int(self.x.shape[1]) - self.w:]                     # gaps dropped
        out = F.concatenate([full[:, :, :self.head], mid, tail], axis=2)
        return _rescale(out)

    def context(self, probs):
        """``probs @ rows()`` for ``probs`` [h, r, B] -> [h, r, d], by the cheaper path."""
        h, r = int(probs.shape[0]), int(probs.shape[1])
        if not self.lazy(r):
            return probs @ self.rows()
        hd, nc, c, k = self.head, self.nc, self.c, self.k
        mid = probs[:, :, hd:hd + k * c].reshape(h, r, k, c).transpose((0, 1, 3, 2))
        with F.scope(self.onehot, "gather"):                                 # scatter back
            g = self._onehot_right()
            mid = mid.reshape(h, r * c, k)
            pool = g.scatter(mid) if self.factored else mid @ g             # [h, r c, nc]
        pool = pool.reshape(h, r, c, nc).transpose((0, 1, 3, 2)).reshape(h, r, nc * c)
        parts = [probs[:, :, :hd]]
        if self.start > hd:                  # public zeros: exact, local under MPC
            parts.append(np.zeros((h, r, self.start - hd)))
        parts.append(pool)
        gap = self._gap()
        if gap:
            parts.append(np.zeros((h, r, gap)))
        full = F.concatenate(parts + [probs[:, :, hd + k * c:]], axis=2)
        return (self._grouped(full) @ self.x).reshape(h, r, int(self.x.shape[2]))


def attention_scores(q, keys):
    """``q @ keys^T`` per KV head, for a cache tensor or a :class:`SelectedRows`."""
    if isinstance(keys, SelectedRows):
        return keys.scores(q)
    return q @ keys.transpose((0, 2, 1))


def attention_context(probs, values):
    """``probs @ values`` per KV head, for a cache tensor or a :class:`SelectedRows`."""
    if isinstance(values, SelectedRows):
        return values.context(probs)
    return probs @ values


def _exact_matmul(a, b):
    return a @ b if F.is_plain(a) and F.is_plain(b) else a.matmul(b, rescale=False)


def _rescale(x):
    return x if F.is_plain(x) else x.rescale()
