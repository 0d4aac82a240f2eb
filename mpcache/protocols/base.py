"""Deprecated import path: moved to ``mpcache.mpc.base``.

A thin re-export (mpcache/_shim.py) kept so that code written against
``mpcache.protocols.base`` keeps working; new code imports ``mpcache.mpc.base``.
"""
from __future__ import annotations

from mpcache._shim import reexport
from mpcache.mpc import base as _base

reexport(__name__, _base)
