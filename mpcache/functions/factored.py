"""One-hot rows kept as two smaller one-hots (a top-k's output for add2's gathers).

A one-hot row over ``n`` entries picks ``j``.  Write ``j = a n2 + b`` (``b < n2``,
``a < n1 = ceil(n / n2)``): the row is the outer product of ``onehot(a)`` (``n1``
entries) and ``onehot(b)`` (``n2``), flattened and cut to ``n``.  :class:`FactoredOneHot`
keeps the two factors side by side, ``parts`` ``[..., k, n1 + n2]``, instead of the
``k n`` words of the rows themselves.

Why: under add2 every product opens its operands masked (Beaver), so ``G @ X`` with a
secret one-hot ``G`` ``[k, n]`` opens ``k n`` words for ``G`` -- for MPCache's per-query-
head cluster choice at 4096 tokens that is most of a decoding step's bytes
(docs/mpcache-accuracy.md).  With the factors, a product with a narrow ``X`` (``n x m``,
e.g. the ``m = cluster`` score columns of a query head) runs in two steps that open
``k (n1 + n2)`` words for the factors and ``k m n1`` for the intermediate
(:meth:`FactoredOneHot.contract`); the choice of ``n2`` is :func:`block_width`.  rep3
pays a product's OUTPUT, not its operands: there the dense one-hot stays the cheaper form
(:attr:`mpcache.mpc.base.Protocol.products_open_operands`).

The factors come straight out of :func:`mpcache.functions.topk.top_k` (``factor=n2``): its
shuffle carries ``a`` and ``b`` as two payload columns and each becomes a one-hot by the
usual rotation of a random one-hot, both opened in the same round.  What a party learns:
nothing beyond the dense form (two uniformly masked index openings instead of one).

Plaintext and secret factors go through the same code (numpy integer arrays or ring-integer
SecretTensors, frac 0).
"""
from __future__ import annotations

import numpy as np

__all__ = ["FactoredOneHot", "block_width", "factor_indices", "opened_words"]


def opened_words(n: int, n2: int, m: int) -> int:
    """Words add2 opens per one-hot row for a factored selection and scatter of ``m``-wide
    operands over ``n`` entries in blocks of ``n2``: the factors (``n1 + n2``, once) and
    the two intermediates (``m n1`` each); the dense one-hot opens ``n``."""
    n1 = -(-int(n) // int(n2))
    return n1 + int(n2) + 2 * int(m) * n1


def block_width(n: int, m: int) -> int:
    """The ``n2`` (a power of two) that minimises the words a factored gather opens per row
    under add2, ``n1 + n2 + 2 m n1`` with ``n1 = ceil(n / n2)`` (the factors once, the
    intermediate of a score selection and of a context scatter, each ``m`` wide): about
    ``sqrt((2 m + 1) n)``.  A public function of public sizes."""
    n, m = int(n), int(m)
    if n < 1 or m < 1:
        raise ValueError(f"block_width needs n >= 1 and m >= 1, got n={n}, m={m}")
    widths = [1 << e for e in range(0, max(1, (n - 1).bit_length()) + 1)]
    return min(widths, key=lambda n2: (opened_words(n, n2, m), n2))


def factor_indices(index, n: int, n2: int) -> np.ndarray:
    """Plaintext factors ``[..., k, n1 + n2]`` of the one-hot rows of integer ``index``
    ``[..., k]`` (entries in ``[0, n)``)."""
    index = np.asarray(index, dtype=np.int64)
    if index.size and (index.min() < 0 or index.max() >= n):
        raise ValueError(f"indices must lie in [0, {n})")
    n1 = -(-int(n) // int(n2))
    a = np.zeros(index.shape + (n1,), np.int64)
    b = np.zeros(index.shape + (int(n2),), np.int64)
    np.put_along_axis(a, (index // n2)[..., None], 1, axis=-1)
    np.put_along_axis(b, (index % n2)[..., None], 1, axis=-1)
    return np.concatenate([a, b], axis=-1)


class FactoredOneHot:
    """One-hot rows ``G`` ``[..., k, n]`` as ``parts = [A | B]`` ``[..., k, n1 + n2]``:
    ``G[.., i, a n2 + b] = A[.., i, a] B[.., i, b]`` (see the module docstring).  Reads
    like the dense one-hot where it is used as one (``shape``, ``@``, ``sum(axis=-2)``,
    ``reveal``); :meth:`contract` and :meth:`scatter` are the cheap products with narrow
    operands."""

    def __init__(self, parts, n1: int, n2: int, n: int):
        self.parts, self.n1, self.n2, self.n = parts, int(n1), int(n2), int(n)
        if int(parts.shape[-1]) != self.n1 + self.n2:
            raise ValueError(f"factors of width {int(parts.shape[-1])}, expected "
                             f"{self.n1} + {self.n2}")
        if not self.n1 * self.n2 >= self.n > (self.n1 - 1) * self.n2:
            raise ValueError(f"{self.n1} x {self.n2} blocks do not tile {self.n} entries")

    @classmethod
    def from_indices(cls, index, n: int, n2: int) -> "FactoredOneHot":
        """The plaintext form of the rows picking ``index`` ``[..., k]``."""
        return cls(factor_indices(index, n, n2), -(-int(n) // int(n2)), n2, n)

    # -- as the dense one-hot ----------------------------------------------------------------
    @property
    def party(self):
        """The session of secret factors (cost scopes follow it); None for plaintext."""
        return getattr(self.parts, "party", None)

    @property
    def shape(self) -> tuple:
        return tuple(self.parts.shape[:-1]) + (self.n,)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def a(self):
        return self.parts[..., :self.n1]

    @property
    def b(self):
        return self.parts[..., self.n1:]

    def dense(self):
        """The rows themselves ``[..., k, n]``: one elementwise product (add2 opens only the
        factors; rep3 re-shares the ``k n`` output)."""
        lead = tuple(self.parts.shape[:-1])
        g = self.a.reshape(lead + (self.n1, 1)) * self.b.reshape(lead + (1, self.n2))
        return g.reshape(lead + (self.n1 * self.n2,))[..., :self.n]

    def __matmul__(self, x):
        return self.dense() @ x

    def sum(self, axis=-2):
        """``G.sum(axis=-2)`` -- which entries some row picks -- as ``A^T B`` (one product
        of the factors, ``[..., n1, n2]``, flattened)."""
        if axis not in (-2, self.ndim - 2):
            raise ValueError("a factored one-hot sums over its rows only (axis=-2)")
        lead = tuple(self.parts.shape[:-2])
        t = _t(self.a) @ self.b                                          # [..., n1, n2]
        return t.reshape(lead + (self.n1 * self.n2,))[..., :self.n]

    def reveal(self, to=None):
        p = self.parts.reveal(to=to)
        return None if p is None else FactoredOneHot(p, self.n1, self.n2, self.n).dense()

    def persist(self):
        """Persist the factors (one tensor: add2 opens them once for every later product
        that takes them as its right operand)."""
        if hasattr(self.parts, "persist"):
            self.parts.persist()
        return self

    # -- the cheap products ----------------------------------------------------------------
    def _pad(self, x):
        """x [h, w, n] -> [h, w, n1 n2]: zero columns for the last block's missing entries
        (public zeros: local)."""
        extra = self.n1 * self.n2 - self.n
        if not extra:
            return x
        h, w = int(x.shape[0]), int(x.shape[1])
        if isinstance(x, np.ndarray):
            return np.concatenate([x, np.zeros((h, w, extra), dtype=x.dtype)], axis=2)
        from ..tensor import concatenate     # lazy: plaintext use needs no MPC engine
        z = x[:, :, :1]
        return concatenate([x, (z - z).broadcast_to((h, w, extra))], axis=2)

    def contract(self, x):
        """``x @ G^T`` for ``x`` ``[h, w, n]`` (``G`` ``[h, k, n]``) -> ``[h, w, k]`` in two
        products: ``T = x' @ B^T`` over the ``b`` axis (``[h, w n1, k]``), then for each row
        ``i`` the ``a`` axis against ``A[i]`` (``[h k, w, n1] @ [h k, n1, 1]``).  add2 opens
        ``w n1 k`` words of ``T`` and the factors (``k (n1 + n2)``, once when persisted)
        instead of the ``k n`` words of ``G``; 2 rounds instead of 1."""
        h, w, k = int(x.shape[0]), int(x.shape[1]), int(self.parts.shape[-2])
        xt = self._pad(x).reshape(h, w * self.n1, self.n2)
        t = xt @ _t(self.b)                                              # [h, w n1, k]
        t = t.reshape(h, w, self.n1, k).transpose((0, 3, 1, 2)).reshape(h * k, w, self.n1)
        out = t @ self.a.reshape(h * k, self.n1, 1)                      # [h k, w, 1]
        return out.reshape(h, k, w).transpose((0, 2, 1))

    def scatter(self, p):
        """``p @ G`` for ``p`` ``[h, w, k]`` -> ``[h, w, n]``: ``V = p[i] A[i]`` per row
        (``[h k, w, 1] @ [h k, 1, n1]``), then the rows summed against ``B``
        (``[h, w n1, k] @ [h, k, n2]``).  add2 opens ``w k`` words of ``p``, ``w n1 k`` of
        ``V`` and the factors, instead of ``G``'s ``k n``; 2 rounds instead of 1."""
        h, w, k = int(p.shape[0]), int(p.shape[1]), int(p.shape[2])
        pk = p.transpose((0, 2, 1)).reshape(h * k, w, 1)
        v = pk @ self.a.reshape(h * k, 1, self.n1)                       # [h k, w, n1]
        v = v.reshape(h, k, w * self.n1).transpose((0, 2, 1))            # [h, w n1, k]
        out = (v @ self.b).reshape(h, w, self.n1 * self.n2)              # [h, w, n1 n2]
        return out[:, :, :self.n]


def _t(x):
    """Swap the last two axes (numpy or SecretTensor)."""
    nd = len(x.shape)
    return x.transpose(tuple(range(nd - 2)) + (nd - 1, nd - 2))
