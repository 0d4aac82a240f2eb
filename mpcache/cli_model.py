"""Deprecated import path: moved to ``mpcache.cli.model``.

A thin re-export (mpcache/_shim.py) kept so that code written against
``mpcache.cli_model`` keeps working; new code imports ``mpcache.cli.model``.
"""
from __future__ import annotations

from mpcache._shim import reexport
from mpcache.cli import model as _new

reexport(__name__, _new)
