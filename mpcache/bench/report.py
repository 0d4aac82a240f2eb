"""Deprecated import path: moved to ``mpcache.apps.bench.report``.

A thin re-export (mpcache/_shim.py) kept so that code written against
``mpcache.bench.report`` keeps working; new code imports ``mpcache.apps.bench.report``.
"""
from __future__ import annotations

from mpcache._shim import reexport
from mpcache.apps.bench import report as _new

reexport(__name__, _new)
