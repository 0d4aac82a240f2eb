"""Deprecated import path: the bit engine moved to ``mpcache.mpc.pair``, BoolTensor to
``mpcache.booltensor``.

A thin re-export (mpcache/_shim.py) kept so that code written against
``mpcache.protocols.boolean`` keeps working; new code imports ``mpcache.mpc.pair``,
``mpcache.booltensor``.
"""
from __future__ import annotations

from mpcache import booltensor as _booltensor
from mpcache._shim import reexport
from mpcache.mpc import pair as _pair

reexport(__name__, _pair, _booltensor)
