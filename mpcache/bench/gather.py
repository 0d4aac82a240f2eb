"""Deprecated import path: moved to ``mpcache.apps.bench.gather``.

A thin re-export (mpcache/_shim.py) kept so that code written against
``mpcache.bench.gather`` keeps working; new code imports ``mpcache.apps.bench.gather``.
"""
from __future__ import annotations

from mpcache._shim import reexport
from mpcache.apps.bench import gather as _new

reexport(__name__, _new)
