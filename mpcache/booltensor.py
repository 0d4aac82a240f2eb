"""BoolTensor: XOR-shared uint64 words, the boolean sibling of :class:`SecretTensor`.

Same slot layout as arithmetic shares (rep3: P_i holds (b_i, b_{i+1}) with
b = b0 ^ b1 ^ b2; add2: P0, P1 hold b0 ^ b1, the dealer P2 a phantom).  XOR, NOT, shifts
and XOR with public words are local.  AND is one round (the protocol's ``bool_and``):
rep3 as in ABY3 (local cross terms + an XOR zero-sharing from the pairwise keys, one
word to one neighbour: 8 bytes/word/party); add2 with dealer boolean triples (open
e = x ^ a, f = y ^ b: 16 bytes/word/party; dealer sends c1 only, seed-compressed).
Conversions to and from ring values: :mod:`mpcache.functions.convert`.
"""
from __future__ import annotations

import numpy as np

from .mpc.base import phantom
from .ring import RING
from .tensor import SessionMismatch

U8 = np.uint8


class BoolTensor:
    """XOR-shared uint64 words (64 independent bits per element).

    ``data`` has the protocol's slot layout (rep3: 2 slots, add2: 1 slot; the add2 dealer
    holds a phantom).  Create one with :func:`mpcache.functions.convert.a2b` or
    :meth:`share`; turn single bits into ring integers with ``convert.b2a``.
    """

    def __init__(self, party, data: np.ndarray):
        self.party = party
        self.data = data

    @property
    def _proto(self):
        return self.party.protocol

    @property
    def shape(self) -> tuple:
        return tuple(self.data.shape[1:])

    @property
    def ndim(self) -> int:
        return self.data.ndim - 1

    def __repr__(self):
        return f"BoolTensor(shape={self.shape}, party={self.party.id})"

    def __array__(self, *a, **k):
        raise TypeError("a BoolTensor cannot become a numpy array; call .reveal() first")

    def __bool__(self):
        raise TypeError("the truth value of a secret is secret")

    @classmethod
    def share(cls, party, x, owner: int = 0) -> "BoolTensor":
        """XOR-share uint64 words held by ``owner`` (others pass None)."""
        w = None
        if party.id == owner:
            a = np.asarray(x)
            w = a.astype(RING) if a.dtype.kind in "biu" else a.astype(np.int64).view(RING)
        return cls(party, party.protocol.bool_share(w, owner))

    def reveal(self, to: int | None = None):
        return self._proto.bool_reveal(self.data, to)

    def _check(self, other):
        if not isinstance(other, BoolTensor):
            raise TypeError(f"expected a BoolTensor, got {type(other).__name__}")
        if other.party is not self.party:
            raise SessionMismatch("cannot combine secret tensors of different sessions")

    def _local(self, fn, *others):
        if not self._proto.active:
            datas = [np.broadcast_to(np.zeros((), U8), d.shape) for d in
                     (self.data,) + tuple(o.data for o in others)]
            return BoolTensor(self.party, phantom(fn(*datas).shape[1:], self._proto.slots))
        return BoolTensor(self.party, fn(self.data, *(o.data for o in others)))

    def __xor__(self, other):
        if isinstance(other, BoolTensor):
            self._check(other)
            return self._local(lambda a, b: a ^ b, other)
        c = np.asarray(other).astype(RING)
        return BoolTensor(self.party, self._proto.bool_xor_public(self.data, c))

    __rxor__ = __xor__

    def __invert__(self):
        return self ^ np.uint64(0xFFFFFFFFFFFFFFFF)

    def __and__(self, other):
        if isinstance(other, BoolTensor):
            self._check(other)
            return BoolTensor(self.party, self._proto.bool_and(self.data, other.data))
        c = np.asarray(other).astype(RING)
        return self._local(lambda a: a & c)

    __rand__ = __and__

    def __or__(self, other):
        return ~(~self & ~other) if isinstance(other, BoolTensor) else \
            ~(~self & ~np.asarray(other).astype(RING))

    def __lshift__(self, k: int):
        return self._local(lambda a: a << np.uint64(k))

    def __rshift__(self, k: int):
        return self._local(lambda a: a >> np.uint64(k))

    def __getitem__(self, idx):
        idx = idx if isinstance(idx, tuple) else (idx,)
        return self._local(lambda a: a[(slice(None),) + idx])

    def reshape(self, *shape):
        shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        return self._local(lambda a: a.reshape((a.shape[0],) + tuple(shape)))
