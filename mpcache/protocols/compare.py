"""Deprecated import path: moved to ``mpcache.functions.compare``.

A thin re-export (mpcache/_shim.py) kept so that code written against
``mpcache.protocols.compare`` keeps working; new code imports
``mpcache.functions.compare``.
"""
from __future__ import annotations

from mpcache._shim import reexport
from mpcache.functions import compare as _compare

reexport(__name__, _compare,
         renamed={'select': 'where', 'abs': 'absolute'})
