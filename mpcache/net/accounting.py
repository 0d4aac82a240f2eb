"""Deprecated import path: moved to ``mpcache.accounting``.

A thin re-export (mpcache/_shim.py) kept so that code written against
``mpcache.net.accounting`` keeps working; new code imports ``mpcache.accounting``.
"""
from __future__ import annotations

from mpcache import accounting as _accounting
from mpcache._shim import reexport

reexport(__name__, _accounting)
