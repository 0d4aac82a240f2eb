"""Deprecated import path: moved to ``mpcache.apps.bench.agree_policy``.

A thin re-export (mpcache/_shim.py) kept so that code written against
``mpcache.bench.agree_policy`` keeps working; new code imports ``mpcache.apps.bench.agree_policy``.
"""
from __future__ import annotations

from mpcache._shim import reexport
from mpcache.apps.bench import agree_policy as _new

reexport(__name__, _new)
