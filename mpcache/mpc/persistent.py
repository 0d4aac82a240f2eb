"""Persistent right operands: state that follows a secret tensor through local views.

A right operand multiplied many times -- a weight matrix at every token, or the KV-cache
prefix (fixed after prefill) in ``q @ K^T``, ``p @ V`` and MPCache's ``onehot @ blocks``
at every decoding step -- can be *persisted* once (:meth:`SecretTensor.persist`).  What
that means is the protocol's business (mpc/add2.py: open ``F = W - B`` once for a
fresh mask ``B``, then each product opens only the left operand; mpc/rep3.py:
nothing).  This module holds the per-tensor state and keeps it valid:

* **Views.** The state is a dict of arrays with the share layout (a leading axis of 1,
  then the tensor's shape), so a local view op (public slicing/indexing, reshape,
  transpose, swapaxes, expand_dims, squeeze, broadcast_to, copy) is applied to the state
  exactly as to the share: a view of a persisted tensor is persisted (same values, same
  ``B`` element for element -- still products with the one persisted ``W``).
* **Partial coverage.** ``fresh`` (bool, same layout, ``None`` = all persisted) marks the
  elements that are NOT covered: a products' protocol masks those with fresh randomness
  and opens them, as an ordinary Beaver product would.  This is what lets a KV cache
  persist its prefix once and keep appending rows to the same buffer
  (:func:`grown`), and lets a concatenation of persisted and fresh parts
  (:func:`concatenated`, e.g. MPCache's ``[sink | gathered | recent window]``) open only
  its fresh part.
* **Never reused with another value.** State objects are immutable: any op that changes
  values (arithmetic, products, lifting) returns a tensor without state, and writing new
  rows into a buffer (:func:`grown`) marks those rows fresh in a NEW state object (the
  old ``B`` at those positions is never used again).

A rep3 state has no arrays (``{}``); it is carried anyway so the same program takes the
same code path under both protocols (rep3's persistent matmul costs what its matmul costs).
"""
from __future__ import annotations

import numpy as np

from ..kernels import ring_matmul

__all__ = ["Persisted", "FreshLines", "fresh_lines", "concatenated", "grown"]


class Persisted:
    """Per-tensor persistent-operand state: ``arrays`` (name -> array of the share layout,
    leading axis 1) and ``fresh`` (bool of the same layout, or None: all covered)."""

    __slots__ = ("arrays", "fresh")

    def __init__(self, arrays: dict, fresh: np.ndarray | None = None):
        self.arrays = dict(arrays)
        self.fresh = fresh

    def view(self, fn) -> "Persisted":
        """The state of ``fn(data)`` for a local view op ``fn`` on share data."""
        if not self.arrays:
            return self
        return Persisted({k: fn(v) for k, v in self.arrays.items()},
                         None if self.fresh is None else fn(self.fresh))

    def fresh_mask(self) -> np.ndarray | None:
        """``fresh`` without the leading axis, or None when every element is covered."""
        if self.fresh is None:
            return None
        m = self.fresh[0]
        return m if m.any() else None

    def __repr__(self):
        if not self.arrays:
            return "Persisted(no state)"
        shape = next(iter(self.arrays.values())).shape[1:]
        n = 0 if self.fresh is None else int(self.fresh.sum())
        return f"Persisted(shape={shape}, fresh={n})"


class FreshLines:
    """Fresh elements of a right operand ``W [..., k, n]`` that are whole columns
    (``axis = -1``: a KV cache's appended rows seen as ``K^T``) or whole rows (``axis =
    -2``: appended rows of ``V``), the same lines ``idx`` in every batch entry.

    Lets a protocol patch a product over ``W``'s stored arrays (whose lines ``idx`` hold
    stale values) with the lines' new values, instead of copying the whole arrays to
    write the new values in (measured: the copies were ~90% of a decoding step's
    ``q K^T`` and ``p V`` at 1-2K cached rows)."""

    __slots__ = ("axis", "idx")

    def __init__(self, axis: int, idx: np.ndarray):
        self.axis, self.idx = axis, idx

    def take(self, m: np.ndarray) -> np.ndarray:
        """The lines of ``m`` (shape of W or broadcastable to it), in the C order of the
        fresh elements (``m[fresh]`` reshaped)."""
        return m[..., :, self.idx] if self.axis == -1 else m[..., self.idx, :]

    def patch(self, z: np.ndarray, terms, const=None) -> np.ndarray:
        """``z = const + sum(left @ stale)`` over whole stored arrays -> the same sum with
        each ``stale``'s lines replaced by ``new``: ``terms = [(left, stale, new)]``
        (``new`` = :meth:`take` layout); ``const`` (shape of z, or None = 0) is the term
        without a product.  Only |idx| lines' worth of products."""
        idx = self.idx
        if self.axis == -1:                       # columns of W are columns of z
            z = np.array(z)
            cols = sum(ring_matmul(left, new) for left, _, new in terms)
            z[..., idx] = cols if const is None else const[..., idx] + cols
            return z
        for left, stale, new in terms:            # rows of W meet columns of left
            z = z + ring_matmul(np.ascontiguousarray(left[..., idx]), new - self.take(stale))
        return z


def fresh_lines(fresh: np.ndarray) -> FreshLines | None:
    """The :class:`FreshLines` form of a fresh mask ``[..., k, n]``, or None when the
    fresh elements are not whole lines shared by every batch entry."""
    k, n = fresh.shape[-2:]
    flat = fresh.reshape(-1, k, n)
    count = int(np.count_nonzero(flat))
    for axis, size in ((-1, k), (-2, n)):
        idx = np.flatnonzero(flat[0].any(axis=0 if axis == -1 else 1))
        if idx.size * size * flat.shape[0] != count:
            continue
        lines = FreshLines(axis, idx)
        if lines.take(flat).all():
            return lines
    return None


def _blank(like: Persisted, shape) -> Persisted:
    """State of a part that is not persisted at all (every element fresh)."""
    full = (1,) + tuple(shape)
    return Persisted({k: np.zeros(full, v.dtype) for k, v in like.arrays.items()},
                     np.ones(full, dtype=bool))


def _fresh_or_false(st: Persisted) -> np.ndarray:
    shape = next(iter(st.arrays.values())).shape
    return np.zeros(shape, bool) if st.fresh is None else st.fresh


def concatenated(states, shapes, axis: int) -> Persisted | None:
    """State of a concatenation along data axis ``axis`` (slot axis included) of parts with
    ``states`` (None: not persisted) and value ``shapes``; None if no part is persisted."""
    ref = next((s for s in states if s is not None), None)
    if ref is None:
        return None
    if not ref.arrays:
        return ref
    parts = [s if s is not None else _blank(ref, shp) for s, shp in zip(states, shapes)]
    arrays = {k: np.concatenate([p.arrays[k] for p in parts], axis=axis) for k in ref.arrays}
    return Persisted(arrays, np.concatenate([_fresh_or_false(p) for p in parts], axis=axis))


def grown(old: Persisted | None, shape, keep: int, rows: slice, axis: int) -> Persisted | None:
    """State of a capacity buffer of value ``shape`` after rows ``rows`` (along data axis
    ``axis``) were written: the first ``keep`` rows keep ``old``'s state, everything else is
    fresh (new rows are new values).  None if the buffer was not persisted."""
    if old is None or not old.arrays:
        return old
    first = next(iter(old.arrays.values()))
    if first.shape[1:] == tuple(shape):
        arrays, fresh = old.arrays, np.array(_fresh_or_false(old))
    else:   # regrown: new capacity, np.zeros stays unmapped where never written
        full = (1,) + tuple(shape)
        idx = [slice(None)] * len(full)
        idx[axis] = slice(0, keep)
        idx = tuple(idx)
        arrays = {}
        for k, v in old.arrays.items():
            arrays[k] = np.zeros(full, v.dtype)
            arrays[k][idx] = v[idx]
        fresh = np.ones(full, dtype=bool)
        fresh[idx] = _fresh_or_false(old)[idx]
    idx = [slice(None)] * fresh.ndim
    idx[axis] = rows
    fresh[tuple(idx)] = True
    return Persisted(arrays, fresh)
