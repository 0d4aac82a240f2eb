"""Deprecated import path: moved to ``mpcache.apps.explain``.

A thin re-export (mpcache/_shim.py) kept so that code written against
``mpcache.explain`` keeps working; new code imports ``mpcache.apps.explain``.
"""
from __future__ import annotations

from mpcache._shim import reexport
from mpcache.apps import explain as _new

reexport(__name__, _new)
