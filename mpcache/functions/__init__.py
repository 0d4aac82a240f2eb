"""Functions on secret tensors: SecretTensor in, SecretTensor out, for either protocol.

They reach the protocol only through ``x.party.protocol`` and the share-level engine in
:mod:`mpcache.mpc` (the bit engine, the comparison core), so one implementation serves
rep3 and add2.

* :mod:`.compare` -- msb, lt/le/gt/ge, eq/ne, where, relu, absolute, clip, maximum/minimum
* :mod:`.select` -- amax/amin/argmax trees, one_hot, gather
* :mod:`.topk` -- top-k (secret shuffle + revealed comparisons)
* :mod:`.convert` -- a2b, b2a (whole 64-bit words <-> bits)
* :mod:`.poly` -- the low-depth polynomial engine (levels of dots, fits, bit injection)
* :mod:`.approx` -- exp, softmax; :mod:`.reciprocal` -- reciprocal, rsqrt;
  :mod:`.activations` -- gelu, silu, tanh, sigmoid

:data:`METHODS` is the one table of SecretTensor methods these functions provide; it is
attached to the class when this package is imported (``import mpcache`` does that), so
mpcache/tensor.py itself never imports this layer.
"""
from __future__ import annotations

from ..tensor import SecretTensor
from . import activations, approx, compare, reciprocal, select, topk
from .compare import maximum, minimum, where
from .select import gather, one_hot

#: SecretTensor method name -> the function it calls with the tensor as first argument.
#: ``==`` stays unoverloaded (object identity; SecretTensors remain hashable): ``x.eq(y)``.
METHODS = {
    # comparisons (compare.py)
    "__lt__": compare.lt,
    "__le__": compare.le,
    "__gt__": compare.gt,
    "__ge__": compare.ge,
    "eq": compare.eq,
    "ne": compare.ne,
    "msb": compare.msb,
    "relu": compare.relu,
    "abs": compare.absolute,
    "__abs__": compare.absolute,
    "clip": compare.clip,
    "select": compare.where,
    # reductions, selection, one-hot (select.py)
    "max": select.amax,
    "min": select.amin,
    "argmax": select.argmax,
    "argmin": select.argmin,
    "top_k": topk.top_k,
    "one_hot": select.one_hot,
    "gather": select.gather,
    # non-linear approximations (approx.py, reciprocal.py, activations.py)
    "exp": approx.exp,
    "softmax": approx.softmax,
    "reciprocal": reciprocal.reciprocal,
    "rsqrt": reciprocal.rsqrt,
    "gelu": activations.gelu,
    "silu": activations.silu,
    "tanh": activations.tanh,
    "sigmoid": activations.sigmoid,
}


def attach(cls=SecretTensor) -> None:
    """Install :data:`METHODS` on ``cls`` (idempotent)."""
    for name, fn in METHODS.items():
        setattr(cls, name, fn)


attach()

__all__ = ["METHODS", "attach", "where", "one_hot", "gather", "maximum", "minimum"]
