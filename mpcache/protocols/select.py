"""Deprecated import path: moved to ``mpcache.functions.select`` (trees, one-hot, gather)
and ``mpcache.functions.topk`` (shuffle, top-k); its rotation kernels to ``mpcache.kernels``.

A thin re-export (mpcache/_shim.py) kept so that code written against
``mpcache.protocols.select`` keeps working; new code imports
``mpcache.functions.select``, ``mpcache.functions.topk``, ``mpcache.kernels``.
"""
from __future__ import annotations

from mpcache import kernels as _kernels
from mpcache._shim import reexport
from mpcache.functions import select as _functions_select
from mpcache.functions import topk as _functions_topk

reexport(__name__, _functions_select, _functions_topk, _kernels,
         renamed={'max': 'amax', 'min': 'amin', '_select': '_pick_top'})
