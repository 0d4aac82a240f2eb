"""Deprecated import path: moved to ``mpcache.functions.activations``.

A thin re-export (mpcache/_shim.py) kept so that code written against
``mpcache.protocols.activations`` keeps working; new code imports
``mpcache.functions.activations``.
"""
from __future__ import annotations

from mpcache._shim import reexport
from mpcache.functions import activations as _activations

reexport(__name__, _activations)
