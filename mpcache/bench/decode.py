"""Deprecated import path: moved to ``mpcache.apps.bench.decode``.

A thin re-export (mpcache/_shim.py) kept so that code written against
``mpcache.bench.decode`` keeps working; new code imports ``mpcache.apps.bench.decode``.
"""
from __future__ import annotations

from mpcache._shim import reexport
from mpcache.apps.bench import decode as _new

reexport(__name__, _new)
