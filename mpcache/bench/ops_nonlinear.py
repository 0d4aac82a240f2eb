"""Deprecated import path: moved to ``mpcache.apps.bench.ops_nonlinear``.

A thin re-export (mpcache/_shim.py) kept so that code written against
``mpcache.bench.ops_nonlinear`` keeps working; new code imports ``mpcache.apps.bench.ops_nonlinear``.
"""
from __future__ import annotations

from mpcache._shim import reexport
from mpcache.apps.bench import ops_nonlinear as _new

reexport(__name__, _new)
