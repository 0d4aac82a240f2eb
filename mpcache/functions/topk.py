"""top-k as a one-hot selection matrix, and the secret shuffle it starts with (both
protocols).  The one-hot rows, the trees (amax/argmax) and gather are in :mod:`.select`;
like them, every comparison runs on the two-party bit engine (mpc/pair.py) and stays in
its 2-of-2 form between steps.

**top_k(x, k, axis)** -> one-hot [..., k, n], rows in ascending index order, ties to the
lower index (the contract of nn.functional.top_k_onehot).  Method: *shuffle, then select
with revealed comparisons* (Hamada et al., ICISC 2012; the same idea as SPU's sort):

1. keys kappa_i = x_i 2^l + (n - 1 - i) with l = ceil(log2 n) -- all distinct, a tie in x
   goes to the lower index.  Needs |x| < 2^(62 - l) ring units (true for every encodable
   fixed-point value while n <= 2^18).
2. a secret random permutation of (kappa, i): pi = pi_AD o pi_BD o pi_AB, each part known
   to two parties only (the dealer knows two parts, each data party one), so every party
   sees a uniformly random order: 2 rounds, 16 n bytes per data party.
3. multi-pivot selection: each level compares every candidate with t pivots (the first t
   candidates: a random sample, because the order is random) and *reveals* the results;
   the bucket that contains the k-th largest becomes the next candidate set.
   t = max(2, floor(max(budget n, 64) / |S|)) (all pairs once that fits, or once all
   pairs of every row of the batch total at most ``ALL_PAIRS_PER_LEVEL``): about
   4.3 n comparisons and 3.9 levels (5 or 6 rounds each) for n = 1024, k = 64.
4. the k selected original indices are shuffled again (fresh permutation, 2 rounds),
   sorted by all-pairs comparisons of (l + 1)-bit values whose results are revealed
   (k(k-1)/2 small comparisons, 1 + ceil(log2 l) + 1 rounds), then one_hot() of each.
   ``ordered=False`` skips the shuffle and the sort: the rows come in the order the
   selection picked their shuffled positions -- a secret order, as the indices are still
   secret-shared and the shuffle is secret -- for callers that use the rows as a set
   (a decoding step's gather and scatter with one one-hot: MPCache, H2O, SnapKV, token
   top-k).  Static eviction keeps the order (neighbouring tokens must stay neighbours).

What is revealed, and why it is harmless: all parties (they must follow the same control
flow) learn the outcomes of comparisons between keys at *shuffled* positions.  Keys are
distinct and the permutation is uniform and unknown to each party, so these outcomes are
distributed as the order pattern of a uniformly random permutation -- independent of x --
and the simulator reproduces them (and the number of levels and candidate sizes) by
running the same algorithm on a random permutation.  The second shuffle decouples the
revealed index order of the selected elements from the revealed key comparisons.  So
top-k reveals k (public) and nothing else.  Costs and the comparison with a bitonic
network and with k argmax rounds: docs/nonlinear-compare.md.
"""
from __future__ import annotations

import functools

import numpy as np

from ..mpc.compare_core import msb_bits
from ..mpc.pair import Pair
from ..ring import RING
from ..tensor import SecretTensor
from .factored import FactoredOneHot
from .select import (_axis, _from_native, _onehot_rows, _onehot_rows_many, _perm, _public_pair,
                     _require_secret, _rows, _take_rows)


# -- shuffle (pair form) --------------------------------------------------------------------------
def shuffle(pair: Pair, X: np.ndarray, tag="shuffle") -> np.ndarray:
    """Apply a secret uniform permutation to axis 1 of pair-shared X [R, m, ...] (one
    permutation per row).  pi = pi_BD o pi_AD o pi_AB: pi_AB from the A-B key (local at A,
    B), pi_AD and pi_BD each applied by the dealer and one data party after the other data
    party hands its share over masked.  2 rounds, 8 |X| bytes per data party; the dealer's
    re-randomised shares (8 |X| to each) are data-independent (offline)."""
    p = pair.party
    R, m = X.shape[0], X.shape[1]
    shape = X.shape
    role = pair.role
    if role != "D":
        X = _take_rows(X, _perm(pair.kAB, (R, m)))
    # pi_AD: B hands X_B - mB to A; the dealer re-shares its part (mB permuted) to B.
    if role == "D":
        mB = pair.kB.ring(shape)
        pi = _perm(pair.kA, (R, m))
        mp = pair.kA.ring(shape)
        p.send(pair.B, _take_rows(mB, pi) + mp, tag + ".ad", offline=True)
    elif role == "B":
        mB = pair.kB.ring(shape)
        p.send(pair.A, X - mB, tag + ".b2a")
        X = p.recv(pair.D, tag + ".ad", shape)
    else:
        Y = X + p.recv(pair.B, tag + ".b2a", shape)
        pi = _perm(pair.kA, (R, m))
        X = _take_rows(Y, pi) - pair.kA.ring(shape)
    # pi_BD: A hands X_A - mA to B; the dealer re-shares its part to A.
    if role == "D":
        mA = pair.kA.ring(shape)
        pi = _perm(pair.kB, (R, m))
        mq = pair.kB.ring(shape)
        p.send(pair.A, _take_rows(mA, pi) + mq, tag + ".bd", offline=True)
        return np.zeros(shape, RING)
    if role == "A":
        mA = pair.kA.ring(shape)
        p.send(pair.B, X - mA, tag + ".a2b")
        return p.recv(pair.D, tag + ".bd", shape)
    Y = X + p.recv(pair.A, tag + ".a2b", shape)
    pi = _perm(pair.kB, (R, m))
    return _take_rows(Y, pi) - pair.kB.ring(shape)


# -- top-k ----------------------------------------------------------------------------------------
def _reveal_lt(pair: Pair, d: np.ndarray, nbits: int = 64, tag="topk.cmp") -> np.ndarray:
    """Public [d < 0] for pair-shared d (all parties learn it).  nbits < 64: d is known to
    satisfy |d| < 2^(nbits-1) and only its low nbits bits are used (cheaper)."""
    d = d.reshape(-1)
    if d.size == 0:
        return np.zeros(0, bool)
    bits = msb_bits(pair, d, tag, nbits=min(int(nbits), 64))
    return pair.reveal_bits(bits, tag + ".reveal").astype(bool)


#: At least this many pivots per selection level (fewer levels, a few more comparisons:
#: n = 1024, k = 64 -> about 4.3 n comparisons, 3.9 levels on average, 6 at the 99th
#: percentile, against 3.5 n / 4.5 / 8 with one pivot).
MIN_PIVOTS = 2
#: At least this many comparisons per row and level: ``budget * n`` is tiny for a small n
#: (a decoding step's top-k over 8 to 64 clusters), and a level is 5-6 rounds.  Measured
#: (add2, best of 6): [12 rows, n = 8, k = 4] 18 -> 8 rounds, 4.9 -> 2.7 ms; [3, 10, 5]
#: 17.7 -> 8 rounds, 3.4 -> 1.7 ms; [12, 30, 4] 21.8 -> 20.5 rounds; n = 1024 unchanged.
MIN_LEVEL_COMPARISONS = 64
#: A level compares ALL pairs of every active row's candidates (and so ends the selection)
#: when that is at most this many comparisons over the whole batch: a level costs 5-6
#: rounds, an extra comparison about 3 us of the two parties' time.  Measured (add2,
#: decoding steps at 2048 tokens, top-k over ~30 clusters): SmolLM2's 3 KV heads (1305
#: pairs) -12 ms per step and 118 rounds fewer; gpt2's 12 heads (5220 pairs) +12 ms, so
#: those keep the pivot levels.
ALL_PAIRS_PER_LEVEL = 1536


@functools.lru_cache(maxsize=256)
def _level_pattern(m: int, t: int):
    """Positions (into a row's candidates) of one level's comparisons ``K[a] < K[b]``:
    every non-pivot against every pivot (pivots = the first t), then the pivot pairs."""
    ii, jj = np.triu_indices(t, 1)
    a = np.concatenate([np.repeat(np.arange(t, m), t), ii])
    b = np.concatenate([np.tile(np.arange(t), m - t), jj])
    return a, b, ii, jj


def _pick_top(pair: Pair, K: np.ndarray, k: int, budget: float) -> np.ndarray:
    """Positions [R, k] of the k largest of each row of the (shuffled, distinct) keys K.

    Per row: candidates S (shuffled positions), ``need`` still to pick from S.  A level
    compares S's non-pivots with its t pivots (and the pivots pairwise) and reveals the
    results; in walk order -- bucket 0 (above every pivot), the top pivot, bucket 1, ... --
    everything before the ``need``-th element is chosen, and the bucket holding it (unless
    taken whole) becomes the next S.  Rows of the same (|S|, t) are handled as one array."""
    R, n = K.shape
    S = [np.arange(n)] * R
    need = [k] * R
    chosen = [[] for _ in range(R)]
    cap = max(1.0, budget * n, MIN_LEVEL_COMPARISONS)
    while True:
        for r in range(R):
            if need[r] and need[r] == len(S[r]):          # the rest is all of S
                chosen[r].extend(S[r].tolist())
                need[r] = 0
        act = [r for r in range(R) if need[r] > 0]
        if not act:
            break
        all_pairs = sum(len(S[r]) * (len(S[r]) - 1) // 2 for r in act) <= ALL_PAIRS_PER_LEVEL
        groups = {}
        for r in act:
            m = len(S[r])
            t = m if all_pairs or m * (m - 1) // 2 <= cap else \
                min(m, max(MIN_PIVOTS, int(cap // m)))
            groups.setdefault((m, t), []).append(r)
        plans, qr, qa, qb = [], [], [], []
        for (m, t), rows in groups.items():
            Sg = np.stack([S[r] for r in rows])                    # [G, m]
            a, b, ii, jj = _level_pattern(m, t)
            qr.append(np.repeat(np.asarray(rows), a.size))
            qa.append(Sg[:, a].reshape(-1))
            qb.append(Sg[:, b].reshape(-1))
            plans.append((m, t, rows, Sg, ii, jj))
        rr, qa, qb = np.concatenate(qr), np.concatenate(qa), np.concatenate(qb)
        lt = _reveal_lt(pair, K[rr, qa] - K[rr, qb]).astype(np.int64)
        off = 0
        for m, t, rows, Sg, ii, jj in plans:
            G, no = len(rows), (m - t) * t
            L = lt[off:off + G * (no + ii.size)].reshape(G, no + ii.size)
            off += L.size
            g = L[:, :no].reshape(G, m - t, t).sum(axis=2)          # pivots above each o
            above = np.zeros((G, t, t), np.int64)                   # [i, j]: P_j above P_i
            above[:, ii, jj] = L[:, no:]
            above[:, jj, ii] = 1 - L[:, no:]
            order = np.argsort(above.sum(axis=2), axis=1, kind="stable")   # top pivot first
            elems = np.concatenate([Sg[:, t:], np.take_along_axis(Sg[:, :t], order, 1)], 1)
            slot = np.concatenate([2 * g, np.broadcast_to(2 * np.arange(t) + 1, (G, t))], 1)
            walk = np.argsort(slot, axis=1, kind="stable")         # walk order
            es, ss = np.take_along_axis(elems, walk, 1), np.take_along_axis(slot, walk, 1)
            for i, r in enumerate(rows):
                nd = need[r]
                st = ss[i, nd - 1]                                  # slot of the nd-th
                if st % 2:                                          # a pivot: done
                    chosen[r].extend(es[i, :nd].tolist())
                    need[r] = 0
                    continue
                lo, hi = np.searchsorted(ss[i], [st, st + 1])
                chosen[r].extend(es[i, :lo].tolist())
                if hi - lo == nd - lo:                              # the bucket, whole
                    chosen[r].extend(es[i, lo:hi].tolist())
                    need[r] = 0
                else:
                    S[r], need[r] = es[i, lo:hi], nd - lo
    return np.array(chosen, dtype=np.int64).reshape(R, k)


def _sort_small(pair: Pair, I: np.ndarray, nbits: int) -> np.ndarray:
    """Sort pair-shared distinct small non-negative integers I [R, k] (< 2^(nbits-1))
    ascending: shuffle, reveal all-pairs comparisons, rank, reorder."""
    R, k = I.shape
    if k <= 1:
        return I
    I = shuffle(pair, I, "topk.shuffle2")
    ii, jj = np.triu_indices(k, 1)
    lt = _reveal_lt(pair, I[:, ii] - I[:, jj], nbits, "topk.sort").reshape(R, -1)
    rank = np.zeros((R, k), np.int64)               # number of smaller elements
    for r in range(R):
        np.add.at(rank[r], jj, lt[r])               # I_i < I_j: j has one more below
        np.add.at(rank[r], ii, 1 - lt[r])
    order = np.argsort(rank, axis=1)
    return _take_rows(I, order)


def _check_key_range(x, l: int, bound) -> None:
    """top-k's keys are ``x * 2^l + index``: they must not wrap, i.e. |x| < 2^(62 - l)
    ring units.  A secret's size cannot be checked without a comparison, so the check is
    on a public bound: ``bound`` (in x's own units) when given, else the fixed-point
    encoding range |v| < 2^(62 - 2f) (ring.py).  Ring integers (frac 0) have no
    encoding range: |x| < 2^(62 - l) is the caller's precondition, checked only
    against a ``bound`` the caller passes."""
    limit = 2.0 ** (62 - l - x.frac)          # in x's units
    if bound is None:
        if x.frac == 0:
            return                             # documented: |x| < 2^(62 - l) for integers
        bound = 2.0 ** (62 - 2 * x.frac)
        if bound >= limit:
            raise ValueError(
                f"top_k over {1 << l} entries needs |x| < 2^{62 - l - x.frac} "
                f"(= {limit:g}), below the encodable range 2^{62 - 2 * x.frac}; pass "
                f"bound=B (a public bound on |x|, B < {limit:g}) to state it holds")
        return
    if not bound < limit:
        raise ValueError(f"top_k: bound {bound!r} is not below 2^{62 - l - x.frac} "
                         f"(= {limit:g}): keys x * 2^{l} + index would wrap")


def top_k(x, k: int, axis: int = -1, budget: float = 1.0, ordered: bool = True,
          bound: float | None = None, factor: int | None = None):
    """One-hot selection [..., k, n] of the k largest entries of x along ``axis`` (moved
    last), rows in ascending index order, ties to the lower index; reveals only k.
    ``budget``: comparisons per level in units of n (more: fewer levels, more bytes).
    ``ordered=False``: the same k rows in a secret order (no party learns it: it follows
    the secret shuffle), skipping step 4 -- the second shuffle and the revealed sort,
    2 + ceil(log2 l) + 4 rounds (add2; rep3 one more) and k(k-1)/2 small comparisons.
    For consumers that use the one-hot as a set (a gather and a scatter with the same
    one-hot, a sum over the rows): a decoding step's attention over the selected rows.
    ``bound``: a public bound on |x| (x's units) when it is tighter than the encodable
    range; needed only when the keys' index bits would not fit otherwise (see
    :func:`_check_key_range`).  ``factor=n2`` (with ``ordered=False``): the one-hot as a
    :class:`~mpcache.functions.factored.FactoredOneHot` -- row ``i`` picks ``j = a n2 +
    b``, kept as one-hots of ``a`` and ``b`` (``ceil(n / n2) + n2`` words per row instead
    of ``n``): the shuffle carries ``a`` and ``b`` as two payload columns (8 n bytes more
    per shuffle) and both one-hots open in the one-hot's single round."""
    _require_secret(x, "top_k")
    axis = _axis(x, axis) if x.ndim else None
    if axis is None:
        raise ValueError("top_k needs a tensor with at least one dimension")
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool):
        raise TypeError(f"k must be an integer, got {k!r}")
    n = x.shape[axis]
    k = int(k)
    if not 0 <= k <= n:
        raise ValueError(f"top-k with k={k} over {n} entries")
    if factor is not None:
        if not isinstance(factor, (int, np.integer)) or isinstance(factor, bool) or factor < 1:
            raise ValueError(f"factor must be a positive integer, got {factor!r}")
        if ordered:
            raise ValueError("a factored top-k is a set of rows: pass ordered=False")
    l = max(1, int(n - 1).bit_length())
    if l > 18:
        raise ValueError(f"top_k supports up to 2^18 entries along the axis, got {n}")
    _check_key_range(x, l, bound)
    party = x.party
    with party.scope("topk"):
        pair, U, batch, _ = _rows(x, axis)
        Rn = U.shape[0]
        if k == 0 or k == n:                  # nothing secret to choose: public rows
            if factor is not None:
                f = FactoredOneHot.from_indices(np.broadcast_to(np.arange(k), batch + (k,)),
                                                n, factor)
                return FactoredOneHot(_public_native(party, f.parts), f.n1, f.n2, n)
            eye = np.broadcast_to(np.eye(n, dtype=np.int64)[:k], (Rn, k, n))
            return _public_native(party, eye.reshape(batch + (k, n)))
        keys = U << np.uint64(l)
        keys = keys + _public_pair(pair, np.broadcast_to(
            np.arange(n - 1, -1, -1, dtype=np.int64).astype(RING), keys.shape))
        j = np.arange(n)
        cols = [j] if factor is None else [j // factor, j % factor]
        idx = [np.broadcast_to(_public_pair(pair, c), keys.shape) for c in cols]
        S = shuffle(pair, np.stack([keys] + idx, axis=-1), "topk.shuffle")
        sel = _pick_top(pair, S[..., 0], k, budget)
        I = [S[np.arange(Rn)[:, None], sel, 1 + c].reshape(-1) for c in range(len(cols))]
        if factor is not None:
            n1 = -(-n // int(factor))
            da, db = _onehot_rows_many(party, pair, [(I[0], n1), (I[1], int(factor))])
            data = np.concatenate([da, db], axis=-1)
            return FactoredOneHot(_from_native(party, data, batch + (k, n1 + int(factor))),
                                  n1, int(factor), n)
        I = I[0].reshape(Rn, k)
        if ordered:
            I = _sort_small(pair, I, l + 1)
        data = _onehot_rows(party, pair, I.reshape(-1), n)
        return _from_native(party, data, batch + (k, n))


def _public_native(party, values):
    """A public integer array as a (trivially) shared SecretTensor, no communication."""
    proto = party.protocol
    v = np.asarray(values).astype(np.int64).view(RING)
    return SecretTensor(party, proto.add_public(proto.zeros_like_share(v.shape), v), 0)


# -- message tags ---------------------------------------------------------------------------
#: Narration of the messages of the shuffle and top-k, per tag (or ``*`` pattern):
#: ``title``; ``local``, what the parties compute for it; ``learns``, why the receiver
#: learns only ``kind`` ("random": masked, the default; "dealer", "shape", "output", "key",
#: "pattern").  ``mpcache explain`` and the trace viewer collect these tables
#: (:data:`mpcache.apps.explain.TAGS`); the tags are the strings the code above sends.
TAGS = {
    "topk.shuffle*.ad": dict(
        title="secret shuffle: dealer's permuted masks (to B)",
        local="the dealer knows two of the three permutation parts and sends B the masks "
              "permuted by its part",
        learns="masks permuted by a permutation B does not know",
        kind="dealer"),
    "topk.shuffle*.bd": dict(
        title="secret shuffle: dealer's permuted masks (to A)",
        local="as .ad, towards A",
        learns="masks permuted by a permutation A does not know",
        kind="dealer"),
    "topk.shuffle*.b2a": dict(
        title="secret shuffle: B hands its masked, permuted share to A",
        local="B sends X - m_B (m_B a mask from its key with the dealer)",
        learns="X - m_B, masked by m_B which A does not hold"),
    "topk.shuffle*.a2b": dict(
        title="secret shuffle: A hands its masked, permuted share to B",
        local="A sends X - m_A",
        learns="X - m_A, masked by m_A which B does not hold"),
    "topk.*.reveal": dict(
        title="revealed comparisons of SHUFFLED keys (multi-pivot selection / final sort)",
        local="after a secret uniform shuffle, the candidates are compared with the "
              "pivots and the outcome bits are opened to all parties so they can follow "
              "the same control flow; A and B send their bit shares XOR the same bits "
              "from the A-B key, so the dealer gets the outcome and not a raw share "
              "(whose dealt randomness it knows)",
        learns="the outcomes only relate positions of a secret random permutation (keys "
               "are made distinct), so they are simulatable without the data",
        kind="pattern"),
}
