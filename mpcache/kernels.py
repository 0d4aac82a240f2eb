"""Fast local ring kernels.

:func:`ring_matmul` is the hot kernel of every linear layer.  numpy's ``uint64 @`` runs no
BLAS (about 0.2 G MAC/s here), so we split each operand into ``LIMBS`` limbs of
``LIMB_BITS`` = 16 bits, multiply limb matrices with float64 BLAS *exactly*, and recombine
mod 2^64:

    A = sum_i 2^(16 i) A_i,  B = sum_j 2^(16 j) B_j
    A @ B mod 2^64 = sum_{s=0..3} 2^(16 s) * (sum_{i+j=s} A_i @ B_j)   (pairs with i+j >= 4
                                                                         vanish mod 2^64)

The inner sum for weight ``s`` is accumulated in float64: every entry is an integer below
``(s+1) * K * 2^32``, exact while that is below 2^53, i.e. ``K <= 2^19 / (s+1)``; the
inner dimension is chunked at 2^17.  That is 10 float64 BLAS products; measured 9x faster
than numpy's uint64 matmul at 64x768x3072 on 2 cores (``mpcache bench ops``).  For very
few output rows (a vector-matrix product) splitting the big operand costs more than
numpy's integer loop, so those go to numpy directly (both are exact).
"""
from __future__ import annotations

import numba
import numpy as np

LIMB_BITS = 16
LIMBS = 4
_MASK = np.uint64((1 << LIMB_BITS) - 1)
_K_CHUNK = 1 << 17
#: Below this many output rows numpy's uint64 loop beats limb splitting (measured).
SMALL_ROWS = 4


@numba.njit(cache=True, parallel=False, fastmath=False)
def _split_limbs(a, out):
    """a: uint64 [n] -> out: float64 [LIMBS, n] holding the 16-bit limbs."""
    n = a.shape[0]
    for i in range(n):
        v = a[i]
        out[0, i] = np.float64(v & 0xFFFF)
        out[1, i] = np.float64((v >> 16) & 0xFFFF)
        out[2, i] = np.float64((v >> 32) & 0xFFFF)
        out[3, i] = np.float64(v >> 48)


def limbs(a: np.ndarray) -> np.ndarray:
    """Split a uint64 matrix [m, k] into float64 limbs [LIMBS, m, k]."""
    a = np.ascontiguousarray(a, dtype=np.uint64)
    out = np.empty((LIMBS, a.size), dtype=np.float64)
    _split_limbs(a.reshape(-1), out)
    return out.reshape((LIMBS,) + a.shape)


@numba.njit(cache=True)
def _accumulate(acc, part, shift):
    """acc += uint64(part) << shift  (part holds exact non-negative integers < 2^53)."""
    a = acc.reshape(acc.size)
    p = part.reshape(part.size)
    for i in range(a.shape[0]):
        a[i] += np.uint64(p[i]) << np.uint64(shift)


def ring_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact ``a @ b mod 2^64`` for uint64 matrices, with numpy matmul broadcasting rules
    for 2-D operands and batched (>=3-D) operands."""
    a = np.asarray(a, dtype=np.uint64)
    b = np.asarray(b, dtype=np.uint64)
    if a.ndim == 1 or b.ndim == 1:
        a2 = a[None, :] if a.ndim == 1 else a
        b2 = b[:, None] if b.ndim == 1 else b
        out = ring_matmul(a2, b2)
        if a.ndim == 1:
            out = out[..., 0, :]
        if b.ndim == 1:
            out = out[..., 0]
        return out
    if a.shape[-1] != b.shape[-2]:
        raise ValueError(f"matmul shape mismatch: {a.shape} @ {b.shape}")
    k = a.shape[-1]
    out_shape = np.broadcast_shapes(a.shape[:-2], b.shape[:-2]) + (a.shape[-2], b.shape[-1])
    if k == 0 or 0 in out_shape:
        return np.zeros(out_shape, dtype=np.uint64)
    if a.shape[-2] < SMALL_ROWS or a.size * b.shape[-1] < 4096:
        return np.matmul(a, b)    # vector-matrix or tiny: numpy's integer loop is cheaper
    acc = np.zeros(out_shape, dtype=np.uint64)
    for k0 in range(0, k, _K_CHUNK):
        al = limbs(a[..., k0:k0 + _K_CHUNK])
        bl = limbs(b[..., k0:k0 + _K_CHUNK, :])
        for s in range(LIMBS):
            part = al[0] @ bl[s]
            for i in range(1, s + 1):
                part += al[i] @ bl[s - i]
            _accumulate(acc, np.ascontiguousarray(part), LIMB_BITS * s)
    return acc
