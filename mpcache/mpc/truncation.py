"""Exact probabilistic-free truncation by ``f`` bits with one opening (both protocols).

Reference: the "MSB trick" for truncation with a masked opening, Escudero, Ghosh, Keller,
Rachuri, Scholl, "Improved Primitives for MPC over Mixed Arithmetic-Binary Circuits",
CRYPTO 2020, Sec. 4 (here with the helper party supplying the mask correlation).
Docs: docs/protocols.md; step-by-step walk-through: docs/teaching.md (mpcache explain).

Let ``x`` be secret with ``|x| < 2^62`` (signed).  Shift ``x' = x + 2^62`` so
``0 <= x' < 2^63``.  A helper party (P2) knows a uniform mask ``r`` and deals
``[s] = [r >> f]`` and ``[m] = [msb(r)]``; P0 and P1 open ``c = x' + r mod 2^64``
(P2 never sees ``c``).  Since ``x' < 2^63``, the addition wrapped iff
``msb(r) = 1 and msb(c) = 0``, so the wrap bit is the *linear* function
``w = (1 - msb(c)) * m`` of the dealt bit, and

    x >> f  =  (c >> f) - [s] + 2^(64-f) [w] - 2^(62-f)       (error: -1 or 0 ulp)

Correct for every |x| < 2^62 (no failure probability, unlike local SecureML truncation,
whose failure chance ~|x|/2^64 is not negligible at LLM scale).  Security: ``c`` is
``x'`` plus a uniform ``r`` unknown to P0 and P1, so it is uniform to each; P2 sees only
its own randomness.

Both openers then hold an additive 2-of-2 sharing of ``x >> f``.  In add2 that is the
result.  In rep3 the third component holder (P2) cannot apply the ``(1 - msb(c))``
correction without learning ``msb(c)`` (which, with ``r``, would leak about ``x``), so
rep3 re-shares the 2-of-2 result into replicated form in a second round.

The mask ``r = ra + rb`` is derived from the keys P2 shares with P0 (``ra``) and with P1
(``rb``), so only ``[s]`` and ``[m]`` cost communication: P2 sends 2 ring elements per
value to P1 (offline), P0's parts come from the P0-P2 key.
"""
from __future__ import annotations

import numpy as np

from ..ring import RING

OFFSET_BITS = 62
_OFFSET = np.uint64(1 << OFFSET_BITS)


def dealer_mask(prg_p0, prg_p1, shape, f: int):
    """P2: the mask halves and the truncation correlation of the full mask.

    Returns (s0, m0, s1, m1): P0's parts come from ``prg_p0`` (P0-P2 key) and P1's parts
    are what P2 must send to P1.
    """
    r = prg_p0.ring(shape) + prg_p1.ring(shape)
    s = r >> np.uint64(f)
    m = r >> np.uint64(63)
    s0 = prg_p0.ring(shape)
    m0 = prg_p0.ring(shape)
    return s0, m0, s - s0, m - m0


def p0_mask(prg_p2, shape):
    """P0: its half of the mask and its parts of [s], [m] (drawn in the dealer's order)."""
    ra = prg_p2.ring(shape)
    s0 = prg_p2.ring(shape)
    m0 = prg_p2.ring(shape)
    return ra, s0, m0


def p1_mask(prg_p2, shape):
    """P1: its half of the mask (its [s], [m] parts arrive from P2)."""
    return prg_p2.ring(shape)


def offset(x: np.ndarray) -> np.ndarray:
    """Add 2^62 (done by exactly one opener before masking)."""
    return x + _OFFSET


def public_part(c: np.ndarray, f: int) -> tuple[np.ndarray, np.ndarray]:
    """From the opened ``c``: the public term and the multiplier of ``[m]``."""
    pub = (c >> np.uint64(f)) - np.uint64(1 << (OFFSET_BITS - f))
    wmul = (np.uint64(1) - (c >> np.uint64(63))) << np.uint64(64 - f)
    return pub, wmul


def opener_share(c: np.ndarray, s_part: np.ndarray, m_part: np.ndarray, f: int,
                 first: bool) -> np.ndarray:
    """An opener's additive share of ``x >> f``; the two openers' shares sum to it.

    Both openers know ``c``; ``first`` (P0) also adds the public term.
    """
    pub, wmul = public_part(c, f)
    y = wmul * m_part - s_part
    return y + pub if first else y
