"""The ring Z_2^64 and fixed-point encoding.

Every share and every public constant in mpcache is a numpy ``uint64`` array; numpy's
wrap-around on uint64 arithmetic *is* the reduction mod 2^64.  The signed view is two's
complement: a ring element ``u`` stands for ``u`` if ``u < 2^63`` and ``u - 2^64`` otherwise.

Fixed point: a real ``v`` is encoded as ``round(v * 2^f)`` in the signed view, with
``f = 18`` fractional bits by default (SPU's FM64 default).  A product of two encodings
carries ``2f`` fractional bits and must be truncated by ``f`` (see the protocols).

Overflow behaviour (documented choice): :func:`encode` *checks* its input: non-finite
values and values with ``|v| >= FixedPoint.max_value`` raise :class:`FixedPointRangeError`
(never a silent wrap).  ``max_value`` is ``2^(62 - 2f)``: the largest magnitude whose
square still fits the ``2^62`` window the exact truncation protocol assumes (|x| < 2^62 in
the ring, see ``mpc/truncation.py``).  Arithmetic on secret values is *not* checked
(checking would need a comparison protocol per op); results that leave the range wrap
mod 2^64, exactly as in SPU and CrypTen.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RING_BITS = 64
RING = np.uint64
SIGNED = np.int64
#: Ring elements are this many bytes on the wire.
ELEMENT_BYTES = 8


_IOTA: dict = {}
_IOTA_MAX = 1 << 16


def iota(n: int, dtype=np.int_) -> np.ndarray:
    """``np.arange(n, dtype=dtype)``, read-only, a view of a cached array for small ``n``.

    ``np.arange`` releases the GIL on every call however small; in-process the three
    parties are threads, so each release hands the interpreter to another party (measured
    ~40 us per call with a competing thread instead of ~1 us).  Protocol steps that need
    a tiny index range on every round use this instead.
    """
    n = int(n)
    if n > _IOTA_MAX:
        return np.arange(n, dtype=dtype)
    dt = np.dtype(dtype)
    a = _IOTA.get(dt)
    if a is None or a.shape[0] < n:
        a = np.arange(max(n, 64, 0 if a is None else 2 * a.shape[0]), dtype=dt)
        a.flags.writeable = False
        _IOTA[dt] = a
    return a[:n]


class FixedPointRangeError(ValueError):
    """A plaintext value cannot be encoded: non-finite or outside the fixed-point range."""


@dataclass(frozen=True)
class FixedPoint:
    """Fixed-point configuration: ``frac_bits`` fractional bits in Z_2^64."""

    frac_bits: int = 18

    def __post_init__(self):
        if not (0 <= self.frac_bits <= 30):
            raise ValueError(f"frac_bits must be in [0, 30], got {self.frac_bits}")

    @property
    def scale(self) -> float:
        return float(1 << self.frac_bits)

    @property
    def max_value(self) -> float:
        """Largest |v| accepted by :meth:`encode` (2^(62-2f); 2^26 for f=18)."""
        return float(2 ** (62 - 2 * self.frac_bits))

    @property
    def resolution(self) -> float:
        return 1.0 / self.scale

    def encode(self, x, frac_bits: int | None = None) -> np.ndarray:
        """Encode reals as ring elements with ``frac_bits`` (default: ``self.frac_bits``)."""
        f = self.frac_bits if frac_bits is None else frac_bits
        a = np.asarray(x, dtype=np.float64)
        if not np.all(np.isfinite(a)):
            raise FixedPointRangeError("cannot encode non-finite values (nan or inf)")
        if a.size and float(np.max(np.abs(a))) >= self.max_value:
            raise FixedPointRangeError(
                f"value {float(np.max(np.abs(a))):.6g} is outside the fixed-point range "
                f"|v| < {self.max_value:.6g} (frac_bits={self.frac_bits})")
        return np.rint(a * float(1 << f)).astype(np.int64).view(np.uint64)

    def decode(self, u, frac_bits: int | None = None) -> np.ndarray:
        f = self.frac_bits if frac_bits is None else frac_bits
        return to_signed(u).astype(np.float64) / float(1 << f)


def to_signed(u) -> np.ndarray:
    """Two's-complement signed view of ring elements (no copy for arrays)."""
    return np.asarray(u, dtype=np.uint64).view(np.int64)


def from_signed(s) -> np.ndarray:
    return np.asarray(s, dtype=np.int64).view(np.uint64)


def encode_int(x) -> np.ndarray:
    """Encode integers (any numpy int dtype, may be negative) into the ring."""
    a = np.asarray(x)
    if a.dtype == np.uint64:
        return a
    if a.dtype.kind == "b":
        return a.astype(np.uint64)
    if a.dtype.kind not in "iu":
        raise TypeError(f"expected an integer array, got dtype {a.dtype}")
    return a.astype(np.int64).view(np.uint64)


def arshift(u: np.ndarray, k: int) -> np.ndarray:
    """Arithmetic right shift by ``k`` of ring elements read as signed."""
    return (to_signed(u) >> np.int64(k)).view(np.uint64)


def msb(u: np.ndarray) -> np.ndarray:
    """Most significant bit (the sign bit) as uint64 0/1."""
    return np.asarray(u, dtype=np.uint64) >> np.uint64(63)
