"""Deprecated import path: moved to ``mpcache.mpc.persistent``.

A thin re-export (mpcache/_shim.py) kept so that code written against
``mpcache.persistent`` keeps working; new code imports ``mpcache.mpc.persistent``.
"""
from __future__ import annotations

from mpcache._shim import reexport
from mpcache.mpc import persistent as _persistent

reexport(__name__, _persistent)
