"""SecretTensor: a numpy-like handle on this party's share of a secret tensor.

One class serves both protocols: structural and linear ops act on the share ``data``
(see mpc/base.py) and interactive ops go to ``party.protocol``.  Comparisons,
selection and non-linear functions (``<``, ``max``, ``top_k``, ``exp``, ``softmax``, ...)
are attached from the one method table of :mod:`mpcache.functions` (``METHODS``) when
the package is imported; this module does not import that layer.  Fixed-point
bookkeeping lives here: ``frac`` is the number of fractional bits (``f`` for fixed-point
tensors, 0 for ring integers such as one-hot vectors).

Products: fixed x fixed -> truncated by ``f`` (protocol's fused ``mul_trunc``);
fixed x integer and integer x integer -> exact ring product, no truncation.
Public operands: Python/numpy *integers* multiply exactly with no communication;
*floats* are encoded with ``f`` bits and need one truncation (communication).
Adding a fixed tensor and an integer tensor lifts the integer one by 2^f (local).

A SecretTensor never converts to numpy implicitly (``np.asarray(t)`` raises) and its
repr shows no share values: the only way to see a value is :meth:`reveal`.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from .kernels import matmul_shape, ring_matmul
from .mpc.base import align, phantom
from .mpc.persistent import Persisted, concatenated, grown
from .pages import small_pages
from .ring import RING, FixedPointRangeError, encode_int


class SessionMismatch(ValueError):
    """Two secret tensors from different sessions (or parties) were combined."""


def _is_int_public(v) -> bool:
    if isinstance(v, (bool, np.bool_)):
        return True
    if isinstance(v, numbers.Integral):
        return True
    return isinstance(v, np.ndarray) and v.dtype.kind in "iub"


class SecretTensor:
    __array_ufunc__ = None        # make numpy defer to our reflected operators
    __array_priority__ = 1000

    def __init__(self, party, data: np.ndarray, frac: int):
        self.party = party
        self.data = data
        self.frac = int(frac)
        self._persist = None

    def persist(self) -> "SecretTensor":
        """Mark a right operand that will be multiplied many times: a weight matrix, or a
        batch of matrices ``[..., k, q]`` such as the KV-cache prefix (``q @ K^T``,
        ``p @ V``, ``onehot @ blocks`` at every decoding step).

        add2 opens ``W - B`` for a fresh mask ``B`` now (one-time cost: 8 bytes per
        element per party) so every later ``x @ W`` opens only ``x - A``; rep3 needs
        nothing (its matmul already costs the output size).  Results are the same.  The
        state follows the tensor through local views (slicing with public indices,
        reshape, transpose, ...; mpcache/mpc/persistent.py), so ``W[:, :n].reshape(...)`` is
        persisted too.  Persisting an already fully persisted tensor is a no-op."""
        if self.ndim < 2:
            raise ValueError(f"persist() needs a matrix or a batch of matrices (the right "
                             f"operand of x @ W), got a tensor of shape {self.shape}")
        st = self._persist
        if st is not None and (not st.arrays or st.fresh_mask() is None):
            return self
        self._persist = Persisted(self._proto.persist(self.data))
        return self

    @property
    def persisted(self) -> bool:
        """True if this tensor (or the tensor it is a view of) was persisted."""
        return self._persist is not None

    # -- creation / opening --------------------------------------------------------------
    @classmethod
    def share(cls, party, x, owner: int = 0, *, integer: bool = False) -> "SecretTensor":
        ring = None
        if party.id == owner:
            if x is None:
                raise ValueError(f"party {owner} owns the input but passed None")
            ring = _encode_input(party, x, integer)
        data = party.protocol.share(ring, owner)
        return cls(party, data, 0 if integer else party.fxp.frac_bits)

    def reveal(self, to: int | None = None):
        """Open to party ``to`` (None: all).  Returns floats for fixed-point tensors and
        int64 for ring integers; parties that do not receive get None."""
        if to is not None and to not in (0, 1, 2):
            raise ValueError(f"reveal target must be 0, 1, 2 or None, got {to!r}")
        u = self.party.protocol.reveal(self.data, to)
        if u is None:
            return None
        if self.frac == 0:
            return u.view(np.int64)
        return self.party.fxp.decode(u, self.frac)

    # -- introspection ----------------------------------------------------------------------
    @property
    def shape(self) -> tuple:
        return tuple(self.data.shape[1:])

    @property
    def ndim(self) -> int:
        return self.data.ndim - 1

    @property
    def size(self) -> int:
        return int(math.prod(self.shape))

    def __len__(self):
        return self.shape[0]

    def __repr__(self):
        kind = "int" if self.frac == 0 else f"fixed<{self.frac}>"
        return (f"SecretTensor(shape={self.shape}, {kind}, party={self.party.id}, "
                f"protocol={self.party.protocol_name})")

    def __array__(self, *a, **k):
        raise TypeError("a SecretTensor cannot become a numpy array; call .reveal() first")

    def __bool__(self):
        raise TypeError("the truth value of a secret is secret; use comparisons + select")

    # -- helpers --------------------------------------------------------------------------------
    def _new(self, data, frac=None) -> "SecretTensor":
        return SecretTensor(self.party, data, self.frac if frac is None else frac)

    @property
    def _proto(self):
        return self.party.protocol

    def _check(self, other: "SecretTensor") -> None:
        if other.party is not self.party:
            raise SessionMismatch("cannot combine secret tensors of different sessions")

    def _local(self, fn, *operands) -> "SecretTensor":
        """Apply a local function of the share data; the add2 dealer tracks shape only."""
        datas = [self.data] + [o.data if isinstance(o, SecretTensor) else o for o in operands]
        if self._proto.active:
            return self._new(fn(*datas))
        probes = [np.broadcast_to(np.zeros((), np.uint8), d.shape) if isinstance(d, np.ndarray)
                  else d for d in datas]
        return self._new(phantom(fn(*probes).shape[1:], self._proto.slots))

    def _structural(self, fn) -> "SecretTensor":
        """A reshaping/indexing op on the value axes (slot axis untouched).  Same values,
        so persistent-operand state follows (the same op on its arrays)."""
        out = self._local(fn)
        if self._persist is not None:
            out._persist = self._persist.view(fn)
        return out

    def _lift(self) -> "SecretTensor":
        """Integer tensor -> fixed-point tensor (exact, local)."""
        f = self.party.fxp.frac_bits
        return self._local(lambda d: d * np.uint64(1 << f)).with_frac(f)

    def with_frac(self, frac: int) -> "SecretTensor":
        out = SecretTensor(self.party, self.data, frac)
        out._persist = self._persist          # same ring values
        return out

    def _public(self, v, frac: int) -> np.ndarray:
        if _is_int_public(v):
            return encode_int(np.asarray(v)) * np.uint64(1 << frac) if frac else encode_int(
                np.asarray(v))
        return self.party.fxp.encode(v, frac)

    def _bshape(self, *shapes, what="combine"):
        try:
            return np.broadcast_shapes(*shapes)
        except ValueError:
            raise ValueError(f"cannot {what} shapes {' and '.join(map(str, shapes))}") from None

    # -- addition ---------------------------------------------------------------------------------
    def __add__(self, other):
        if isinstance(other, SecretTensor):
            self._check(other)
            a, b = self, other
            if a.frac != b.frac:
                a, b = (a._lift(), b) if a.frac == 0 else (a, b._lift())
            nd = len(a._bshape(a.shape, b.shape, what="add"))
            return a._local(lambda x, y: align(x, nd) + align(y, nd), b)
        if _is_int_public(other) or self.frac > 0:
            c = self._public(other, self.frac)
            self._bshape(self.shape, c.shape, what="add")
            return self._local(lambda d: self._proto.add_public(d, c))
        return self._lift() + other

    __radd__ = __add__

    def __neg__(self):
        return self._local(lambda d: np.uint64(0) - d)

    def __sub__(self, other):
        return self + (-other)

    def __rsub__(self, other):
        return (-self) + other

    # -- multiplication ------------------------------------------------------------------------------
    def __mul__(self, other):
        if isinstance(other, SecretTensor):
            self._check(other)
            self._bshape(self.shape, other.shape, what="multiply")
            nd = max(self.ndim, other.ndim)
            a, b = align(self.data, nd), align(other.data, nd)
            if self.frac and other.frac:
                return self._new(self._proto.mul_trunc(a, b, self.party.fxp.frac_bits),
                                 self.frac + other.frac - self.party.fxp.frac_bits)
            return self._new(self._proto.mul(a, b), self.frac + other.frac)
        if _is_int_public(other):
            c = encode_int(np.asarray(other))
            self._bshape(self.shape, c.shape, what="multiply")
            return self._local(lambda d: d * c)
        return self.mul_public(other)

    __rmul__ = __mul__

    def __truediv__(self, other):
        if isinstance(other, SecretTensor):
            return self * other.reciprocal()
        return self * (1.0 / np.asarray(other, dtype=np.float64))

    def mul_public(self, c, truncate: bool = True) -> "SecretTensor":
        """Times public reals ``c`` (encoded with f bits).  With ``truncate=False`` the
        result keeps f extra fractional bits and no communication happens: sum several
        such products, then call :meth:`rescale` once (one truncation for all)."""
        if _is_int_public(c):
            return self * c
        f = self.party.fxp.frac_bits
        enc = self.party.fxp.encode(c)
        self._bshape(self.shape, enc.shape, what="multiply")
        prod = self._local(lambda d: d * enc).with_frac(self.frac + f)
        return prod.rescale() if truncate and self.frac > 0 else prod

    def rescale(self, bits: int | None = None) -> "SecretTensor":
        """Drop ``bits`` (default f) fractional bits: exact truncation protocol; the value
        is unchanged (``frac`` decreases by ``bits``)."""
        bits = self.party.fxp.frac_bits if bits is None else bits
        if bits > self.frac:
            raise ValueError(f"cannot drop {bits} fractional bits from a tensor with "
                             f"{self.frac}")
        return self._new(self._proto.trunc(self.data, bits), self.frac - bits)

    def truncate(self, bits: int | None = None) -> "SecretTensor":
        """Divide by 2^bits (default f) with the exact truncation protocol."""
        bits = self.party.fxp.frac_bits if bits is None else bits
        return self._new(self._proto.trunc(self.data, bits), self.frac)

    # -- matmul -------------------------------------------------------------------------------------------
    def __matmul__(self, other):
        return self.matmul(other)

    def matmul(self, other, rescale: bool = True) -> "SecretTensor":
        """``self @ other``.  A fixed x fixed product is truncated by f inside the product
        protocol (fused); ``rescale=False`` skips that and keeps both operands' fractional
        bits (an exact ring product: ``frac`` = the sum), for a result that is combined
        further before one truncation (e.g. selected attention scores, nn/selected_rows.py)."""
        if not isinstance(other, SecretTensor):
            if not rescale:
                raise ValueError("rescale=False needs a secret right operand")
            return self._matmul_public(other)
        self._check(other)
        matmul_shape(self.shape, other.shape)
        f = self.party.fxp.frac_bits if self.frac and other.frac and rescale else None
        if other._persist is not None:
            d = self._proto.matmul_persistent(self.data, other.data, other._persist, f)
        elif f:
            d = self._proto.matmul_trunc(self.data, other.data, f)
        else:
            d = self._proto.matmul(self.data, other.data)
        return self._new(d, self.frac + other.frac - (f or 0))

    def matmul_twin(self, other, k: int) -> tuple:
        """``(self @ other, (self @ other) / 2^k)`` for a persisted secret ``other``: the
        second output is the same local product truncated by k more bits, opened beside
        the first in the same rounds (a branch: mpcache.branches), so a public power-of-two
        scale costs no truncation of its own (a norm's prescale, nn.layers.Block)."""
        if not isinstance(other, SecretTensor) or other._persist is None:
            raise ValueError("matmul_twin needs a persisted secret right operand")
        if not (self.frac and other.frac) or int(k) < 1:
            raise ValueError("matmul_twin needs two fixed-point operands and k >= 1")
        self._check(other)
        matmul_shape(self.shape, other.shape)
        f = self.party.fxp.frac_bits
        d, dk = self._proto.matmul_persistent(self.data, other.data, other._persist, f,
                                              f + int(k))
        fr = self.frac + other.frac - f
        return self._new(d, fr), self._new(dk, fr)

    def _matmul_public(self, other):
        c, exact = self._public_operand(other)
        matmul_shape(self.shape, c.shape)
        prod = self._local(lambda d: _matmul_slots(d, c, secret_left=True))
        return self._finish_public_product(prod, exact)

    def __rmatmul__(self, other):
        c, exact = self._public_operand(other)
        matmul_shape(c.shape, self.shape)
        prod = self._local(lambda d: _matmul_slots(d, c, secret_left=False))
        return self._finish_public_product(prod, exact)

    def _public_operand(self, v):
        if _is_int_public(v):
            return encode_int(np.asarray(v)), True
        return self.party.fxp.encode(v), False

    def _finish_public_product(self, prod, exact):
        if exact:
            return prod
        prod = prod.with_frac(self.frac + self.party.fxp.frac_bits)
        return prod if self.frac == 0 else prod.rescale()

    # -- reductions and shapes -------------------------------------------------------------------------
    def sum(self, axis=None, keepdims=False):
        ax = _value_axes(axis, self.ndim)
        return self._local(lambda d: d.sum(axis=ax, keepdims=keepdims, dtype=RING))

    def mean(self, axis=None, keepdims=False):
        ax = _value_axes(axis, self.ndim)
        n = int(np.prod([self.shape[a - 1] for a in ax])) if ax else 1
        return self.sum(axis, keepdims) * (1.0 / n)

    def reshape(self, *shape):
        shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        return self._structural(lambda d: d.reshape((d.shape[0],) + tuple(shape)))

    def transpose(self, *axes):
        axes = axes[0] if len(axes) == 1 and isinstance(axes[0], (tuple, list)) else axes
        axes = tuple(range(self.ndim))[::-1] if not axes else tuple(a % self.ndim for a in axes)
        return self._structural(lambda d: d.transpose((0,) + tuple(a + 1 for a in axes)))

    @property
    def T(self):
        return self.transpose()

    def swapaxes(self, a, b):
        return self._structural(lambda d: np.swapaxes(d, a % self.ndim + 1, b % self.ndim + 1))

    def expand_dims(self, axis):
        return self._structural(lambda d: np.expand_dims(d, axis % (self.ndim + 1) + 1))

    def squeeze(self, axis=None):
        ax = None if axis is None else _value_axes(axis, self.ndim)
        if ax is None:
            ax = tuple(i + 1 for i, s in enumerate(self.shape) if s == 1)
        return self._structural(lambda d: np.squeeze(d, axis=ax))

    def flatten(self):
        return self.reshape(self.size)

    def broadcast_to(self, shape):
        shape = tuple(shape)
        return self._structural(lambda d: np.broadcast_to(
            align(d, len(shape)), (d.shape[0],) + shape).copy())

    def __getitem__(self, idx):
        if isinstance(idx, SecretTensor):
            raise TypeError("indexing with a secret index: use one_hot + gather")
        idx = idx if isinstance(idx, tuple) else (idx,)
        return self._structural(lambda d: d[(slice(None),) + idx])

    def grow_into(self, buf: "SecretTensor", n: int, axis: int = 1) -> "SecretTensor":
        """Write this tensor at rows ``n:`` (along ``axis``) of a capacity buffer ``buf``
        whose first ``n`` rows are valid, growing it geometrically if needed (local; used by
        the KV cache).  Returns the buffer; its valid part is ``buf[..., :n + t]``."""
        self._check(buf)
        ax = axis % self.ndim + 1
        t = self.data.shape[ax]
        state = buf._persist
        if buf.data.shape[ax] < n + t:
            shape = list(self.shape)
            shape[ax - 1] = max(16, 2 * (n + t))
            data = small_pages(self._proto.zeros_like_share(shape))   # spare capacity and
            if self._proto.active and n:                               # zero parts: unbacked
                idx = [slice(None)] * (data.ndim - 1)
                idx[ax - 1] = slice(0, n)
                for j in range(data.shape[0]):      # share components
                    old = buf.data[j][tuple(idx)]
                    if old.any():    # an all-zero one (an input's public zero) stays
                        data[j][tuple(idx)] = old   # unwritten: no resident pages
            buf = self._new(data)
        if self._proto.active:
            idx = [slice(None)] * buf.data.ndim
            idx[ax] = slice(n, n + t)
            buf.data[tuple(idx)] = self.data
        # persisted rows [:n] stay persisted; the rows written are new values (fresh)
        buf._persist = grown(state, buf.shape, n, slice(n, n + t), ax)
        return buf

    def copy(self):
        return self._structural(lambda d: np.ascontiguousarray(d).copy()
                                if d.flags.c_contiguous else np.ascontiguousarray(d))


# -- module-level helpers -------------------------------------------------------------------------------
def _encode_input(party, x, integer: bool) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype == object:
        raise TypeError("cannot share an object array")
    if integer:
        if a.dtype.kind == "f":
            if not np.all(np.isfinite(a)):
                raise FixedPointRangeError("cannot share non-finite values")
            if not np.all(a == np.round(a)):
                raise ValueError("integer=True but the values are not integers")
            a = a.astype(np.int64)
        return encode_int(a)
    return party.fxp.encode(a)


def _value_axes(axis, ndim):
    """Value axes -> data axes (+1 for the slot axis)."""
    if axis is None:
        return tuple(range(1, ndim + 1))
    axes = axis if isinstance(axis, (tuple, list)) else (axis,)
    out = []
    for a in axes:
        if not -ndim <= a < ndim:
            raise ValueError(f"axis {a} is out of bounds for a tensor of {ndim} dims")
        out.append(a % ndim + 1)
    return tuple(out)


def _matmul_slots(d, c, secret_left):
    """Per-slot product of share data ``d`` (slot axis first) with a public array ``c``,
    following numpy's matmul rules on the value axes.  Linear: no communication."""
    vd = d.ndim - 1
    if secret_left:
        if vd == 1:                                   # vector @ public
            if c.ndim == 1:
                return ring_matmul(d, c)
            out = ring_matmul(d.reshape((d.shape[0],) + (1,) * (c.ndim - 1) + d.shape[1:]), c)
            return out[..., 0, :]
        return ring_matmul(align(d, c.ndim) if c.ndim > vd else d, c)
    if vd == 1:                                       # public @ vector
        if c.ndim == 1:
            return ring_matmul(d, c)
        out = ring_matmul(c, d.reshape((d.shape[0],) + (1,) * (c.ndim - 2) + (d.shape[1], 1)))
        return out[..., 0]
    return ring_matmul(c, align(d, c.ndim) if c.ndim > vd else d)


def concatenate(tensors, axis=0):
    ts = list(tensors)
    if not ts:
        raise ValueError("need at least one tensor to concatenate")
    first = ts[0]
    for t in ts[1:]:
        first._check(t)
    fr = max(t.frac for t in ts)
    ts = [t._lift() if t.frac != fr else t for t in ts]
    ax = _value_axes(axis, first.ndim)[0]
    if not first._proto.active:
        shp = np.concatenate([np.broadcast_to(np.zeros((), np.uint8), t.data.shape) for t in ts],
                             axis=ax).shape
        out = first._new(phantom(shp[1:], first._proto.slots), fr)
    else:
        out = first._new(np.concatenate([t.data for t in ts], axis=ax), fr)
    out._persist = concatenated([t._persist for t in ts], [t.shape for t in ts], ax)
    return out


def stack(tensors, axis=0):
    ts = list(tensors)
    if not ts:
        raise ValueError("need at least one tensor to stack")
    nd = ts[0].ndim + 1
    return concatenate([t.expand_dims(axis % nd) for t in ts], axis=axis % nd)
