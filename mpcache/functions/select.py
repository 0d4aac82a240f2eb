"""max / min / argmax by comparison trees, one-hot from a secret index, and gather =
one-hot @ X (both protocols).  top-k (shuffle + revealed comparisons) is :mod:`.topk`.

All comparisons run on the two-party bit engine of mpc/pair.py (add2: P0, P1 with dealer
P2; rep3: P1, P2 with helper P0) and stay in its 2-of-2 form between steps, so rep3 pays
its re-sharing to replicated form once per call, not once per comparison.

**amax / amin** (``x.max(axis)``, ``x.min(axis)``): a tree of comparisons of fan-in 4
(:data:`MAX_FANIN`): per level, all pairs of every group of 4 values in ONE batched
comparison and the winner picked by one lookup round (``Pair.bits_to_ring``: the AND of
the member's three "beats" bits times its value), 5 rounds per 4:1 level for batches
<= 2048 comparisons (6 above), about log4 n levels; a last pair takes a binary level (bit
injection ``w = a + [a < b](b - a)`` fused with the last tree level, 4 or 5 rounds).
rep3 + 1 round.  Ties keep the lower index.  About 1.5 n comparisons (binary: n - 1).
Before (binary only): 4-5 rounds per 2:1 level, e.g. max over 64 in 24 rounds, now 15;
softmax's row max over 2049 values in 55, now 34 (costs.max_tree_cost).

**argmax** (``x.argmax(axis)``, one-hot of the same shape, ties -> first index): the same
tree carrying the index as a second payload of the bit injection (+8 bytes per
comparison), then :func:`one_hot` of the winning index (1 round; the one-hot comes out in
the protocol's native sharing, so rep3 needs no re-sharing round).

**one_hot(idx, n)** by rotating a random one-hot: preprocessing (data-independent,
flagged offline) gives a one-hot vector e_r of a random r in [0, N), N = 2^ceil(log2 n),
that no single party knows, and shares of r; online the parties open e = idx - r mod N
(a uniform value: ceil(log2 N) bits, rounded up to 2 or 4 bytes, per row per party;
1 round) and rotate their shares of e_r by e: e_idx[i] = e_r[(i - e) mod N].  No
comparison at all.  Preprocessing: add2 -- the dealer sends 8N(+8) bytes per row to P1;
rep3 -- P0 shares e_{r_a} (8N bytes), P1 and P2 rotate by their common r_b and re-share
(8N bytes each), so r = r_a + r_b is unknown to every single party and the rows come out
*replicated*: a later gather costs rep3's output-size matmul.  Requires 0 <= idx < n
(an index outside wraps modulo N; a negative or >= N index yields a shifted row).

**gather(onehot, X)** = onehot @ X, a ring matmul of an integer one-hot with a fixed X: no
truncation; rep3 8 k d bytes per party in 1 round (output size); add2 a Beaver matrix
product (8(k n + n d) bytes, 1 round; 8 k d offline).

What each party learns, other than the revealed comparison pattern of top_k: only
uniformly masked openings (mpc/pair.py); e = idx - r is uniform because r is uniform and
unknown to the receiver.
"""
from __future__ import annotations

import functools

import numpy as np

from ..kernels import rotate_rows
from ..mpc.base import phantom
from ..mpc.compare_core import msb_bits, sign_to_ring
from ..mpc.costs import tree_fanin
from ..mpc.pair import Pair, pair_of
from ..ring import RING, iota
from ..tensor import SecretTensor
from .compare import from_pair


# -- helpers ------------------------------------------------------------------------------------
def _secret(x):
    return isinstance(x, SecretTensor)


def _require_secret(x, what):
    if not _secret(x):
        raise TypeError(f"{what} expects a SecretTensor, got {type(x).__name__}")


def _axis(x, axis):
    if not isinstance(axis, (int, np.integer)):
        raise TypeError(f"axis must be an integer, got {axis!r}")
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"axis {axis} is out of bounds for a tensor of {x.ndim} dims")
    return int(axis) % x.ndim


def _rows(x, axis):
    """x with ``axis`` moved last, as [rows, n] pair shares; returns (pair, U, batch shape)."""
    xt = x if axis == x.ndim - 1 else _moveaxis(x, axis, -1)
    batch = xt.shape[:-1]
    n = xt.shape[-1]
    pair = pair_of(x.party)
    u = x.party.protocol.to_pair(xt.data).reshape(-1, n)
    return pair, u, batch, n


def _moveaxis(x, src, dst):
    axes = list(range(x.ndim))
    a = axes.pop(src)
    axes.insert(dst % x.ndim if dst >= 0 else x.ndim + dst, a)
    return x.transpose(axes)


def _public_pair(pair: Pair, values) -> np.ndarray:
    """A public constant in pair form (A holds it, B holds 0)."""
    v = np.asarray(values, dtype=RING)
    return v.copy() if pair.role == "A" else np.zeros(v.shape, RING)


def _perm(prg, shape):
    """Uniform random permutations along the last axis (one per row)."""
    return np.argsort(prg.ring(shape), axis=-1, kind="stable")


def _take_rows(X, perm):
    """X [R, m, ...] permuted along axis 1 by per-row ``perm`` [R, m]."""
    return X[iota(X.shape[0])[:, None], perm]


# -- trees ---------------------------------------------------------------------------------------
#: Fan-in of the max/min/argmax tree.  4: every level reduces groups of up to four values by
#: comparing all pairs of a group in ONE batched comparison (6 per group of 4) and picking
#: the winner with one lookup-table round (:func:`_group_level`): 1 + ceil(log2 D) + 1
#: rounds per level for a 4:1 reduction instead of two binary levels (2 x (1 +
#: ceil(log2 D))), e.g. 5 rounds instead of 8 for batches <= 2048 comparisons; 1.5
#: comparisons per value per level instead of 0.5 (about 1.7 x the tree's online bytes).
#: 2: the binary tree (:func:`_pair_level`).
#: 8: additionally, levels over at most :data:`FANIN8_MAX_VALUES` values take groups of 8
#: (28 comparisons, one AND7 lookup: the same rounds as a 4:1 level for an 8:1
#: reduction), and a level of at most 9 values per row is ONE group (the tree's last
#: level): a softmax row max over 2049 values 6 -> 5 levels (rep3 33 -> 28 rounds), max
#: 64 3 -> 2 levels, argmax 1024 5 -> 4.
MAX_FANIN = 8
#: Levels over more than this many values (rows x values, a public size) take fan-in 4,
#: not 8: a member's lookup table has 2^(size-1) entries (128 for a group of 8: with the
#: value as payload 2 kB dealt per member against 128 bytes at fan-in 4).
FANIN8_MAX_VALUES = 1024
#: Levels over more than this many values (rows x values, a public size) stay binary: a
#: fan-in-4 level deals ~2.4x the binary level's tables (128 bytes per member for the
#: lookup, 6 comparisons per group), which for the vocabulary argmax of a decoding step
#: (49152 logits) would add ~10 MB of dealt bytes for 6 rounds.
FANIN4_MAX_VALUES = 32768

def _and_table(k: int) -> np.ndarray:
    """AND of k bits, indexed by sum b_i 2^i (``Pair.bits_to_ring`` tables)."""
    t = np.zeros(1 << k, dtype=np.int64)
    t[-1] = 1
    return t


def _tree(pair: Pair, U: np.ndarray, want_max: bool, payload: np.ndarray | None = None,
          nbits: int = 64, drop: int = 0):
    """Winner of each row of U [R, m] (pair shares); payload [R, m, c] rides along.
    Ties keep the lower index.  Each level's fan-in by the public rule
    ``costs.tree_fanin`` (:data:`MAX_FANIN`; a last pair: binary).  ``nbits``: the
    comparisons' width (:func:`bound_bits`; 64 = any values); ``drop``: coarse
    comparisons (:func:`coarse_drop`)."""
    while U.shape[1] > 1:
        fan = tree_fanin(U.shape[1], U.shape[0], MAX_FANIN, FANIN4_MAX_VALUES,
                         FANIN8_MAX_VALUES)
        if fan > 2:
            U, payload = _group_level(pair, U, want_max, payload, fan, nbits, drop)
        else:
            U, payload = _pair_level(pair, U, want_max, payload, nbits, drop)
    return U[:, 0], (None if payload is None else payload[:, 0])


#: The tree levels' widest coarse comparison (:func:`coarse_drop`): a tree over this many
#: bits below the sign takes 2 digits of 8 bits (4 of 4 in big batches), one tree round
#: fewer than the 31 bits of a bounded (32-bit) comparison.
COARSE_BITS = 16


def coarse_drop(n: int, rows: int, tol: float | None, frac: int, nbits: int) -> tuple:
    """(drop s, loss) of an approximate max/min over ``n`` values per row (``rows`` rows,
    public sizes) on ``nbits``-bit comparisons at ``frac`` fractional bits.

    A coarse comparison (``compare_core.msb_bits(drop=s)``) errs only on values less than
    2^s ring units apart.  A fan-in level's winner is within 2^(s+1) of its group's max
    (each value is masked once, so the comparisons rank one set of numbers y_v =
    floor(x_v / 2^s) + carry_v: a transitive tournament, exactly one winner); a binary
    level's is within 2^s.  The result is within ``loss`` = the sum over the levels.
    s = nbits - 1 - :data:`COARSE_BITS` (a smaller s saves no round, a larger one only
    adds loss) when that loss is at most ``tol`` (real units); else (0, 0.0): exact.
    ``tol`` None: exact."""
    if tol is None:
        return 0, 0.0
    tol = float(tol)
    if not np.isfinite(tol) or tol <= 0:
        raise ValueError(f"a max tolerance must be finite and > 0, got {tol!r}")
    s = nbits - 1 - COARSE_BITS
    weight, m = 0, n
    while m > 1:
        fan = tree_fanin(m, rows, MAX_FANIN, FANIN4_MAX_VALUES, FANIN8_MAX_VALUES)
        weight += 2 if fan > 2 else 1
        m = (m // fan + (1 if m % fan else 0)) if fan > 2 else m // 2 + m % 2
    loss = weight * 2.0 ** (s - frac)
    if s <= 0 or weight == 0 or loss > tol:
        return 0, 0.0
    return s, loss


def sign_drop(nbits: int, frac: int, tol: float | None) -> int:
    """Dropped bits of a coarse sign (``compare_core.msb_bits(drop=)``, unsure only for
    -2^drop <= d < 0 ring units): ``nbits`` - 1 - :data:`COARSE_BITS` (one tree round
    fewer than ``nbits``) when 2^drop is at most ``tol`` (real units at ``frac``
    fractional bits), else 0 (exact).  exp's clip, SiLU's and GELU's thresholds."""
    if tol is None:
        return 0
    if not np.isfinite(tol) or tol <= 0:
        raise ValueError(f"a sign tolerance must be finite and > 0, got {tol!r}")
    s = nbits - 1 - COARSE_BITS
    return s if s > 0 and 2.0 ** (s - frac) <= tol else 0


def _pair_level(pair: Pair, U, want_max, payload, nbits: int = 64, drop: int = 0):
    """One binary level: a batch of m/2 comparisons whose last tree level is fused with
    the bit injection ``w = a + [a < b](b - a)`` (payload: a second injected column).
    1 + ceil(log2 D) rounds (4 for <= 2048 comparisons, 5 above)."""
    m = U.shape[1]
    h = m // 2
    a, b = U[:, 0:2 * h:2], U[:, 1:2 * h:2]
    d = a - b if want_max else b - a          # msb(d) = 1  <=>  take b
    parts = [None if t is None else t.reshape(a.shape)
             for t in msb_bits(pair, d, "max.cmp", nbits=nbits, last=False, drop=drop)]
    if payload is not None:
        pa, pb = payload[:, 0:2 * h:2], payload[:, 1:2 * h:2]
        x = np.concatenate([(b - a)[..., None], pb - pa], axis=-1)
        y = sign_to_ring(pair, parts, x, tag="max.mux")
        W = a + y[..., 0]
        Pw = pa + y[..., 1:]
    else:
        W = a + sign_to_ring(pair, parts, b - a, tag="max.mux")
        Pw = None
    if m % 2:
        W = np.concatenate([W, U[:, -1:]], axis=1)
        if payload is not None:
            Pw = np.concatenate([Pw, payload[:, -1:]], axis=1)
    return W, Pw


@functools.lru_cache(maxsize=None)
def _group_plan(size: int):
    """(pairs (i, j), i < j, of a group of ``size``; per member i the pair indices and
    whether i wins when the pair's bit [x_i < x_j] (max) is 0 -- i.e. i is the lower)."""
    pairs = [(i, j) for i in range(size) for j in range(i + 1, size)]
    beats = [[(k, i == a) for k, (a, b) in enumerate(pairs) if i in (a, b)]
             for i in range(size)]
    return pairs, beats


def _group_level(pair: Pair, U, want_max, payload, fan: int = 4, nbits: int = 64,
                 drop: int = 0):
    """One level of fan-in 4 ("all pairs, then select"): the m values of each row form
    groups of 4 (the last group 2 or 3 values; a single last value passes through).

    1. ONE batched comparison of all pairs (i < j) of every group: b_ij = [x_i < x_j]
       (max; min: [x_j < x_i]) by ``msb_bits`` (finished: 1 + ceil(log2 D) rounds).
       Member i beats j iff NOT b_ij (i < j: ties go to the lower index) or b_ji (j < i).
    2. ONE lookup round (``Pair.bits_to_ring`` with the AND3 table, the member's value and
       payload as the injected payload): ``AND_j beats(i, j) * (x_i, payload_i)`` for
       every member -- exactly one member wins -- summed over the group locally.  Groups
       of 2 or 3 pad the table input with public 1 bits.
    Cost: rounds 1 + ceil(log2 D) + 1 (5 for batches <= 2048 comparisons, 6 above) for a
    4:1 reduction, against 2 x (1 + ceil(log2 D)) = 8 (10) for two binary levels; per
    group of 4: 6 comparisons whose masked openings are the 4 values' (8 bytes each,
    ``masked_digits(pairs=)``: 32 instead of 48 bytes) and 4 lookups (3 bits + 8 bytes
    per payload column each).
    ``fan``: the group size (8 on small levels, or every value of a row of at most 9:
    ``costs.tree_fanin``): fan (fan - 1) / 2 comparisons per group and an AND of fan - 1
    bits per member (a 2^(fan-1)-entry table), the same rounds."""
    R, m = U.shape
    g, r = m // fan, m % fan
    k = (fan if g else r) - 1               # bits per member's lookup (padded with 1s)
    table = _and_table(k)
    Is, Js = [], []                         # the compared values' flat indices in U
    pos = np.arange(R * m).reshape(R, m)
    start = 0
    for size, count in ((fan, g), (r, 1 if r > 1 else 0)):
        if not count:
            continue
        X = pos[:, start:start + size * count].reshape(R, count, size)
        pairs, _ = _group_plan(size)
        for i, j in pairs:
            a, b = (X[..., i], X[..., j]) if want_max else (X[..., j], X[..., i])
            Is.append(a.reshape(-1))
            Js.append(b.reshape(-1))
        start += size * count
    # each value opened once for all its comparisons (compare_core.masked_digits(pairs=))
    bits = msb_bits(pair, U.reshape(-1), "max.cmp", nbits=nbits, drop=drop,
                    pairs=(np.concatenate(Is), np.concatenate(Js)))
    one = np.full(1, 1 if pair.role == "A" else 0, np.uint8)
    pos, start = 0, 0
    sel_bits, sel_vals = [[] for _ in range(k)], []
    for size, count in ((fan, g), (r, 1 if r > 1 else 0)):
        if not count:
            continue
        pairs, beats = _group_plan(size)
        n = R * count
        B = bits[pos:pos + n * len(pairs)].reshape(len(pairs), R, count)
        pos += n * len(pairs)
        X = U[:, start:start + size * count].reshape(R, count, size, 1)
        if payload is not None:
            Pl = payload[:, start:start + size * count].reshape(R, count, size, -1)
            X = np.concatenate([X, Pl], axis=-1)
        for i in range(size):
            got = [B[k] ^ one if lower else B[k] for k, lower in beats[i]]
            got += [np.broadcast_to(one, (R, count))] * (k - len(got))
            for t in range(k):
                sel_bits[t].append(np.ascontiguousarray(got[t]).reshape(-1))
        sel_vals.append(X.transpose(2, 0, 1, 3).reshape(size * n, -1))     # member-major
        start += size * count
    y = pair.bits_to_ring([np.concatenate(b) for b in sel_bits], table,
                          np.concatenate(sel_vals), tag="max.mux")
    W, pos = [], 0
    for size, count in ((fan, g), (r, 1 if r > 1 else 0)):
        if not count:
            continue
        n = R * count
        W.append(y[pos:pos + size * n].reshape(size, R, count, -1).sum(axis=0, dtype=RING))
        pos += size * n
    if r == 1:
        last = U[:, -1:, None]
        if payload is not None:
            last = np.concatenate([last, payload[:, -1:]], axis=-1)
        W.append(last)
    W = np.concatenate(W, axis=1)
    return np.ascontiguousarray(W[..., 0]), (None if payload is None else
                                             np.ascontiguousarray(W[..., 1:]))


def bound_bits(bound, frac: int, pairwise: bool = True) -> int:
    """Comparison width for values known to satisfy ``|x| <= bound`` (public, real units)
    at ``frac`` fractional bits: the differences of two such values, at most
    ``2 bound 2^frac`` ring units, keep their sign in the low ``nbits`` bits when
    ``2 bound 2^frac < 2^(nbits - 1)``; 64 when ``bound`` is None or too big.
    ``pairwise=False``: the sign of one such value (``bound 2^frac < 2^(nbits - 1)``).

    Why it helps: a comparison opens ``d + rho mod 2^nbits`` and combines ``nbits - 1``
    bits in its digit tree, so 32 bits instead of 64 take one tree round fewer (4 instead
    of 8 digits of 8 bits; 8 instead of 16 of 4 bits) and half the opened bytes
    (docs/rounds.md, "Third pass")."""
    if bound is None:
        return 64
    units = (2.0 if pairwise else 1.0) * float(bound) * 2.0 ** frac
    if not np.isfinite(units) or units < 0:
        raise ValueError(f"a comparison bound must be finite and >= 0, got {bound!r}")
    return min(64, max(2, int(np.floor(np.log2(max(units, 1.0)))) + 2))


def _reduce(x, axis, keepdims, want_max, bound=None, tol=None):
    _require_secret(x, "max" if want_max else "min")
    if axis is None:
        out = _reduce(x.reshape(x.size), 0, False, want_max, bound, tol)
        return out.reshape((1,) * x.ndim) if keepdims else out.reshape(())
    axis = _axis(x, axis)
    if x.shape[axis] == 0:
        raise ValueError("max/min of an empty axis")
    with x.party.scope("max" if want_max else "min"):
        pair, U, batch, n = _rows(x, axis)
        nbits = bound_bits(bound, x.frac)
        drop, _ = coarse_drop(n, U.shape[0], tol, x.frac, nbits)
        w, _ = _tree(pair, U, want_max, nbits=nbits, drop=drop)
        out = from_pair(x.party, w, batch, x.frac)
    if keepdims:
        out = out.expand_dims(axis)
    return out


def amax(x, axis=-1, keepdims=False, bound=None, tol=None):
    """Maximum along ``axis`` (None: all).  The fan-in-8 tree (module doc; cost:
    ``mpc.costs.max_tree_cost``), rep3 + 1 round.  ``bound``: a public B with |x| <= B
    for every entry, which the CALLER guarantees (e.g. attention scores, from the
    weights: ``nn.private.score_bound_exponent``); the comparisons then run on
    :func:`bound_bits` bits (fewer rounds and bytes).  An entry outside the bound can
    make the result any of the row's values.

    ``tol``: a public tolerance (real units): the result may be any row entry within
    ``tol`` of the row max (ties and near-ties broken by the masks), bought with coarse
    comparisons (:func:`coarse_drop`: one tree round fewer per level where ``bound``
    gives 32-bit comparisons and the tree's loss fits ``tol``; else exact).  Softmax
    only needs a shift near the max."""
    return _reduce(x, axis, keepdims, True, bound, tol)


def amin(x, axis=-1, keepdims=False, bound=None, tol=None):
    """Minimum along ``axis``: :func:`amax`'s tree with the comparisons reversed."""
    return _reduce(x, axis, keepdims, False, bound, tol)


def _arg(x, axis, want_max, method="tree", bound=None):
    _require_secret(x, "argmax")
    axis = _axis(x, axis)
    if method not in ("tree", "select"):
        raise ValueError(f"argmax method must be 'tree' or 'select', got {method!r}")
    if method == "select":
        from .topk import top_k           # topk builds on this module's one-hot rows
        y = x if want_max else -x
        with x.party.scope("argmax" if want_max else "argmin"):
            out = top_k(y, 1, axis)
        out = out.reshape(out.shape[:-2] + (out.shape[-1],))
        return out if axis == x.ndim - 1 else _moveaxis(out, -1, axis)
    with x.party.scope("argmax" if want_max else "argmin"):
        pair, U, batch, n = _rows(x, axis)
        idx = np.broadcast_to(_public_pair(pair, np.arange(n)), U.shape)[..., None]
        _, wi = _tree(pair, U, want_max, np.ascontiguousarray(idx),
                      nbits=bound_bits(bound, x.frac))
        data = _onehot_rows(x.party, pair, wi[:, 0], n)
        out = _from_native(x.party, data, batch + (n,))
    return out if axis == x.ndim - 1 else _moveaxis(out, -1, axis)


def argmax(x, axis=-1, method="tree", bound=None):
    """One-hot (same shape as x) of the maximum along ``axis``; ties -> first index.
    ``method="tree"``: comparison tree carrying the index, then one_hot (fewest bytes;
    ceil(log2 n) levels).  ``"select"``: top_k(x, 1) (shuffle + revealed comparisons:
    about 3 n comparisons but only ~4 levels for n = 1024: fewer rounds).  ``bound``: a
    public B with |x| <= B the caller guarantees (a decoder's logits, from the weights:
    ``nn.private.act_bound_exponent``): the tree's comparisons run on
    :func:`bound_bits` bits (exact; fewer digits, so fewer tree rounds and bytes)."""
    if bound is not None and method != "tree":
        raise ValueError("argmax's bound applies to method='tree'")
    return _arg(x, axis, True, method, bound)


def argmin(x, axis=-1, method="tree", bound=None):
    """One-hot of the minimum along ``axis`` (:func:`argmax`'s tree reversed)."""
    if bound is not None and method != "tree":
        raise ValueError("argmin's bound applies to method='tree'")
    return _arg(x, axis, False, method, bound)


# -- one-hot from a secret index ------------------------------------------------------------------
def _open_mod(pair: Pair, v: np.ndarray, N, to_dealer: bool, tag="onehot.open"):
    """Open v (pair shares) modulo N (a power of two, or an array of them broadcast against
    v: one modulus per entry) to A and B (and D if asked).

    With ``to_dealer`` A sends ``v_A + z`` and B ``v_B - z`` (z from the A-B key): D
    learns the sum and nothing else.  Without z, D would get B's half ``v_B - r_B`` with
    ``r_B`` its own preprocessing value (rep3: P0 deals ``r_B = r_a - t``), and with A's
    half of a shuffled index (A's shuffle output is a message D dealt) every opened
    index.  Same bytes and rounds."""
    p = pair.party
    top = int(np.max(N))
    dt = np.uint8 if top <= 1 << 8 else np.uint16 if top <= 1 << 16 else np.uint32 \
        if top <= 1 << 32 else np.uint64
    mask = (np.asarray(N, dtype=np.uint64) - np.uint64(1))
    if pair.role == "D":
        if not to_dealer:
            return np.zeros(v.shape, np.int64)
        a = p.recv(pair.A, tag, v.shape).astype(RING)
        b = p.recv(pair.B, tag, v.shape).astype(RING)
        return ((a + b) & mask).astype(np.int64)
    if to_dealer:
        z = pair.ab_mask(v.shape)
        v = v + z if pair.role == "A" else v - z
    mine = (v & mask).astype(dt)
    if to_dealer:
        p.send(pair.D, mine, tag)
    p.send(pair.other, mine, tag)
    theirs = p.recv(pair.other, tag, v.shape).astype(RING)
    return ((mine.astype(RING) + theirs) & mask).astype(np.int64)


def _onehot_rows(party, pair: Pair, idx_u: np.ndarray, n: int) -> np.ndarray:
    """Native share data [slots, M, n] of one-hot rows of the pair-shared indices idx_u [M]."""
    return _onehot_rows_many(party, pair, [(idx_u, n)])[0]


def _onehot_rows_many(party, pair: Pair, items) -> list:
    """:func:`_onehot_rows` for several ``(indices [M_j], n_j)`` at once: one random one-hot
    per row and ONE opening round for all of them (each entry modulo its own N_j)."""
    proto = party.protocol
    Ns = [1 << max(0, int(n - 1).bit_length()) for _, n in items]
    with party.scope("onehot"):
        rs = [proto.random_onehot(int(idx.shape[0]), N) for (idx, _), N in zip(items, Ns)]
        v = np.concatenate([idx - r for (idx, _), (_, r) in zip(items, rs)])
        mods = np.concatenate([np.full(int(idx.shape[0]), N, np.uint64)
                               for (idx, _), N in zip(items, Ns)])
        e = _open_mod(pair, v, mods, to_dealer=proto.name == "rep3")
        out, at = [], 0
        for (idx, n), (R, _) in zip(items, rs):
            M = int(idx.shape[0])
            out.append(phantom((M, n), proto.slots) if not proto.active
                       else rotate_rows(R, e[at:at + M], n))
            at += M
        return out


def _from_native(party, data, shape):
    if not party.protocol.active:
        return SecretTensor(party, phantom(tuple(shape), party.protocol.slots), 0)
    return SecretTensor(party, data.reshape((data.shape[0],) + tuple(shape)), 0)


def one_hot(idx, n: int):
    """One-hot rows (ring integers, shape idx.shape + (n,)) of a secret integer index
    tensor with 0 <= idx < n.  Online: 1 round, a few bytes per index; preprocessing
    (offline) 8 N bytes per index (see the module docstring)."""
    _require_secret(idx, "one_hot")
    if idx.frac != 0:
        raise ValueError("one_hot needs a ring-integer index tensor (frac 0); got a "
                         "fixed-point tensor -- share indices with integer=True")
    n = int(n)
    if n < 1:
        raise ValueError(f"one_hot needs n >= 1, got {n}")
    pair = pair_of(idx.party)
    u = idx.party.protocol.to_pair(idx.data).reshape(-1)
    data = _onehot_rows(idx.party, pair, u, n)
    return _from_native(idx.party, data, idx.shape + (n,))


def gather(onehot, X):
    """``onehot @ X``: rows of X picked by a (secret) one-hot [..., k, n]; X [..., n, d] may
    be secret or public.  An integer one-hot times a fixed X needs no truncation: rep3
    8 k d bytes per party in 1 round; add2 8 (k n + n d) bytes in 1 round."""
    _require_secret(onehot, "gather")
    if onehot.frac != 0:
        raise ValueError("gather needs a ring-integer one-hot (frac 0), e.g. from top_k, "
                         "argmax or one_hot")
    if onehot.ndim < 1:
        raise ValueError("gather needs a one-hot with at least one dimension")
    xs = X.shape if _secret(X) else np.shape(X)
    ax = xs[-2] if len(xs) >= 2 else (xs[0] if xs else None)
    if ax != onehot.shape[-1]:
        raise ValueError(f"gather: one-hot over {onehot.shape[-1]} entries cannot index "
                         f"{ax} rows (shapes {onehot.shape} and {tuple(xs)})")
    with onehot.party.scope("gather"):
        return onehot @ X


# -- message tags ---------------------------------------------------------------------------
#: Narration of the messages of one-hot, per tag (or ``*`` pattern): ``title``; ``local``,
#: what the parties compute for it; ``learns``, why the receiver learns only ``kind``
#: ("random": masked, the default; "dealer", "shape", "output", "key", "pattern").
#: ``mpcache explain`` and the trace viewer collect these tables
#: (:data:`mpcache.apps.explain.TAGS`); the tags are the strings the code above sends.
TAGS = {
    "onehot.open": dict(
        title="one-hot of a secret index: open e = idx - r mod N",
        local="the data parties open e = idx - r (r: the random one-hot's index, unknown "
              "to everyone) and rotate their shares of onehot(r) by e: onehot(idx), no "
              "comparison; rep3's helper P0 also needs e: A sends its half + z, B its "
              "half - z (z from the A-B key), so P0 cannot unmask B's half with the "
              "r-share it dealt",
        learns="e = idx - r mod N, uniform because r is uniform and unknown to each party"),
    "max.mux": dict(
        title="max/argmax tree level: each group's winner in one lookup round (fan-in 2, "
              "4, 8, or one last group of up to 9 values: costs.tree_fanin)",
        local="all pairs of every group were compared in one batch; a member's bits 'beats "
              "j' (ties to the lower index) index a dealt AND table of 2^(size-1) entries, "
              "opened as masked bits together with x - alpha: the member's value (argmax: "
              "and index) times its winner bit; the group's members are summed locally "
              "(a binary level fuses its last carry level into this round instead)",
        learns="the table index masked by dealer bits (uniform) and x - alpha (uniform)"),
}
