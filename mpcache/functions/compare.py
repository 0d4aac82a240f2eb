"""Comparisons, equality, selection, ReLU, abs and clip on secret tensors (both protocols).

Everything reduces to the sign bit of a difference: ``a < b  <=>  msb(a - b) = 1`` for
|a - b| < 2^63 (always true for encodable fixed-point values, |x| < 2^62 in the ring).
Only the difference is examined, and without any adder: the parties open c = d + rho
for a dealer mask rho and compare c with rho digit by digit through dealt lookup tables
(:func:`mpcache.mpc.compare_core.msb_bits`).  The result bit becomes a ring integer
(0/1, ``frac = 0``) in one more round, or -- for ReLU, abs, clip, maximum and the max
tree -- is multiplied into its ring operand directly in that same round by bit
injection (``Pair.bitmul``).

Both protocols run the same code on the two-party engine of mpc/pair.py: add2 natively
(P0, P1; dealer P2), rep3 with P1, P2 as data parties and P0 as helper; rep3 results go
back to replicated form in one extra round (8 bytes per value from P1 and P2).

Cost per value (bytes per party online / dealt bytes, the max over parties; batches of
at most 2048 values use 8-bit digits, bigger ones 4-bit digits):

===========  ====================  ====================  ==================
op           add2 rounds/bytes     rep3 rounds/bytes     dealt, <=2048 / more
===========  ====================  ====================  ==================
msb, lt, ..  4 / 10.4 (5 / 13.3)   5 / 18.4 (6 / 21.3)   577 / 131
eq           4 / 9.9  (5 / 11.9)   5 / 17.9 (6 / 19.9)   321 / 98
relu, abs    4 / 18.4 (5 / 21.3)   5 / 26.4 (6 / 29.3)   641 / 195
===========  ====================  ====================  ==================

The last tree level is fused with the final conversion (bit-to-ring or bit injection) by a
dealt 8-entry table of the function s ^ (p & q) (``compare_core.sign_to_ring``); msb/lt
too while ``compare_core.FUSE_SIGN_B2A`` is on (the default: add2 4 rounds, rep3 5 for
batches <= 2048; 5 / 6 with it off).

(exact formulas: :func:`mpcache.mpc.costs.cmp_cost`, checked against the accounting by
tests/functions/test_compare.py; docs/nonlinear-compare.md.)

Public names (stable): :func:`msb`, :func:`ltz`, :func:`lt`, :func:`le`, :func:`gt`,
:func:`ge`, :func:`eq`, :func:`ne`, :func:`where` (the ``select`` method of SecretTensor),
:func:`relu`, :func:`absolute` (``abs(x)``), :func:`clip`, :func:`maximum`,
:func:`minimum`; internal building blocks :func:`msb_pair` and
:func:`to_pair`/:func:`from_pair` for the other function modules.

What each party learns: nothing -- all openings inside are masked by dealer randomness
(uniform), and results stay secret-shared until an explicit reveal.
"""
from __future__ import annotations

import numpy as np

from ..mpc import compare_core as _core
from ..mpc.compare_core import msb_bits, sign_to_ring, zero_bits
from ..mpc.pair import U8, Pair, pair_of
from ..ring import RING
from ..tensor import SecretTensor, stack


# -- plumbing between SecretTensor and the pair engine ----------------------------------------
def _secret(x):
    return isinstance(x, SecretTensor)


def to_pair(x):
    """(pair engine, this party's flat 2-of-2 ring share of x)."""
    p = x.party
    return pair_of(p), p.protocol.to_pair(x.data).reshape(-1)


def from_pair(party, y, shape, frac: int):
    """The 2-of-2 ring shares ``y`` back in the protocol's sharing, as a SecretTensor
    (rep3: 1 round, 8 bytes per value from P1 and P2; add2: free)."""
    return SecretTensor(party, party.protocol.from_pair(np.asarray(y, RING).reshape(shape),
                                                        shape), frac)


def msb_pair(x, nbits: int = 64, drop: int = 0):
    """(pair, XOR-shared msb bits of x, flat) -- for modules that fuse the next step.
    ``nbits``/``drop``: a bounded / coarse sign (``compare_core.msb_bits``)."""
    pair, u = to_pair(x)
    return pair, msb_bits(pair, u, nbits=nbits, drop=drop)


def _not(pair: Pair, bits):
    return bits ^ U8(1) if pair.role == "A" else bits


def _diff(a, b):
    """a - b as a SecretTensor (a or b may be public)."""
    if _secret(a):
        return a - b
    if _secret(b):
        return (-b) + a
    raise TypeError("comparison needs at least one secret tensor")


# -- sign and order ---------------------------------------------------------------------------
def msb(x):
    """Most significant bit of x's ring value (1 iff x < 0), as a ring integer 0/1.

    This is the protocol behind every order comparison (``a < b`` is ``msb(a - b)``).
    Reference: masked-opening comparison (Damgaard et al., TCC 2006; Rabbit, Makri et al.,
    FC 2021) with dealt digit tables, on the helper-party bit engine of ABY3 (Mohassel,
    Rindal, CCS 2018); the full reference and the step-by-step walk are on
    :func:`mpcache.mpc.compare_core.msb_bits`.

    Steps:

    1. ``to_pair``: the sharing as 2-of-2 ring shares between the pair's data parties
       (rep3: free -- P1 holds x1 + x2, P2 holds x0, P0 is the helper; add2: native, P2
       deals).
    2. ``msb_bits`` (mpc/compare_core.py): open c = x + rho, digit-table leaves, carry
       tree: XOR-shared sign bits (1 + 3 rounds for batches <= 2048 values).
    3. ``sign_to_ring`` (mpc/compare_core.py): the last tree level and the bit to 2-of-2
       ring shares in 1 round (``compare_core.FUSE_SIGN_B2A``, on; off: the tree's last
       AND, then ``Pair.b2a``, 1 round each).
    4. ``from_pair``: back to the protocol's sharing (rep3: 1 round, ``Rep3.from_pair``;
       add2: free).

    Cost: :func:`mpcache.mpc.costs.cmp_cost` ("msb")."""
    if not _secret(x):
        raise TypeError(f"msb expects a SecretTensor, got {type(x).__name__}")
    with x.party.scope("cmp"):
        pair, u = to_pair(x)
        if _core.FUSE_SIGN_B2A:
            y = sign_to_ring(pair, msb_bits(pair, u, last=False))
        else:
            y = pair.b2a(msb_bits(pair, u), "cmp.b2a")
        return from_pair(x.party, y, x.shape, 0)


def ltz(x):
    """[x < 0] as a ring integer 0/1 (same as :func:`msb`)."""
    return msb(x)


def lt(a, b):
    """[a < b] (either side may be public): :func:`msb` of a - b (steps there)."""
    return msb(_diff(a, b))


def gt(a, b):
    return msb(_diff(b, a))


def le(a, b):
    return 1 - msb(_diff(b, a))


def ge(a, b):
    return 1 - msb(_diff(a, b))


def eq(a, b):
    """[a == b] by a zero test on the bits of a - b (AND tree of 64 positions)."""
    d = _diff(a, b)
    with d.party.scope("eq"):
        pair, u = to_pair(d)
        y = sign_to_ring(pair, zero_bits(pair, u, last=False), tag="eq.b2a")
        return from_pair(d.party, y, d.shape, 0)


def ne(a, b):
    return 1 - eq(a, b)


# -- selection ------------------------------------------------------------------------------------
def where(c, a, b):
    """``c ? a : b`` = b + c * (a - b) for a secret 0/1 ring integer ``c`` (e.g. a comparison
    result); a, b secret or public, broadcast.  One ring product (rep3 1 round, 8 bytes;
    add2 1 round, 16 bytes per value)."""
    if not _secret(c):
        raise TypeError("where/select: the condition must be a secret 0/1 tensor")
    if c.frac != 0:
        raise ValueError("where/select: the condition must be a ring integer (frac 0), e.g. x < y")
    if not _secret(a) and not _secret(b):
        diff = np.asarray(a) - np.asarray(b)
        if _float_pub(a, b):                      # exact: c is 0/1, no truncation needed
            return c.mul_public(diff, truncate=False) + b
        return c * diff + b
    return b + c * _diff(a, b)


def _float_pub(*vals):
    return any(np.asarray(v).dtype.kind == "f" for v in vals)


def relu(x):
    """max(x, 0) = x * (1 - msb(x)): comparison + bit injection, 8 rounds (rep3 9)."""
    with x.party.scope("relu"):
        pair, u = to_pair(x)
        y = sign_to_ring(pair, msb_bits(pair, u, last=False), u, negate=True, tag="cmp.mux")
        return from_pair(x.party, y, x.shape, x.frac)


def absolute(x):
    """|x| = x - 2 x msb(x)."""
    with x.party.scope("abs"):
        pair, u = to_pair(x)
        y = sign_to_ring(pair, msb_bits(pair, u, last=False), u, tag="cmp.mux")
        return from_pair(x.party, u - (y << np.uint64(1)), x.shape, x.frac)


def clip(x, lo=None, hi=None):
    """min(max(x, lo), hi) for public lo <= hi (either may be None).  Both comparisons
    run in one batch and both corrections in one bit-injection round."""
    if lo is None and hi is None:
        return x
    if lo is not None and hi is not None and np.any(np.asarray(lo) > np.asarray(hi)):
        raise ValueError("clip: lo must not exceed hi")
    with x.party.scope("clip"):
        x = x.broadcast_to(np.broadcast_shapes(x.shape, np.shape(lo) if lo is not None else (),
                                               np.shape(hi) if hi is not None else ()))
        diffs, targets = [], []
        if lo is not None:
            diffs.append(x - lo)            # msb = [x < lo]
            targets.append((-x) + lo)
        if hi is not None:
            diffs.append(-(x - hi))         # msb = [x > hi]
            targets.append((-x) + hi)
        d = stack(diffs)
        t = stack(targets)
        pair, u = to_pair(d)
        parts = msb_bits(pair, u, last=False)
        _, v = to_pair(t)
        y = sign_to_ring(pair, parts, v, tag="cmp.mux").reshape((len(diffs), -1)) \
            .sum(axis=0, dtype=RING)
        _, ux = to_pair(x)
        return from_pair(x.party, ux + y, x.shape, x.frac)


def maximum(a, b):
    """Elementwise max(a, b): [a < b] by bit injection into (b - a).  8 rounds (rep3 9)."""
    return _minmax(a, b, True)


def minimum(a, b):
    return _minmax(a, b, False)


def _minmax(a, b, want_max):
    d = _diff(a, b)
    base = d * 0 + a                             # a, lifted to d's kind (fixed/int)
    with d.party.scope("max" if want_max else "min"):
        pair, u = to_pair(d)
        parts = msb_bits(pair, u, last=False)    # [a < b]
        _, ua = to_pair(base)
        y = sign_to_ring(pair, parts, np.uint64(0) - u, negate=not want_max,
                         tag="cmp.mux")          # [a < b] (b - a), or [a >= b] (b - a)
        return from_pair(d.party, ua + y, d.shape, d.frac)


__all__ = ["msb", "ltz", "lt", "le", "gt", "ge", "eq", "ne", "where", "relu", "absolute",
           "clip", "maximum", "minimum", "msb_pair", "to_pair", "from_pair"]
