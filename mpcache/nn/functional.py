"""Backend-neutral non-linear functions for the transformer layers.

Every layer in :mod:`mpcache.nn` calls these instead of ``np.*`` so that ONE piece of layer
code runs on plaintext numpy arrays (the accuracy reference) and on secret-shared tensors
(the cost measurement).  Dispatch is on the argument's type only, never on its value:

* numpy arrays / numpy scalars / python numbers -> a numpy implementation in float64;
  float32 inputs are the one exception and stay float32 (a float32 model is a deliberate
  speed choice: float32 exp/tanh run 2-10x faster here and softmax is ~40% of a 1024-token
  prefill; the layer-correctness tests run float64).
* anything else (a secret tensor) -> the method of the same meaning on that object:
  ``x.softmax(axis=)``, ``x.exp()``, ``x.reciprocal()``, ``x.rsqrt()``, ``x.silu()``,
  ``x.gelu()``, ``x.relu()``, ``x.argmax(axis=)`` (one-hot result), ``x.max(axis=,
  keepdims=)``, ``x.mean(axis=, keepdims=)``, ``x.broadcast_to(shape)``; ``concatenate``/
  ``stack`` of lists holding any non-numpy item go to ``mpcache.concatenate(list, axis)`` /
  ``mpcache.stack(list, axis)``.

Layer code may otherwise only use python operators, ``reshape``, ``transpose(axes)``, ``.T``,
slicing/integer indexing with public indices, ``.sum(axis, keepdims)`` and products/sums
with public numpy arrays or python floats -- no boolean masks, no value-dependent control flow.
"""
from __future__ import annotations

import contextlib

import numpy as np

__all__ = [
    "is_plain", "scope", "weighted_sum", "softmax", "exp", "reciprocal", "rsqrt", "silu", "gelu", "relu",
    "argmax_onehot", "top_k_onehot", "top_k_indices", "max", "mean", "concatenate", "stack",
    "one_hot", "broadcast_to",
]

_PLAIN = (np.ndarray, np.generic, float, int)
_GELU_C = float(np.sqrt(2.0 / np.pi))


def is_plain(x) -> bool:
    """True for plaintext values (numpy arrays/scalars, python numbers)."""
    return isinstance(x, _PLAIN) and not isinstance(x, bool)


def scope(x, name: str):
    """Cost-accounting scope for the op on ``x``: a party scope for secret tensors (so a
    decoding step prints a breakdown: linear, attn_scores, softmax, ...), a no-op for
    plaintext."""
    party = getattr(x, "party", None)
    if party is None:
        return contextlib.nullcontext()
    return party.scope(name)


def parallel(x, *fns):
    """Run independent pieces of a layer in the same rounds when ``x`` is secret
    (mpcache.branches: the first runs in the calling thread); plaintext runs them in
    order.  Returns their results."""
    party = getattr(x, "party", None)
    if party is None:
        return [fn() for fn in fns]
    return party.parallel(*fns)


def matmul_twin(x, w, k: int):
    """``(x @ w, (x @ w) / 2^k)``: a secret ``x`` with a persisted secret ``w`` gets the
    second by a second truncation of the same product in the same rounds
    (``SecretTensor.matmul_twin``); otherwise a product and a scale."""
    if not is_plain(x) and getattr(w, "_persist", None) is not None:
        return x.matmul_twin(w, k)
    y = x @ w
    return y, y * (2.0 ** -int(k))


def weighted_sum(terms):
    """``sum(x * c for x, c in terms)`` with public real ``c``: under MPC the products are
    kept at double precision and truncated once (one truncation instead of one per term)."""
    if all(is_plain(x) for x, _ in terms):
        out = None
        for x, c in terms:
            out = x * c if out is None else out + x * c
        return out
    acc = None
    for x, c in terms:
        t = x.mul_public(c, truncate=False)
        acc = t if acc is None else acc + t
    return acc.rescale() if acc.frac > acc.party.fxp.frac_bits else acc


def _work(x) -> np.ndarray:
    """float32 stays float32, everything else becomes float64 (no copy when already so)."""
    a = np.asarray(x)
    return a.astype(np.float32 if a.dtype == np.float32 else np.float64, copy=False)


def softmax(x, axis: int = -1, score_bound: float | None = None, weights=None,
            weight_bound: float = 1.0):
    """Numerically stable softmax (max subtracted first, as the MPC protocol also does).
    ``score_bound``: a public bound on |x| the caller guarantees; a secret x's row max
    then takes narrower comparisons (``functions.approx.softmax``); same values.
    ``weights``: integer weights ``0 <= w <= weight_bound`` (broadcast against x):
    ``w e^x / sum w e^x``, an entry standing for ``w`` equal rows."""
    if is_plain(x) and (weights is None or is_plain(weights)):
        z = _work(x)
        z = z - z.max(axis=axis, keepdims=True)
        np.exp(z, out=z)
        if weights is not None:
            z *= np.asarray(weights)
        z /= z.sum(axis=axis, keepdims=True)
        return z
    kw = {} if score_bound is None else {"score_bound": score_bound}
    if weights is not None:           # tensor types without the keywords stay served
        kw.update(weights=weights, weight_bound=weight_bound)
    return x.softmax(axis=axis, **kw)


def exp(x):
    if is_plain(x):
        return np.exp(_work(x))
    return x.exp()


def reciprocal(x):
    if is_plain(x):
        return 1.0 / _work(x)
    return x.reciprocal()


def rsqrt(x, scale: float = 1.0, times=None, times_bound: float = 1.0):
    """``scale / sqrt(x)`` for a public ``scale``: the norms need it as one op (under MPC
    the scale is folded into public weights: free).  ``times``: ``times * scale /
    sqrt(x)`` where ``times^2 <= times_bound^2 x`` elementwise (a norm's prescaled input
    over its sum of squares; or that input times the next linear's weights, columns of
    norm <= times_bound): under MPC the product rides in rsqrt's un-normalisation (one
    level)."""
    if is_plain(x):
        r = scale / np.sqrt(_work(x))
        return r if times is None else _work(times) * r
    if times is not None:
        if times_bound != 1.0:
            return x.rsqrt(scale=scale, times=times, times_bound=times_bound)
        return x.rsqrt(scale=scale, times=times)
    return x.rsqrt() if scale == 1.0 else x.rsqrt(scale=scale)


def silu(x, bound: float | None = None):
    """x * sigmoid(x), written via tanh so large |x| never overflows exp.  ``bound``: a
    public bound on |x| the caller guarantees (a secret x's comparisons get shorter:
    ``functions.activations``)."""
    if is_plain(x):
        z = _work(x)
        t = np.tanh(z * 0.5)
        t += 1.0
        t *= z
        t *= 0.5
        return t
    return x.silu() if bound is None else x.silu(bound=bound)


def silu_times(x, t, bound: float | None = None):
    """``silu(x) * t`` (SwiGLU's gate and up); a secret x takes the product in the
    selection's place (``functions.activations.even_piecewise(times=)``: one level)."""
    if is_plain(x) and is_plain(t):
        return silu(x) * _work(t)
    return x.silu(times=t) if bound is None else x.silu(bound=bound, times=t)


def gelu(x, bound: float | None = None):
    """GELU, tanh approximation (GPT-2's 'gelu_new'); ``bound`` as in :func:`silu`."""
    if is_plain(x):
        z = _work(x)
        return 0.5 * z * (1.0 + np.tanh(_GELU_C * (z + 0.044715 * z ** 3)))
    return x.gelu() if bound is None else x.gelu(bound=bound)


def relu(x):
    if is_plain(x):
        z = _work(x)
        return np.maximum(z, 0.0)
    return x.relu()


def argmax_onehot(x, axis: int = -1, bound: float | None = None):
    """One-hot of the argmax along ``axis`` (same shape as ``x``; ties -> first index).

    A one-hot (not an index) is what MPC can produce without revealing anything, and it
    feeds straight into ``onehot @ arange(V)`` or ``onehot @ E`` (a private lookup).
    ``bound``: a public bound on |x| the caller guarantees (shorter exact comparisons).
    """
    if is_plain(x):
        z = np.asarray(x)
        idx = np.expand_dims(np.argmax(z, axis=axis), axis)
        out = np.zeros(z.shape, dtype=z.dtype if z.dtype.kind == "f" else np.float64)
        np.put_along_axis(out, idx, 1.0, axis=axis)
        return out
    return x.argmax(axis=axis) if bound is None else x.argmax(axis=axis, bound=bound)


def top_k_indices(x, k: int, axis: int = -1) -> np.ndarray:
    """Plaintext only: indices of the ``k`` largest entries along ``axis``, ASCENDING index
    order (ties -> lower index wins).  Shape: ``x.shape`` with ``axis`` replaced by ``k``.

    This is the contract of :func:`top_k_onehot` in index form; policies use it as their
    numpy fast path (``X[idx]`` instead of ``onehot @ X``) and the tests check both agree."""
    z = np.moveaxis(np.asarray(x), axis, -1)
    n = z.shape[-1]
    k = int(k)
    if not 0 <= k <= n:
        raise ValueError(f"top-k with k={k} over {n} entries")
    order = np.argsort(-z, axis=-1, kind="stable")[..., :k]   # stable: ties keep index order
    return np.moveaxis(np.sort(order, axis=-1), -1, axis)


def top_k_onehot(x, k: int, axis: int = -1, ordered: bool = True, budget: float = 1.0,
                 factor: int | None = None):
    """One-hot selection matrix of the ``k`` largest entries along ``axis``.

    ``x`` [..., n] (``axis`` moved last) -> ``[..., k, n]``: row j is the one-hot of the j-th
    selected index, rows in ASCENDING index order (so a gather ``onehot @ X`` keeps the
    original order of the kept rows: clusters of neighbouring tokens stay neighbours), ties
    broken towards the lower index.  Under MPC the same call goes to ``x.top_k(k, axis=)``,
    which must honour this contract and reveals nothing but ``k`` (public).  ``k`` and ``n``
    are public; the choice is not.  Gathering is then ``onehot @ X`` (a matmul whose MPC cost
    is the OUTPUT size).

    ``ordered=False``: the same set of rows in any order (under MPC a secret one, and a
    cheaper top-k: no sort); for callers that use the rows as a set -- a gather and a
    scatter through the same one-hot, sums over the rows (a decoding step's attention).
    Plaintext keeps ascending order, one of the allowed orders.

    ``budget`` (MPC only): the secret top-k's comparisons per selection level in units of
    n -- more comparisons, fewer levels (rounds); the choice is the same.

    ``factor=n2`` (with ``ordered=False``): the rows as a
    :class:`~mpcache.functions.factored.FactoredOneHot` (two one-hots of ``j // n2`` and
    ``j % n2`` per row; the same rows), for plaintext and secret ``x`` alike."""
    if factor is not None and ordered:
        raise ValueError("a factored top-k is a set of rows: pass ordered=False")
    if is_plain(x):
        z = np.moveaxis(np.asarray(x), axis, -1)
        idx = top_k_indices(z, k, axis=-1)
        if factor is not None:
            from ..functions.factored import FactoredOneHot
            return FactoredOneHot.from_indices(idx, z.shape[-1], factor)
        out = np.zeros(z.shape[:-1] + (int(k), z.shape[-1]),
                       dtype=z.dtype if z.dtype.kind == "f" else np.float64)
        np.put_along_axis(out, idx[..., None], 1.0, axis=-1)
        return out
    return x.top_k(k, axis=axis, ordered=ordered, budget=budget, factor=factor)


def max(x, axis: int = -1, keepdims: bool = False,  # noqa: A001 - mirrors numpy's name
        bound: float | None = None):
    """``bound``: a public bound on ``|x|`` the caller guarantees; a secret x's comparisons
    then run on fewer bits (``functions.select.amax``).  Plaintext ignores it."""
    if is_plain(x):
        return np.asarray(x).max(axis=axis, keepdims=keepdims)
    if bound is None:
        return x.max(axis=axis, keepdims=keepdims)
    return x.max(axis=axis, keepdims=keepdims, bound=bound)


def mean(x, axis: int = -1, keepdims: bool = False):
    if is_plain(x):
        return _work(x).mean(axis=axis, keepdims=keepdims)
    return x.mean(axis=axis, keepdims=keepdims)


def concatenate(items, axis: int = 0):
    """np.concatenate for all-plaintext lists, otherwise ``mpcache.concatenate``."""
    items = list(items)
    if all(is_plain(t) for t in items):
        return np.concatenate(items, axis=axis)
    import mpcache  # lazy: the MPC engine is optional for plaintext use

    ref = next(t for t in items if not is_plain(t))
    items = [t if not is_plain(t) else _public_secret(ref, t) for t in items]
    return mpcache.concatenate(items, axis)


def _public_secret(ref, x):
    """A public array as a secret tensor of ``ref``'s session (local: a secret zero plus the
    public value), so mixed lists (e.g. a policy's secret scores and fresh public zeros)
    concatenate.  An integer array stays a ring integer beside a ring-integer ``ref``
    (frac 0: e.g. softmax weights), else it is encoded at ``ref``'s fraction bits."""
    x = np.asarray(x)
    if x.dtype.kind not in "iub":
        x = x.astype(np.float64)
    z = ref.flatten()[:1]
    return (z - z).reshape(*([1] * x.ndim)).broadcast_to(x.shape) + x


def broadcast_to(x, shape):
    """np.broadcast_to for plaintext (a read-only view), ``x.broadcast_to`` otherwise."""
    if is_plain(x):
        return np.broadcast_to(x, shape)
    return x.broadcast_to(shape)


def stack(items, axis: int = 0):
    """np.stack for all-plaintext lists, otherwise ``mpcache.stack``."""
    items = list(items)
    if all(is_plain(t) for t in items):
        return np.stack(items, axis=axis)
    import mpcache

    return mpcache.stack(items, axis)


def one_hot(indices, n: int, dtype=np.float64) -> np.ndarray:
    """Plaintext helper: ``indices.shape + (n,)`` one-hot rows (the client encodes its ids)."""
    idx = np.asarray(indices, dtype=np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise ValueError(f"token id out of range [0, {n})")
    out = np.zeros(idx.shape + (n,), dtype=dtype)
    np.put_along_axis(out, idx[..., None], 1.0, axis=-1)
    return out
