"""Pairwise PRG keys and zero-sharings with no communication.

Key ring (both protocols): key ``k_i`` is shared by parties ``P_i`` and ``P_{i+1}``.
So ``P_i`` holds ``k_i`` (with its right neighbour) and ``k_{i-1}`` (with its left
neighbour).  At session start ``P_i`` draws ``k_i`` from the OS and sends it to
``P_{i+1}`` (16 bytes, counted as offline set-up traffic).

Each key drives a Philox-4x64 stream.  The two holders of a key draw from it in the
same program order (the parties run the same program), so they see identical streams;
the third party never learns the stream.
"""
from __future__ import annotations

import math
import secrets

import numpy as np


class PRG:
    """A Philox stream keyed by a 128-bit key; draws uniform ring elements."""

    def __init__(self, key: int):
        self._bitgen = np.random.Philox(key=key)

    def ring(self, shape) -> np.ndarray:
        # hot path (every product draws several masks): no numpy helpers on the shape
        shape = (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(map(int, shape))
        return self._bitgen.random_raw(math.prod(shape)).reshape(shape)

    def bits(self, shape) -> np.ndarray:
        return self.ring(shape) & np.uint64(1)


def fresh_key(rng: np.random.Generator | None = None) -> int:
    """A new 128-bit key: from the OS, or from ``rng`` for reproducible test runs."""
    if rng is None:
        return secrets.randbits(128)
    hi, lo = rng.integers(0, 2**63, size=2, dtype=np.int64)
    return (int(hi) << 64) | int(lo)


def key_to_array(key: int) -> np.ndarray:
    return np.array([key & (2**64 - 1), key >> 64], dtype=np.uint64)


def array_to_key(a: np.ndarray) -> int:
    return int(a[0]) | (int(a[1]) << 64)
