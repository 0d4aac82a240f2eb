"""Deprecated import path: the comparison core moved to ``mpcache.mpc.compare_core``, its
cost formulas to ``mpcache.mpc.costs``, a2b / b2a to ``mpcache.functions.convert``.

A thin re-export (mpcache/_shim.py) kept so that code written against
``mpcache.protocols.conversions`` keeps working; new code imports
``mpcache.mpc.compare_core``, ``mpcache.functions.convert``, ``mpcache.mpc.costs``.
"""
from __future__ import annotations

from mpcache._shim import reexport
from mpcache.functions import convert as _convert
from mpcache.mpc import compare_core as _compare_core
from mpcache.mpc import costs as _costs

reexport(__name__, _compare_core, _convert, _costs)
