"""Deprecated import path: moved to ``mpcache.apps.jobs``.

A thin re-export (mpcache/_shim.py) kept so that code written against
``mpcache.jobs`` keeps working; new code imports ``mpcache.apps.jobs``.
"""
from __future__ import annotations

from mpcache._shim import reexport
from mpcache.apps import jobs as _new

reexport(__name__, _new)
