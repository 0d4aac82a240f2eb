"""Deprecated import path: moved to ``mpcache.functions.reciprocal``.

A thin re-export (mpcache/_shim.py) kept so that code written against
``mpcache.protocols.reciprocal`` keeps working; new code imports
``mpcache.functions.reciprocal``.
"""
from __future__ import annotations

from mpcache._shim import reexport
from mpcache.functions import reciprocal as _reciprocal

reexport(__name__, _reciprocal)
