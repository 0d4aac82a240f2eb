"""Deprecated import path: moved to ``mpcache.mpc.add2``.

A thin re-export (mpcache/_shim.py) kept so that code written against
``mpcache.protocols.add2`` keeps working; new code imports ``mpcache.mpc.add2``.
"""
from __future__ import annotations

from mpcache._shim import reexport
from mpcache.mpc import add2 as _add2

reexport(__name__, _add2)
