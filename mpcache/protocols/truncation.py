"""Deprecated import path: moved to ``mpcache.mpc.truncation``.

A thin re-export (mpcache/_shim.py) kept so that code written against
``mpcache.protocols.truncation`` keeps working; new code imports
``mpcache.mpc.truncation``.
"""
from __future__ import annotations

from mpcache._shim import reexport
from mpcache.mpc import truncation as _truncation

reexport(__name__, _truncation)
