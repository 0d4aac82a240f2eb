"""Deprecated import path: moved to ``mpcache.apps.bench``.

A thin re-export (mpcache/_shim.py), with one shim per submodule, kept so that code
written against ``mpcache.bench`` keeps working; new code imports ``mpcache.apps.bench``.
"""
from __future__ import annotations

from mpcache._shim import reexport
from mpcache.apps import bench as _new

reexport(__name__, _new)
