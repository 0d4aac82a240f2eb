"""Deprecated import path: moved to ``mpcache.functions.select``; its rotation kernels
to ``mpcache.kernels``.

A thin re-export (mpcache/_shim.py) kept so that code written against
``mpcache.protocols.select`` keeps working; new code imports
``mpcache.functions.select``, ``mpcache.kernels``.
"""
from __future__ import annotations

from mpcache import kernels as _kernels
from mpcache._shim import reexport
from mpcache.functions import select as _functions_select

reexport(__name__, _functions_select, _kernels,
         renamed={'max': 'amax', 'min': 'amin', '_select': '_pick_top'})
