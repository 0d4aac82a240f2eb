"""Deprecated import path: moved to ``mpcache.mpc.costs``.

A thin re-export (mpcache/_shim.py) kept so that code written against
``mpcache.protocols.costs`` keeps working; new code imports ``mpcache.mpc.costs``.
"""
from __future__ import annotations

from mpcache._shim import reexport
from mpcache.mpc import costs as _costs

reexport(__name__, _costs)
