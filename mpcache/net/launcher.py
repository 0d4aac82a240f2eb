"""Deprecated import path: moved to ``mpcache.apps.launcher``.

A thin re-export (mpcache/_shim.py) kept so that code written against
``mpcache.net.launcher`` keeps working; new code imports ``mpcache.apps.launcher``.
"""
from __future__ import annotations

from mpcache._shim import reexport
from mpcache.apps import launcher as _new

reexport(__name__, _new)
