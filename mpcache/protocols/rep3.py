"""Deprecated import path: moved to ``mpcache.mpc.rep3``.

A thin re-export (mpcache/_shim.py) kept so that code written against
``mpcache.protocols.rep3`` keeps working; new code imports ``mpcache.mpc.rep3``.
"""
from __future__ import annotations

from mpcache._shim import reexport
from mpcache.mpc import rep3 as _rep3

reexport(__name__, _rep3)
