"""Deprecated import path: the polynomial engine moved to ``mpcache.functions.poly``,
exp and softmax to ``mpcache.functions.approx``.

A thin re-export (mpcache/_shim.py) kept so that code written against
``mpcache.protocols.approx`` keeps working; new code imports ``mpcache.functions.poly``,
``mpcache.functions.approx``.
"""
from __future__ import annotations

from mpcache._shim import reexport
from mpcache.functions import approx as _approx
from mpcache.functions import poly as _poly

reexport(__name__, _poly, _approx)
