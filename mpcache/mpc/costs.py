"""Communication cost of each engine-core protocol as formulas (bytes are per party, the
max over parties; rounds on the critical path; offline = dealer/helper traffic, max over
parties).  tests/mpc/test_core_costs.py checks every formula against the accounting at three
shapes, so the docs (docs/protocols.md) and the code cannot drift apart.  The comparison
core's formulas (:func:`cmp_cost`, :func:`cmp_levels`, :func:`tree_levels`) follow;
tests/functions/test_compare.py checks them.

``n``: number of output elements; ``m, k, q``: matmul (m x k) @ (k x q); ``E = 8`` bytes.
"""
from __future__ import annotations

import numpy as np

from . import compare_core as _core

E = 8


def cost(protocol: str, op: str, n: int = 0, m: int = 0, k: int = 0, q: int = 0,
         ndim: int = 1) -> dict:
    """{'bytes': online bytes per party, 'rounds': rounds, 'offline': offline bytes}."""
    table = _REP3 if protocol == "rep3" else _ADD2
    b, r, off = table[op](n=n, m=m, k=k, q=q, ndim=ndim)
    return {"bytes": b, "rounds": r, "offline": off}


_REP3 = {
    # owner sends x - x_o to P_{o+1} (x_{o+2} = 0) and the shape to P_{o+2}
    "share": lambda n, ndim, **_: (E * n + E * ndim, 1, 0),
    # each P_i sends one component to P_{i-1}
    "reveal": lambda n, **_: (E * n, 1, 0),
    # local cross terms + zero-sharing, one value to one neighbour
    "mul_ring": lambda n, **_: (E * n, 1, 0),
    "matmul_ring": lambda m, q, **_: (E * m * q, 1, 0),
    # fused product + exact truncation: P2 sends its part to P0 and P1 (round 1),
    # P0 and P1 exchange masked parts (round 1) and re-share (round 2); P2 deals [s],[m]
    "mul_fixed": lambda n, **_: (2 * E * n, 2, 2 * E * n),
    "matmul_fixed": lambda m, q, **_: (2 * E * m * q, 2, 2 * E * m * q),
    # standalone truncation (e.g. times a public float): P0, P1 open and re-share
    "trunc": lambda n, **_: (2 * E * n, 2, 2 * E * n),
}

_ADD2 = {
    # owner keeps x - r, the peer derives r from their key: only the shape moves
    "share": lambda ndim, **_: (2 * E * ndim, 1, 0),
    # P0 and P1 send their shares to the two others
    "reveal": lambda n, **_: (2 * E * n, 1, 0),
    # Beaver: open e = x - a and f = y - b; dealer sends c1
    "mul_ring": lambda n, **_: (2 * E * n, 1, E * n),
    "matmul_ring": lambda m, k, q, **_: (E * (m * k + k * q), 1, E * m * q),
    # + truncation: open c (1 round), dealer sends [s], [m] parts to P1
    "mul_fixed": lambda n, **_: (3 * E * n, 2, 3 * E * n),
    "matmul_fixed": lambda m, k, q, **_: (E * (m * k + k * q + m * q), 2, 3 * E * m * q),
    "trunc": lambda n, **_: (E * n, 1, 2 * E * n),
}


# -- the comparison core (compare_core.py; checked by tests/functions/test_compare.py) ----------------
def tree_levels(leaves: int, eq_only: bool = False) -> list:
    """Per tree round: (online bits per value per party, dealt bits per value)."""
    out, m = [], leaves
    while m > 1:
        h = m // 2
        out.append((2 * h, h) if eq_only else (3 * h - 1, 2 * h - 1))
        m = h + m % 2
    return out


def cmp_levels(n: int, nbits: int = 64, kind: str = "lt", fused: bool = False,
               drop: int = 0) -> list:
    """Rounds of one batch of n comparisons (masked opening + tree) as
    (online bytes per party, dealt bytes): the opening, then the tree levels (without the
    last one when ``fused``: it is folded into the final conversion round).  ``drop``:
    a coarse comparison's skipped low bits (the same opening, a shorter tree)."""
    low = nbits - drop - 1 if kind == "lt" else nbits
    w = _core.digit_width(n, low) if kind == "lt" else _core.digit_width(n)
    w = min(w, low)
    D = -(-low // w)
    nout = 2 if kind == "lt" else 1
    tb = ((1 << w) * nout + 7) // 8
    dt = np.dtype(_core._ring_dtype(nbits)).itemsize
    deal = n * D * tb + ((n + 7) // 8 if kind == "lt" else 0)
    out = [(dt * n, deal)]
    tree = tree_levels(D, kind == "eq")
    if fused and tree:
        tree = tree[:-1]
    out += [((b * n + 7) // 8, (d * n + 7) // 8) for b, d in tree]
    return out


def cmp_cost(op: str, n: int, protocol: str, nbits: int = 64, payload: int = 1,
             drop: int = 0) -> dict:
    """Cost of a batch of ``n`` comparisons: ``op`` in {"msb" (= lt, ltz, ...), "eq",
    "relu" (and abs, maximum: bit injection into ``payload`` ring values per comparison),
    "reveal" (revealed comparison in top-k), "sign" (msb with the fused bit-to-ring,
    ``sign_to_ring``, left in 2-of-2 form: no re-sharing, e.g. the top-bit thermometer)};
    per party, bits packed per message.
    ``drop``: coarse comparisons (``compare_core.msb_bits(drop=)``).
    Returns {'bytes', 'rounds', 'offline'}.  msb/eq/relu fuse the last tree level with the
    final conversion: 3 opened bits (+ 8 bytes per payload value), dealt 8-entry tables
    (64 bytes, + 64 per payload value)."""
    fused = (op in ("eq", "relu", "sign") or (op == "msb" and _core.FUSE_SIGN_B2A)) \
        and n <= _core.FUSE_MAX_BATCH
    levels = cmp_levels(n, nbits, "eq" if op == "eq" else "lt", fused, drop)
    online = sum(b for b, _ in levels)
    offline = sum(d for _, d in levels)
    rounds = len(levels) + 1
    if op in ("msb", "eq", "sign") and not fused:     # b2a: open 1 bit; dealer r_A (8 bytes)
        online += (n + 7) // 8
        offline += 8 * n
    elif op == "relu" and not fused:          # bitmul: 1 bit + 8 bytes per payload value
        online += (n + 7) // 8 + 8 * n * payload
        offline += 8 * n + 8 * n * payload
    elif op in ("msb", "eq", "sign"):
        online += (3 * n + 7) // 8
        offline += 64 * n
    elif op == "relu":
        online += (3 * n + 7) // 8 + 8 * n * payload
        offline += 64 * n + 64 * n * payload
    elif op == "reveal":        # A and B send their bit shares to each other and to D
        online += 2 * ((n + 7) // 8)
    else:
        raise ValueError(f"unknown comparison op {op!r}")
    if protocol == "rep3" and op not in ("reveal", "sign"):
        online += 8 * n * (payload if op == "relu" else 1)   # back to replicated
        rounds += 1
    return {"bytes": online, "rounds": rounds, "offline": offline}


def tree_fanin(m: int, rows: int, fanin: int = 8, fanin4_max: int = 32768,
               fanin8_max: int = 1024) -> int:
    """Fan-in of the next max/argmax tree level over ``m`` values per row (a public rule
    on public sizes, ``functions.select._tree``): 2 (binary) for m <= 2, with ``fanin``
    2, or over more than ``fanin4_max`` values (rows x m); with ``fanin`` 8 and at most
    ``fanin8_max`` values: m itself when m <= 9 (one group: the last level), else 8;
    otherwise 4."""
    if m <= 2 or fanin < 4 or rows * m > fanin4_max:
        return 2
    if fanin >= 8 and rows * m <= fanin8_max:
        return m if m <= 9 else 8
    return 4


def max_tree_cost(n: int, rows: int = 1, payload: int = 1, fanin: int = 8,
                  fanin4_max: int = 32768, fanin8_max: int = 1024, nbits: int = 64,
                  drop: int = 0) -> dict:
    """Online bytes per party and rounds of the max/min/argmax tree over ``n`` values per
    row (``functions.select._tree``; rep3 adds its final re-sharing, argmax its one-hot).
    ``payload``: ring values injected per winner (1 for max, 2 for argmax: value and
    index).  ``fanin`` 4 (``select.MAX_FANIN``): levels of groups of 4 (last group 2 or 3
    values, a single last value passes through) while more than 2 values remain: one
    finished batch of all pairs of every group (each value's masked opening once: 8 bytes
    per value, not per comparison), then one AND3 lookup round injecting each
    member's payload (3 bits + 8 bytes per payload value per member); a last pair (and
    every level with ``fanin`` 2): a binary level whose last tree level is fused with the
    bit injection (3 bits + 8 bytes per payload value per comparison).  Levels over more
    than ``fanin4_max`` values (``select.FANIN4_MAX_VALUES``, rows x n) stay binary.
    ``fanin`` 8: levels of at most ``fanin8_max`` values take groups of 8 (or one group
    of all n <= 9 values), each member's lookup on ``size - 1`` bits (:func:`tree_fanin`).
    ``nbits``: the comparisons' width (``select.bound_bits`` for bounded values);
    ``drop``: coarse comparisons (``select.coarse_drop``)."""
    dt = np.dtype(_core._ring_dtype(nbits)).itemsize
    rounds = nbytes = 0
    while n > 1:
        fan = tree_fanin(n, rows, fanin, fanin4_max, fanin8_max)
        if fan > 2:
            g, r = n // fan, n % fan
            tail = r if r > 1 else 0
            k = (fan if g else r) - 1               # lookup bits per member
            c = rows * (g * fan * (fan - 1) // 2 + tail * (tail - 1) // 2)
            outs = rows * (fan * g + tail)
            levels = cmp_levels(c, nbits, drop=drop)
            levels[0] = (dt * rows * n, levels[0][1])    # each value opened once
            rounds += len(levels) + 1
            nbytes += sum(b for b, _ in levels) + (k * outs + 7) // 8 + 8 * outs * payload
            n = g + (1 if r else 0)
        else:
            c = (n // 2) * rows
            fused = c <= _core.FUSE_MAX_BATCH
            levels = cmp_levels(c, nbits, fused=fused, drop=drop)
            rounds += len(levels) + 1
            nbytes += sum(b for b, _ in levels) + ((3 if fused else 1) * c + 7) // 8 + \
                8 * c * payload
            n = n // 2 + n % 2
    return {"bytes": nbytes, "rounds": rounds}
