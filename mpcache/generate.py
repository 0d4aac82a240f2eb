"""Deprecated import path: moved to ``mpcache.apps.generate``.

A thin re-export (mpcache/_shim.py) kept so that code written against
``mpcache.generate`` keeps working; new code imports ``mpcache.apps.generate``.
"""
from __future__ import annotations

from mpcache._shim import reexport
from mpcache.apps import generate as _new

reexport(__name__, _new)
